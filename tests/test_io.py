"""glow.io: every awkward kind of input file, made inside the test."""
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from glow.io import ImageReadError, image_to_tensor, load_image, load_image_array, to_pil, to_tensor


def _rgb(h=12, w=17, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_bytes(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_rgb_from_path_bytes_file_and_pil(tmp_path):
    arr = _rgb()
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    for src in (path, str(path), path.read_bytes(), open(path, "rb"), Image.open(path)):
        image = load_image(src)
        assert image.mode == "RGB" and image.size == (17, 12)
        assert np.array_equal(np.asarray(image), arr)


def test_grayscale_stays_l_and_to_tensor_repeats(tmp_path):
    gray = _rgb()[:, :, 0]
    image = load_image(_png_bytes(Image.fromarray(gray)))
    assert image.mode == "L"
    t = to_tensor(image, channels=3)
    assert t.shape == (3, 12, 17) and torch.equal(t[0], t[2])
    assert torch.allclose(t[0], torch.from_numpy(gray).float() / 255)


def test_rgba_and_la_keep_alpha():
    rgba = np.concatenate([_rgb(), np.full((12, 17, 1), 77, np.uint8)], axis=2)
    image = load_image(_png_bytes(Image.fromarray(rgba)))
    assert image.mode == "RGBA" and np.asarray(image)[0, 0, 3] == 77
    la = Image.new("LA", (5, 4), (100, 30))
    image = load_image(_png_bytes(la))
    assert image.mode == "RGBA" and tuple(np.asarray(image)[0, 0]) == (100, 100, 100, 30)
    arr, has_alpha = load_image_array(_png_bytes(Image.fromarray(rgba)))
    assert has_alpha and arr.shape == (12, 17, 4) and abs(arr[0, 0, 3] - 77 / 255) < 1e-6
    assert to_tensor(arr, channels=3).shape == (3, 12, 17)


def test_palette_with_and_without_transparency():
    p = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    assert load_image(_png_bytes(p)).mode == "RGB"
    p.info["transparency"] = 0
    assert load_image(_png_bytes(p, transparency=0)).mode == "RGBA"


def test_cmyk_jpeg_becomes_rgb():
    buf = io.BytesIO()
    Image.new("CMYK", (9, 7), (0, 255, 255, 0)).save(buf, format="JPEG", quality=95)
    image = load_image(buf.getvalue())
    assert image.mode == "RGB" and image.size == (9, 7)
    r, g, b = np.asarray(image)[3, 4].astype(int)
    assert r > 200 and g < 60 and b < 60  # pure red in CMYK


def test_16bit_grayscale_png_keeps_precision():
    values = (np.arange(6 * 5).reshape(6, 5) * 2000 + 7).astype(np.uint16)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 6, 16, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    arr, has_alpha = load_image_array(png)
    assert not has_alpha and arr.shape == (6, 5, 1) and arr.dtype == np.float32
    assert np.allclose(arr[:, :, 0], values / 65535.0, atol=1e-6)  # finer than any 8-bit rounding (2e-3)
    assert load_image(png).mode == "L"


def test_16bit_rgb_tiff_keeps_precision(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    values = np.random.default_rng(1).integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, values, photometric="rgb")
    arr, has_alpha = load_image_array(path)
    assert arr.shape == (6, 7, 3) and not has_alpha
    assert np.allclose(arr, values / 65535.0, atol=1e-6)
    assert image_to_tensor(path).shape == (3, 6, 7)


def test_exif_orientation_is_applied():
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :5] = 255  # white band on the left
    image = Image.fromarray(arr)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif, quality=95)
    out = load_image(buf.getvalue())
    assert out.size == (10, 20)  # width and height swapped
    top = np.asarray(out)[:5].mean()
    assert top > 200  # the left band became the top after a 90-degree clockwise rotation


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = np.asarray(load_image(buf.getvalue()).convert("RGB"))
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_bad_inputs_raise_readable_errors(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(ImageReadError, match="notes.png"):
        load_image(text)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageReadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    good = _png_bytes(Image.fromarray(_rgb(64, 64)))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        load_image(truncated)
    with pytest.raises(ValueError):  # ImageReadError is a ValueError
        load_image(b"\x00\x01garbage")


def test_decompression_bomb_limit():
    png = _png_bytes(Image.new("L", (200, 100)))
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        load_image(png, max_pixels=10_000)
    assert load_image(png, max_pixels=20_000).size == (200, 100)


def test_to_pil_round_trip():
    t = torch.rand(3, 5, 6)
    back = to_tensor(to_pil(t))
    assert back.shape == (3, 5, 6) and (back - t).abs().max() <= 0.5 / 255 + 1e-6
    assert to_pil(torch.rand(1, 4, 5, 6)).mode == "RGBA"
    assert to_pil(torch.rand(1, 5, 6)).mode == "L"


def _png16_all_filters(values: np.ndarray) -> bytes:
    """A 16-bit RGB(A) PNG whose rows use all five PNG filter types in turn (reference encoder, tiny images)."""
    h, w, c = values.shape
    bpp = 2 * c

    def paeth(a, b, c_):
        p = a + b - c_
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c_)
        return a if pa <= pb and pa <= pc else b if pb <= pc else c_

    out, prev = b"", bytes(w * bpp)
    for y in range(h):
        row, kind, filtered = values[y].astype(">u2").tobytes(), y % 5, bytearray()
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            up_left = prev[i - bpp] if i >= bpp else 0
            pred = (0, a, prev[i], (a + prev[i]) // 2, paeth(a, prev[i], up_left))[kind]
            filtered.append((x - pred) % 256)
        out, prev = out + bytes([kind]) + bytes(filtered), row

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if c == 3 else 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(out))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_png_keeps_precision(tmp_path, channels):
    values = np.random.default_rng(channels).integers(0, 65536, (11, 13, channels), dtype=np.uint16)
    png = _png16_all_filters(values)
    path = tmp_path / "deep.png"
    path.write_bytes(png)
    for src in (png, path, open(path, "rb")):
        arr, has_alpha = load_image_array(src)
        assert arr.shape == (11, 13, channels) and has_alpha == (channels == 4)
        assert np.abs(arr - values / 65535.0).max() < 1e-6  # all 16 bits, not Pillow's 8
    image = load_image(png)  # the 8-bit PIL view still works
    assert image.mode == ("RGB" if channels == 3 else "RGBA")
    assert np.array_equal(np.asarray(image), (values >> 8).astype(np.uint8))
    with pytest.raises(ImageReadError):
        load_image_array(png[: len(png) // 2])
