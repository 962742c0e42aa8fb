# Self-contained like pipeline_glowdeblur.py, which imports it relatively: copied beside it into saved pipeline
# folders. Imports only torch, numpy, PIL and the standard library.
"""Images in and out of GLOWDeblurPipeline, and the tiles the networks run on.

Hand-written rather than diffusers' VaeImageProcessor: it must keep grayscale, alpha, 16-bit and arbitrary sizes,
where VaeImageProcessor normalises everything to RGB in [-1, 1] and resizes.
"""
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F

PAD_MULTIPLE = 64  # the kernel grid; also a multiple of the /8 token grid
LATENT_DOWNSCALE = 8  # the latents are a lossless pixel_unshuffle of the residual by this factor


@dataclass
class _ImageInfo:
    kind: str  # "pil" | "np" | "pt"
    channels: int  # 1 or 3 colour channels in the input
    alpha: torch.Tensor | None  # [1, H, W] in [0, 1], passed through untouched
    sixteen_bit: bool
    height: int
    width: int


def _pil_to_array(img):
    img = PIL.ImageOps.exif_transpose(img)
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGB")
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float32) / 65535.0
        return np.clip(arr, 0, 1)[..., None], True
    if mode == "F":
        return np.clip(np.asarray(img, dtype=np.float32), 0, 1)[..., None], False
    if mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGB")
    arr = np.asarray(img).astype(np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr, False


def _array_to_float(arr, what):
    if arr.size == 0:
        raise ValueError(f"{what} is empty (shape {tuple(arr.shape)})")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0, False
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0, True
    if arr.dtype in (np.float16, np.float32, np.float64):
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"float {what} must have values in [0, 1], got [{lo:.4g}, {hi:.4g}]")
        return np.clip(arr, 0, 1), False
    raise TypeError(f"{what} has unsupported dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")


def _split_channels(chw, what):
    """``[C,H,W]`` with C in 1, 2, 3, 4 -> (rgb [3,H,W], channels, alpha or None)."""
    c = chw.shape[0]
    if c not in (1, 2, 3, 4):
        raise ValueError(f"{what} has {c} channels; expected 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA)")
    if min(chw.shape[1:]) < 1:
        raise ValueError(f"{what} is empty (shape {tuple(chw.shape)})")
    colour = chw[:1] if c in (1, 2) else chw[:3]
    alpha = chw[-1:] if c in (2, 4) else None
    rgb = colour.expand(3, -1, -1) if colour.shape[0] == 1 else colour
    return rgb.contiguous(), colour.shape[0], alpha


def prepare_images(image):
    """Any supported input -> list of (rgb ``[3,H,W]`` float32 in [0,1], ``_ImageInfo``). Raises TypeError/ValueError."""
    if isinstance(image, (list, tuple)):
        if len(image) == 0:
            raise ValueError("image list is empty")
        out = []
        for i, im in enumerate(image):
            out.extend(_prepare_one(im, f"image[{i}]"))
        return out
    return _prepare_one(image, "image")


def _from_hwc_float(arr, sixteen, kind, what):
    """float HxWxC array -> (rgb [3,H,W], _ImageInfo) for PIL and numpy inputs alike."""
    chw = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    rgb, channels, alpha = _split_channels(chw, what)
    return rgb, _ImageInfo(kind, channels, alpha, sixteen, chw.shape[1], chw.shape[2])


def _prepare_one(image, what):
    if isinstance(image, PIL.Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"{what} is empty ({image.width}x{image.height})")
        return [_from_hwc_float(*_pil_to_array(image), "pil", what)]
    if isinstance(image, np.ndarray):
        if image.ndim == 4:
            return [r for i, im in enumerate(image) for r in _prepare_one(im, f"{what}[{i}]")]
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise ValueError(f"{what} must be a HxW or HxWxC array (or BxHxWxC), got shape {tuple(image.shape)}")
        return [_from_hwc_float(*_array_to_float(image, what), "np", what)]
    if isinstance(image, torch.Tensor):
        if image.ndim == 4:
            return [r for i, im in enumerate(image) for r in _prepare_one(im, f"{what}[{i}]")]
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3:
            raise ValueError(f"{what} must be a CxHxW or BxCxHxW tensor, got shape {tuple(image.shape)}")
        if image.numel() == 0:
            raise ValueError(f"{what} is empty (shape {tuple(image.shape)})")
        if image.dtype == torch.uint8:
            t = image.float() / 255.0
        elif image.is_floating_point():
            t = image.detach().float().cpu()
            if not torch.isfinite(t).all():
                raise ValueError(f"{what} contains NaN or infinite values")
            lo, hi = float(t.min()), float(t.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ValueError(f"float {what} must have values in [0, 1], got [{lo:.4g}, {hi:.4g}]")
            t = t.clamp(0, 1)
        else:
            raise TypeError(f"{what} has unsupported dtype {image.dtype}; use a float tensor in [0, 1] or uint8")
        rgb, channels, alpha = _split_channels(t.cpu(), what)
        return [(rgb, _ImageInfo("pt", channels, alpha, False, t.shape[1], t.shape[2]))]
    raise TypeError(
        f"{what} must be a PIL.Image, a numpy array, a torch tensor or a list of them; got {type(image).__name__}"
        + (" (open files first, e.g. with PIL.Image.open or glow.io.load_image)" if isinstance(image, (str, Path)) else "")
    )


def finish_image(rgb, info, output_type):
    """rgb ``[3,H,W]`` in [0,1] -> the input's channel layout in ``output_type``."""
    colour = rgb.mean(dim=0, keepdim=True) if info.channels == 1 else rgb
    chw = torch.cat([colour, info.alpha], dim=0) if info.alpha is not None else colour
    chw = chw.clamp(0, 1)
    if output_type == "pt":
        return chw
    hwc = chw.permute(1, 2, 0).numpy()
    if output_type == "np":
        return hwc
    if info.sixteen_bit and hwc.shape[2] == 1:
        return PIL.Image.fromarray(np.round(hwc[..., 0] * 65535).astype(np.uint16))  # mode I;16
    u8 = np.round(hwc * 255).astype(np.uint8)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[u8.shape[2]]
    return PIL.Image.fromarray(u8[..., 0] if mode == "L" else u8, mode=mode)


def pad_reflect(x, pad_bottom, pad_right):
    """Reflect-pad bottom/right, repeatedly when the image is smaller than the pad (tiny images)."""
    while pad_bottom > 0 or pad_right > 0:
        h, w = x.shape[-2:]
        pb, pr = min(pad_bottom, h - 1), min(pad_right, w - 1)
        if (pb == 0 and pad_bottom > 0) or (pr == 0 and pad_right > 0):  # 1-px side: nothing to reflect
            x = F.pad(x, (0, pad_right if pr == 0 else 0, 0, pad_bottom if pb == 0 else 0), mode="replicate")
            pad_bottom, pad_right = (0 if pb == 0 else pad_bottom), (0 if pr == 0 else pad_right)
            continue
        x = F.pad(x, (0, pr, 0, pb), mode="reflect")
        pad_bottom, pad_right = pad_bottom - pb, pad_right - pr
    return x


def _tile_layout(length, tile, overlap):
    """Evenly spread tiles over ``length`` (all multiples of 64): the fewest tiles of at most ``tile`` px that overlap
    by at least ``overlap`` px, shrunk to share the length evenly (less wasted work than a fixed tile size).
    Returns (tile_length, starts)."""
    if length <= tile:
        return length, [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    t = min(tile, PAD_MULTIPLE * math.ceil((length + (n - 1) * overlap) / n / PAD_MULTIPLE))
    while True:
        step = (length - t) / (n - 1)
        starts = [PAD_MULTIPLE * int(i * step / PAD_MULTIPLE) for i in range(n - 1)] + [length - t]
        if all(a + t - b >= overlap for a, b in zip(starts, starts[1:])) or t >= tile:
            return t, starts
        t += PAD_MULTIPLE


def _ramps(starts, tile, device):
    """1-D blending weights per tile: raised-cosine ramps over each overlap with a neighbour, 1 elsewhere."""
    weights = []
    for i, s in enumerate(starts):
        w = torch.ones(tile, device=device)
        if i > 0:
            ov = starts[i - 1] + tile - s
            w[:ov] = torch.sin(0.5 * math.pi * (torch.arange(ov, device=device) + 0.5) / ov) ** 2
        if i + 1 < len(starts):
            ov = s + tile - starts[i + 1]
            w[tile - ov :] = torch.cos(0.5 * math.pi * (torch.arange(ov, device=device) + 0.5) / ov) ** 2
        weights.append(w)
    return weights


@dataclass
class _Tile:
    """One tile of the padded image: its box in pixels and its separable blending weight. The weights of all tiles
    sum to 1 at every pixel, so a blend is a plain weighted sum."""

    top: int
    left: int
    bottom: int
    right: int
    weight_y: torch.Tensor  # [bottom - top]
    weight_x: torch.Tensor  # [right - left]

    @property
    def box(self):
        return self.top, self.left, self.bottom, self.right

    def crop(self, x, scale=1):
        """The tile of ``x`` (pixels, or a grid ``scale`` times coarser such as the /8 latents): a view."""
        return x[..., self.top // scale : self.bottom // scale, self.left // scale : self.right // scale]

    def weight(self, scale=1):
        w = (self.weight_y[:, None] * self.weight_x[None, :])[None, None]
        return w if scale == 1 else F.avg_pool2d(w, scale)

    @functools.cached_property
    def latent_weight(self):
        """The pixel weight as the /8 latents carry it: ``[1, 192, h/8, w/8]`` (pixel_unshuffle of 3 RGB copies),
        so a latent blend is exactly the pixel blend. Computed once: every denoising step uses it."""
        return F.pixel_unshuffle(self.weight().expand(1, 3, -1, -1), LATENT_DOWNSCALE)


def tile_grid(height, width, tile_size, tile_overlap, device="cpu"):
    """Overlapping tiles covering a padded ``height`` x ``width`` image (multiples of 64); one tile when
    ``tile_size`` is None."""
    if tile_size is None:
        tile_size, tile_overlap = max(height, width), 0
    (th, ys), (tw, xs) = _tile_layout(height, tile_size, tile_overlap), _tile_layout(width, tile_size, tile_overlap)
    wy, wx = _ramps(ys, th, device), _ramps(xs, tw, device)
    sum_y, sum_x = torch.zeros(height, device=device), torch.zeros(width, device=device)
    for y0, w in zip(ys, wy):
        sum_y[y0 : y0 + th] += w
    for x0, w in zip(xs, wx):
        sum_x[x0 : x0 + tw] += w
    return [_Tile(y0, x0, y0 + th, x0 + tw, wy[i] / sum_y[y0 : y0 + th], wx[j] / sum_x[x0 : x0 + tw])
            for i, y0 in enumerate(ys) for j, x0 in enumerate(xs)]


def padded_length(length):
    """``length`` rounded up to the 64-px grid."""
    return -(-length // PAD_MULTIPLE) * PAD_MULTIPLE


# ---------------------------------------------------------------- how degraded a photo is (the networks' gate)
_GRAY = (0.2125, 0.7154, 0.0721)  # scikit-image's rgb2gray, so blur_measure reads as its blur_effect


def _luminance(rgb):
    return sum(w * c for w, c in zip(_GRAY, rgb.float()))


def _second_difference(x, dim):
    n = x.shape[dim] - 2
    return x.narrow(dim, 0, n) - 2 * x.narrow(dim, 1, n) + x.narrow(dim, 2, n)


def noise_floor(rgb, patch=8, quantile=0.02):
    """Sensor noise of ``[3,H,W]`` in [0, 1]: the standard deviation of a second-difference high-pass of the
    luminance (Immerkaer's 3x3 mask, scaled to read a white noise's sigma) in its flattest ``patch`` px patches (the
    ``quantile`` of the patches' deviations). Texture raises some patches, noise all of them, so the floor reads the
    noise: sharp camera JPEGs 0.000-0.003, the simulator's sensor noise 0.002-0.05 (docs/deconvolution.md)."""
    lum = _luminance(rgb)
    if min(lum.shape) < patch + 2:
        return 0.0
    high = _second_difference(_second_difference(lum, 0), 1) / 6.0  # the separable mask [1, -2, 1] x [1, -2, 1]
    h, w = (s // patch * patch for s in high.shape)
    patches = high[:h, :w].reshape(h // patch, patch, w // patch, patch).transpose(1, 2).reshape(-1, patch * patch)
    return float(torch.quantile(patches.std(dim=1), quantile))


def blur_measure(rgb, width=11):
    """Crete et al.'s no-reference blur of ``[3,H,W]`` in [0, 1] (scikit-image's ``blur_effect``, here in torch so
    saved folders need no scikit-image): per axis, 1 - (the luminance's edge contrast that a ``width`` px box blur
    along that axis takes away) / (its edge contrast); a sharp photo loses much of it to the blur, a blurred one
    little. The larger of the two axes: 0 = sharp .. 1 = very blurred."""
    lum = _luminance(rgb)
    if min(lum.shape) < 4:
        return 0.0
    scores = []
    for dim in (0, 1):
        # the box blur along ``dim`` (edges replicated)
        before, after = width // 2, width - 1 - width // 2
        pad = [0, 0, before, after] if dim == 0 else [before, after, 0, 0]
        window = (width, 1) if dim == 0 else (1, width)
        blurred = F.avg_pool2d(F.pad(lum[None, None], pad, mode="replicate"), window, stride=1)[0, 0]
        edges = []
        for x in (lum, blurred):  # Sobel: a central difference along ``dim``, [1, 2, 1] across
            d = x.narrow(dim, 2, x.shape[dim] - 2) - x.narrow(dim, 0, x.shape[dim] - 2)
            o = 1 - dim
            d = d.narrow(o, 0, d.shape[o] - 2) + 2 * d.narrow(o, 1, d.shape[o] - 2) + d.narrow(o, 2, d.shape[o] - 2)
            edges.append(d.abs()[1:, 1:])  # scikit-image's [2:-1] crop (the stencils already dropped a line per side)
        total = float(edges[0].sum())
        if total <= 0:
            scores.append(1.0)  # a flat photo has no edge to keep sharp
            continue
        kept = float((edges[0] - edges[1]).clamp_min(0).sum())
        scores.append(abs(total - kept) / total)
    return max(scores)
