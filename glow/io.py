"""Robust image reading shared by the app, the datasets and the evaluation scripts.

`load_image(src)` accepts a path, bytes, a binary file object or a PIL image and returns a PIL image in mode "RGB",
"RGBA" or "L" with the EXIF orientation applied. `load_image_array(src)` returns float32 `[H, W, C]` in [0, 1] and
keeps the precision of 16-bit files (grayscale PNG/TIFF through Pillow, colour TIFF through tifffile).

Decisions (documented here because callers rely on them):
- alpha is kept (RGBA / LA -> RGBA); palette images become RGB, or RGBA when they carry transparency;
- CMYK (and YCbCr, LAB, HSV) become RGB; 1-bit images become L;
- animated images (GIF, APNG, WebP): the first frame is used;
- 16-bit colour PNG: Pillow has no 48-bit mode, so `load_image` (8-bit PIL) rounds them; `load_image_array`
  keeps all 16 bits (see `_decode_png_16bit_color`), as it does for 16-bit grayscale PNG and 16-bit TIFF;
- files over `max_pixels` (default `MAX_IMAGE_PIXELS` = 100 MP, env `GLOW_MAX_IMAGE_PIXELS`) are refused before
  decoding (decompression-bomb guard);
- not-an-image, empty, truncated files raise `ImageReadError` (a `ValueError`) naming the file.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageReadError",
    "MAX_IMAGE_PIXELS",
    "IMAGE_EXTENSIONS",
    "load_image",
    "load_image_array",
    "to_tensor",
    "to_pil",
    "from_tensor",
    "image_to_tensor",
    "center_crop",
]

#: Largest image (width * height) accepted; bigger files are refused before decoding.
MAX_IMAGE_PIXELS = int(os.environ.get("GLOW_MAX_IMAGE_PIXELS", 100_000_000))

#: Extensions the dataset scanners consider images.
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm"}

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image]


class ImageReadError(ValueError):
    """The input could not be read as an image (the message names the file and the reason)."""


def _describe(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return f"'{os.fspath(src)}'"
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    name = getattr(src, "name", None)
    if isinstance(name, str):
        return f"'{name}'"
    return f"<{type(src).__name__}>"


def _open(src, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and check the size before any pixel is decoded."""
    what = _describe(src)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise ImageReadError(f"Cannot read image {what}: no such file")
        if path.stat().st_size == 0:
            raise ImageReadError(f"Cannot read image {what}: the file is empty")
        fp = str(path)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageReadError("Cannot read image <0 bytes>: the data is empty")
        fp = io.BytesIO(bytes(src))
    elif hasattr(src, "read"):
        fp = src
    else:
        raise ImageReadError(f"Cannot read image {what}: expected a path, bytes, a file object or a PIL image")
    try:
        with warnings.catch_warnings():
            # We apply our own size limit below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp)
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"Cannot read image {what}: too large ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f"Cannot read image {what}: not a recognised image file") from e
    except OSError as e:
        raise ImageReadError(f"Cannot read image {what}: {e}") from e
    w, h = image.size
    if w * h > max_pixels:
        raise ImageReadError(
            f"Cannot read image {what}: {w}x{h} = {w * h / 1e6:.1f} MP exceeds the limit of {max_pixels / 1e6:.0f} MP"
        )
    if w == 0 or h == 0:
        raise ImageReadError(f"Cannot read image {what}: zero-sized image ({w}x{h})")
    return image


def _decode(image: Image.Image, what: str) -> Image.Image:
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated: the first frame
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated / corrupt data
        raise ImageReadError(f"Cannot read image {what}: the file is truncated or corrupt ({e})") from e
    try:
        exif_rotated = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not make a good image unreadable
        exif_rotated = None
    return exif_rotated if exif_rotated is not None else image


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def _to_standard_mode(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("RGB", "RGBA", "L"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        return image.convert("RGBA" if _has_transparency(image) else "RGB")
    if mode in ("LA", "La"):
        return image.convert("RGBA")
    if mode == "RGBa":
        return image.convert("RGBA")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = _gray_high_precision(image)
        return Image.fromarray(np.round(arr * 255.0).astype(np.uint8))
    # CMYK, YCbCr, LAB, HSV, RGBX, ...
    return image.convert("RGB")


def _gray_high_precision(image: Image.Image) -> np.ndarray:
    """float32 [H, W] in [0, 1] from a 16/32-bit integer or float grayscale image."""
    arr = np.asarray(image)
    if image.mode == "F":
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    arr = arr.astype(np.float64)
    # "I" images from 16-bit PNGs hold 0..65535; genuinely 32-bit data is scaled by its own range.
    peak = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
    return np.clip(arr / peak, 0.0, 1.0).astype(np.float32)


def load_image(src: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """Read an image into a PIL image of mode "RGB", "RGBA" or "L" (EXIF orientation applied).

    Raises `ImageReadError` (a `ValueError`) with a message naming the input when it cannot be read.
    """
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    what = _describe(src)
    if isinstance(src, Image.Image):
        w, h = src.size
        if w * h > max_pixels:
            raise ImageReadError(f"Cannot use image {what}: {w}x{h} exceeds the limit of {max_pixels / 1e6:.0f} MP")
        if w == 0 or h == 0:
            raise ImageReadError(f"Cannot use image {what}: zero-sized image")
        image = _decode(src, what)
    else:
        image = _decode(_open(src, max_pixels), what)
    return _to_standard_mode(image)


def load_image_array(src: ImageSource, max_pixels: int | None = None) -> tuple[np.ndarray, bool]:
    """Read an image as float32 `[H, W, C]` in [0, 1] (C = 1, 3 or 4) and whether it has alpha.

    16-bit grayscale and 16-bit TIFF files keep their precision (no rounding to 8 bits).
    """
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    what = _describe(src)
    if isinstance(src, (str, os.PathLike)) and Path(src).suffix.lower() in (".tif", ".tiff"):
        arr = _read_tiff_16bit(src, max_pixels)
        if arr is not None:
            return arr, arr.shape[2] == 4
    if isinstance(src, Image.Image):
        image = _decode(src, what)
    else:
        if hasattr(src, "read") and not isinstance(src, (bytes, bytearray, memoryview)):
            src = src.read()  # a stream can be read only once; both readers below need it
        lazy = _open(src, max_pixels)  # header only: size limit checked before any decoding
        data = _png_bytes_if_16bit_color(src)
        if data is not None:
            arr = _decode_png_16bit_color(data)
            if arr is not None:
                try:
                    orientation = int(lazy.getexif().get(0x0112, 1))
                except Exception:  # a broken EXIF block must not make a good image unreadable
                    orientation = 1
                arr = _apply_orientation(arr, orientation)
                return arr.astype(np.float32) / 65535.0, arr.shape[2] == 4
        image = _decode(lazy, what)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _gray_high_precision(image)[:, :, None], False
    image = _to_standard_mode(image)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr, image.mode == "RGBA"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header(path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG file's IHDR, or None when the file is not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return None
    return (head[24], head[25]) if len(head) == 26 and head[:8] == _PNG_SIGNATURE else None


def _png_bytes_if_16bit_color(src) -> bytes | None:
    """The file's bytes when it is a 16-bit RGB/RGBA PNG (IHDR bit depth 16, colour type 2 or 6), else None."""
    try:
        if isinstance(src, (str, os.PathLike)):
            if png_header(src) not in ((16, 2), (16, 6)):
                return None
            with open(src, "rb") as f:
                return f.read()
        data = bytes(src)
    except (OSError, IndexError, TypeError):
        return None
    if len(data) > 33 and data[:8] == _PNG_SIGNATURE and data[24] == 16 and data[25] in (2, 6):
        return data
    return None


def _decode_png_16bit_color(data: bytes) -> np.ndarray | None:
    """Decode a non-interlaced 16-bit RGB(A) PNG to uint16 `[H, W, C]` with full precision.

    Pillow can only return these at 8 bits. PNG filters work byte-wise with the left neighbour `bpp` bytes back,
    so each of the `bpp` byte lanes (R hi, R lo, G hi, ...) is an independent 8-bit grayscale image with the same
    per-row filter types: we hand each lane to Pillow's C decoder as its own tiny PNG and re-interleave the bytes,
    which keeps the unfiltering at C speed. Returns None for anything unexpected (caller falls back to Pillow)."""
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, tag = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        return None
    width, height, depth, color_type, _, _, interlace = header
    if depth != 16 or color_type not in (2, 6) or interlace != 0:
        return None
    channels = 3 if color_type == 2 else 4
    bpp = 2 * channels
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error:
        return None
    if len(raw) < height * (width * bpp + 1):
        return None
    rows = np.frombuffer(raw, dtype=np.uint8, count=height * (width * bpp + 1)).reshape(height, width * bpp + 1)
    filters, body = rows[:, :1], rows[:, 1:].reshape(height, width, bpp)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    lanes = []
    for j in range(bpp):
        lane = np.ascontiguousarray(np.concatenate([filters, body[:, :, j]], axis=1))
        png = _PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(lane.tobytes(), 1)) \
            + _chunk(b"IEND", b"")
        try:
            lanes.append(np.asarray(Image.open(io.BytesIO(png)).convert("L")))
        except Exception:
            return None
    stacked = np.stack(lanes, axis=-1)
    return (stacked[..., 0::2].astype(np.uint16) << 8) | stacked[..., 1::2]


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """numpy version of ImageOps.exif_transpose (same mapping as Pillow's)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def _read_tiff_16bit(path, max_pixels: int) -> np.ndarray | None:
    """Pillow cannot hold 16-bit colour; tifffile can. None -> fall back to Pillow."""
    try:
        import tifffile
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(os.fspath(path)) as tif:
            page = tif.pages[0]
            if page.dtype is None or np.dtype(page.dtype).itemsize < 2 or np.dtype(page.dtype).kind == "f":
                return None
            shape = page.shape
            if int(np.prod(shape[:2])) > max_pixels:
                raise ImageReadError(f"Cannot read image '{os.fspath(path)}': exceeds the limit of "
                                     f"{max_pixels / 1e6:.0f} MP")
            arr = page.asarray()
    except ImageReadError:
        raise
    except Exception:
        return None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        return None
    peak = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else 1.0
    return np.clip(arr.astype(np.float32) / peak, 0.0, 1.0)


def to_tensor(image, channels: int | None = None):
    """PIL image or `[H, W(, C)]` array -> float32 torch tensor `[C, H, W]` in [0, 1].

    uint8 arrays are divided by 255, uint16 by 65535, float arrays are taken as-is. `channels=3` repeats grayscale
    and drops alpha (the colour channels of an RGBA photo are the picture; callers that need alpha read it first).
    """
    import torch

    if isinstance(image, Image.Image):
        image = _to_standard_mode(image)
        arr = np.asarray(image, dtype=np.float32) / 255.0
    else:
        arr = np.asarray(image)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif arr.dtype == np.uint16:
            arr = arr.astype(np.float32) / 65535.0
        else:
            arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    if channels is not None:
        tensor = match_channels(tensor, channels)
    return tensor


def match_channels(tensor, channels: int = 3):
    """`[C, H, W]` (or `[B, C, H, W]`) -> `channels` channels: gray repeated, alpha dropped."""
    c_dim = tensor.dim() - 3
    c = tensor.shape[c_dim]
    if c == channels:
        return tensor
    if channels == 3:
        if c in (1, 2):  # L or LA
            return tensor.narrow(c_dim, 0, 1).repeat_interleave(3, dim=c_dim)
        if c == 4:
            return tensor.narrow(c_dim, 0, 3)
    if channels == 1 and c in (3, 4):
        w = tensor.new_tensor([0.299, 0.587, 0.114]).view(*([1] * c_dim), 3, 1, 1)
        return (tensor.narrow(c_dim, 0, 3) * w).sum(c_dim, keepdim=True)
    raise ValueError(f"Cannot convert {c} channels to {channels}")


def image_to_tensor(src: ImageSource, max_pixels: int | None = None):
    """Read any image source straight into an RGB float tensor `[3, H, W]` (16-bit precision kept)."""
    arr, _ = load_image_array(src, max_pixels=max_pixels)
    return to_tensor(arr, channels=3)


def center_crop(tensor, size: int, pad: bool = False):
    """The centre `size` x `size` of a `[..., H, W]` tensor. A side shorter than `size` is replicate-padded up to it
    when `pad` (fixed-shape batches, e.g. training validation), else kept as it is (evaluation: no invented pixels).
    `size <= 0` returns the tensor unchanged."""
    import torch.nn.functional as F

    if size <= 0:
        return tensor
    h, w = tensor.shape[-2:]
    if pad and (h < size or w < size):
        flat = tensor.reshape(-1, *tensor.shape[-3:]) if tensor.dim() >= 3 else tensor[None, None]
        flat = F.pad(flat, (0, max(0, size - w), 0, max(0, size - h)), mode="replicate")
        tensor = flat.reshape(*tensor.shape[:-2], *flat.shape[-2:])
        h, w = tensor.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return tensor[..., top : top + ch, left : left + cw]


def to_pil(tensor) -> Image.Image:
    """float tensor/array `[C, H, W]` (C = 1, 3, 4) in [0, 1] -> PIL image (L, RGB or RGBA); `[1, C, H, W]` ok."""
    import torch

    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach().to("cpu", torch.float32)
        if tensor.dim() == 4:
            if tensor.shape[0] != 1:
                raise ValueError(f"to_pil expects one image, got a batch of {tensor.shape[0]}")
            tensor = tensor[0]
        arr = tensor.numpy()
    else:
        arr = np.asarray(tensor, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in (1, 3, 4):
        raise ValueError(f"to_pil expects [C, H, W] with C in (1, 3, 4), got {tuple(arr.shape)}")
    arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    arr8 = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(arr8[:, :, 0] if arr8.shape[2] == 1 else arr8)


#: DESIGN.md name for `to_pil`.
from_tensor = to_pil
