"""Camera realism around the blur: tone curves, saturated highlights, sensor noise, white balance + Bayer, JPEG.

Blur happens in linear light (photons add up during the exposure); everything a camera does after the sensor
(noise, demosaicing, white balance, tone curve, JPEG) happens to the blurred signal only.
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "srgb_to_linear",
    "linear_to_srgb",
    "gamma_to_linear",
    "linear_to_gamma",
    "boost_highlights",
    "add_poisson_gaussian_noise",
    "mosaic_bayer",
    "demosaic_bilinear",
    "jpeg_compress",
]


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """The exact IEC 61966-2-1 sRGB decoding curve."""
    x = x.clamp(0, 1)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def gamma_to_linear(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """A plain power curve (cameras' tone curves vary; a random gamma in ~[1.8, 2.6] covers most of them)."""
    return x.clamp(0, 1) ** gamma


def linear_to_gamma(x: torch.Tensor, gamma: float) -> torch.Tensor:
    return x.clamp(0, 1).clamp_min(1e-12) ** (1.0 / gamma)


def boost_highlights(linear: torch.Tensor, threshold: float, gain: float) -> torch.Tensor:
    """Make bright regions brighter than the sensor can record (RSBlur's saturation model): pixels whose maximum
    channel exceeds `threshold` are scaled by up to `gain` (smooth ramp); clipping after the blur then turns point
    lights into saturated streaks instead of dim grey ones."""
    peak = linear.amax(dim=-3, keepdim=True)
    ramp = ((peak - threshold) / max(1e-6, 1 - threshold)).clamp(0, 1)
    return linear * (1 + (gain - 1) * ramp)


def add_poisson_gaussian_noise(linear: torch.Tensor, shot: float, read: float,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """Heteroscedastic sensor noise: variance = `shot` * signal + `read`^2 (Gaussian approximation of
    Poisson shot noise plus Gaussian read noise, as in Foi et al. 2008)."""
    std = torch.sqrt(shot * linear.clamp_min(0) + read * read)
    noise = torch.randn(linear.shape, generator=generator, dtype=linear.dtype)
    return linear + std * noise


def mosaic_bayer(rgb: torch.Tensor, pattern: str = "RGGB") -> torch.Tensor:
    """`[3, H, W]` -> `[1, H, W]` raw samples of a Bayer colour filter array."""
    h, w = rgb.shape[-2:]
    raw = torch.zeros(1, h, w, dtype=rgb.dtype)
    idx = {"R": 0, "G": 1, "B": 2}
    for (dy, dx), ch in zip(((0, 0), (0, 1), (1, 0), (1, 1)), pattern):
        raw[0, dy::2, dx::2] = rgb[idx[ch], dy::2, dx::2]
    return raw


def demosaic_bilinear(raw: torch.Tensor, pattern: str = "RGGB") -> torch.Tensor:
    """Bilinear demosaicing `[1, H, W]` -> `[3, H, W]` (the simple interpolation many cheap ISPs use; its zipper
    artefacts are part of what real photos look like)."""
    h, w = raw.shape[-2:]
    masks = torch.zeros(3, h, w, dtype=raw.dtype)
    idx = {"R": 0, "G": 1, "B": 2}
    for (dy, dx), ch in zip(((0, 0), (0, 1), (1, 0), (1, 1)), pattern):
        masks[idx[ch], dy::2, dx::2] = 1
    sparse = masks * raw
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 4
    weight = k.view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    pad = "reflect" if h > 1 and w > 1 else "replicate"  # reflect needs 2 px
    num = F.conv2d(F.pad(sparse.unsqueeze(0), (1, 1, 1, 1), mode=pad), weight, groups=3)[0]
    den = F.conv2d(F.pad(masks.unsqueeze(0), (1, 1, 1, 1), mode=pad), weight, groups=3)[0]
    out = num / den.clamp_min(1e-6)
    return torch.where(masks > 0, raw.expand(3, h, w), out)


def jpeg_compress(srgb: torch.Tensor, quality: int) -> torch.Tensor:
    """Round-trip `[3, H, W]` sRGB through Pillow's JPEG encoder at `quality` (4:2:0 chroma like most cameras)."""
    arr = (srgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()
