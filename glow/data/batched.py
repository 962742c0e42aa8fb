"""The simulator's rendering for whole batches on the training device.

With `defer=True` the data engine (`BlurSimulator`, `SharpFolderDataset(render_on_device=True)`) draws a global-kind
sample's kernel and camera settings in the DataLoader worker but applies none of them: the sample carries a
`recipe` (settings, one row) and a `recipe_kernel` (the PSF). `render_batch` then applies them to the sharp crops of a
whole batch at once, on whatever device the batch is on: FFT convolution in linear light, saturated highlights, white
balance + Bayer mosaic + demosaicing, Poisson-Gaussian noise, low-light exposure, the tone curve and JPEG. The
operations are those of `glow.data.camera` written for `[N, ...]` tensors with one setting per sample; without JPEG
and noise the result equals the CPU simulator's to float precision. Two differences, both measured in
`tests/test_data_batched.py`: the noise is drawn on the device (same distribution, other numbers), and JPEG is a
torch implementation of baseline JPEG (IJG quantisation tables, 4:2:0, 8x8 DCT) instead of Pillow's encoder.
Rotation and zoom are deferred too (their sub-frames are averaged on the device); depth defocus, moving objects,
frame averaging and real pairs are still rendered in the workers (their rows say so).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import camera
from .kernels import convolve
from .motion import KERNEL_SIZE
from .spatial import affine_path_grid, sub_frame_count

__all__ = ["RECIPE_FIELDS", "pack_recipe", "idle_recipe", "render_batch", "render_pending", "jpeg_batch"]

RECIPE_FIELDS = ("pending", "srgb", "gamma", "highlights", "highlight_threshold", "highlight_gain", "exposure",
                 "bayer", "noise", "shot", "read", "gain_r", "gain_g", "gain_b", "jpeg_quality", "noise_seed",
                 "affine", "center_x", "center_y", "total_angle", "log_zoom", "sub_frames")
_F = {name: i for i, name in enumerate(RECIPE_FIELDS)}


def pack_recipe(kernel: torch.Tensor | None, tone: dict, sensor: dict, jpeg_quality: int, noise_seed: int,
                affine: dict | None = None) -> dict:
    """One sample's settings as tensors that `collate` stacks: {"recipe": [22] float64, "recipe_kernel": [K, K]}.
    A rotation or zoom sample has `affine` (the info of `glow.data.spatial.rotation_blur` / `zoom_blur`) and no
    kernel: its sub-frames are averaged on the device."""
    threshold, gain = tone["highlights"] or (1.0, 1.0)
    row = [1.0, float(tone["srgb"]), tone["gamma"], float(tone["highlights"] is not None), threshold, gain,
           sensor["exposure"], float(sensor["bayer"]), float(sensor["noise"]), sensor["shot"], sensor["read"],
           *sensor["gains"], float(jpeg_quality), float(noise_seed % (1 << 52))]
    if affine is None:
        row += [0.0] * 6
    else:
        row += [1.0, *affine["center"], affine["total_angle"], affine["log_zoom"],
                float(sub_frame_count(affine["max_disp"]))]
    if kernel is None:
        kernel = torch.zeros(KERNEL_SIZE, KERNEL_SIZE)
    return {"recipe": torch.tensor(row, dtype=torch.float64), "recipe_kernel": kernel.float()}


def idle_recipe(kernel_size: int) -> dict:
    """The recipe of a sample rendered in the worker (nothing left to do)."""
    return {"recipe": torch.zeros(len(RECIPE_FIELDS), dtype=torch.float64),
            "recipe_kernel": torch.zeros(kernel_size, kernel_size)}


def _col(recipe: torch.Tensor, name: str, dtype) -> torch.Tensor:
    return recipe[:, _F[name]].to(dtype).view(-1, 1, 1, 1)


def _bayer_masks(h: int, w: int, device, dtype) -> torch.Tensor:
    """RGGB colour filter masks `[1, 3, H, W]` (as `camera.mosaic_bayer`)."""
    masks = torch.zeros(1, 3, h, w, device=device, dtype=dtype)
    for (dy, dx), ch in zip(((0, 0), (0, 1), (1, 0), (1, 1)), (0, 1, 1, 2)):
        masks[0, ch, dy::2, dx::2] = 1
    return masks


def _demosaic(raw: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Bilinear demosaicing of `[N, 1, H, W]` (as `camera.demosaic_bilinear`)."""
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], device=raw.device, dtype=raw.dtype) / 4
    weight = k.view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    n, _, h, w = raw.shape
    pad = "reflect" if h > 1 and w > 1 else "replicate"
    sparse = masks * raw
    num = F.conv2d(F.pad(sparse, (1, 1, 1, 1), mode=pad), weight, groups=3)
    den = F.conv2d(F.pad(masks, (1, 1, 1, 1), mode=pad), weight, groups=3)
    return torch.where(masks > 0, raw.expand(n, 3, h, w), num / den.clamp_min(1e-6))


def render_batch(sharp: torch.Tensor, kernels: torch.Tensor, recipe: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Blurry sRGB images `[N, 3, H, W]` from sharp ones, their PSFs `[N, K, K]` and recipes `[N, 16]` (same device)."""
    dtype = sharp.dtype
    srgb, gamma = _col(recipe, "srgb", dtype) > 0, _col(recipe, "gamma", dtype)
    linear = torch.where(srgb, camera.srgb_to_linear(sharp), sharp.clamp(0, 1) ** gamma)
    # saturated highlights (camera.boost_highlights); a sample without them has gain 1
    threshold, gain = _col(recipe, "highlight_threshold", dtype), _col(recipe, "highlight_gain", dtype)
    ramp = ((linear.amax(dim=1, keepdim=True) - threshold) / (1 - threshold).clamp_min(1e-6)).clamp(0, 1)
    linear = linear * (1 + (gain - 1) * ramp)
    signal = convolve(linear, kernels.to(dtype))
    signal = _render_affine(linear, recipe, signal).clamp(0, 1)
    exposure = _col(recipe, "exposure", dtype)
    gains = recipe[:, _F["gain_r"]:_F["gain_b"] + 1].to(dtype).view(-1, 3, 1, 1)
    bayer, noisy = _col(recipe, "bayer", dtype) > 0, _col(recipe, "noise", dtype) > 0
    shot, read = _col(recipe, "shot", dtype), _col(recipe, "read", dtype)
    n, _, h, w = sharp.shape
    draws = torch.randn((n, 4, h, w), generator=generator, device=sharp.device, dtype=dtype)
    # each row takes one camera path: render each path only for its rows (the draws stay per row, so a row's result
    # does not depend on which other rows share its batch)
    rows_raw = bayer.flatten().nonzero().flatten()
    rows_rgb = (~bayer.flatten()).nonzero().flatten()
    signal = signal.clone()
    if rows_raw.numel():
        r = rows_raw
        masks = _bayer_masks(h, w, sharp.device, dtype)
        raw = (masks * (signal[r] / gains[r])).sum(dim=1, keepdim=True) * exposure[r]
        raw_noise = torch.sqrt(shot[r] * raw.clamp_min(0) + read[r] * read[r]) * draws[r, :1]
        raw = torch.where(noisy[r], raw + raw_noise, raw)
        signal[r] = _demosaic(raw.clamp(0, 1), masks) / exposure[r] * gains[r]
    if rows_rgb.numel():
        r = rows_rgb
        exposed = signal[r] * exposure[r]
        rgb_noise = torch.sqrt(shot[r] * exposed.clamp_min(0) + read[r] * read[r]) * draws[r, 1:]
        signal[r] = torch.where(noisy[r], (exposed + rgb_noise).clamp(0, 1) / exposure[r], signal[r])
    signal = signal.clamp(0, 1)
    out = torch.where(srgb, camera.linear_to_srgb(signal), signal.clamp_min(1e-12) ** (1.0 / gamma))
    quality = recipe[:, _F["jpeg_quality"]]
    rows_jpeg = (quality > 0).nonzero().flatten()
    if rows_jpeg.numel():  # only the rows that are compressed
        out[rows_jpeg] = jpeg_batch(out[rows_jpeg], quality[rows_jpeg])
    return out.clamp(0, 1)


def _render_affine(linear: torch.Tensor, recipe: torch.Tensor, blurred: torch.Tensor) -> torch.Tensor:
    """`blurred` with the rotation / zoom rows replaced by their sub-frame averages (as
    `glow.data.spatial.affine_path_blur`), all sub-frames of the batch in one grid_sample."""
    rows = recipe.detach().cpu()  # a few numbers per sample, read once per batch
    index = (rows[:, _F["affine"]] > 0).nonzero().flatten().tolist()
    if not index:
        return blurred
    h, w = linear.shape[-2:]
    grids, counts = [], []
    for i in index:
        r = rows[i].float()
        n = int(r[_F["sub_frames"]])
        t = torch.linspace(-0.5, 0.5, n)
        grids.append(affine_path_grid(h, w, (float(r[_F["center_x"]]), float(r[_F["center_y"]])),
                                      r[_F["total_angle"]] * t, torch.exp(r[_F["log_zoom"]] * t), linear.device))
        counts.append(n)
    repeats = torch.tensor(counts, device=linear.device)
    frames = F.grid_sample(linear[index].repeat_interleave(repeats, dim=0), torch.cat(grids).to(linear.dtype),
                           mode="bilinear", padding_mode="reflection", align_corners=False)
    means = torch.stack([chunk.mean(0) for chunk in frames.split(counts)])
    out = blurred.clone()
    out[index] = means
    return out


def render_pending(batch: dict, generator: torch.Generator | None = None) -> dict:
    """Render, in place, the samples of a collated batch whose recipe is pending (no-op without recipes).

    The pending mask is read from the CPU copy of the recipes when there is one, so no GPU synchronisation."""
    recipe = batch.get("recipe")
    if recipe is None:
        return batch
    pending = batch.get("recipe_pending")
    if pending is None:
        pending = (recipe[:, 0] > 0).cpu()
    index = pending.nonzero().flatten().tolist()
    if index:
        idx = torch.tensor(index, device=batch["sharp"].device)
        batch["blurry"][idx] = render_batch(batch["sharp"][idx], batch["recipe_kernel"][idx], recipe[idx], generator)
    return batch


# ----------------------------------------------------------------------------------------------------------------------
# Baseline JPEG in torch (per-sample quality), so compression runs on the device with the rest of the batch
# ----------------------------------------------------------------------------------------------------------------------
_LUMA_TABLE = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
               14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
               49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA_TABLE = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
                 47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32


def _dct_matrix(device, dtype) -> torch.Tensor:
    k, i = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    d = torch.cos((2 * i + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(device, dtype)


def _tables(quality: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """IJG (libjpeg) quality scaling of the standard tables: `[N, 8, 8]` luma and chroma."""
    q = quality.to(torch.float64).clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q).view(-1, 1, 1)
    out = []
    for base in (_LUMA_TABLE, _CHROMA_TABLE):
        table = torch.tensor(base, dtype=torch.float64, device=quality.device).view(1, 8, 8)
        out.append(torch.floor((table * scale + 50) / 100).clamp(1, 255).to(dtype))
    return out[0], out[1]


def _code_blocks(plane: torch.Tensor, table: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Quantise `[N, H, W]` (multiples of 8, level-shifted) in 8x8 DCT blocks with per-sample `[N, 8, 8]` tables."""
    n, h, w = plane.shape
    blocks = plane.view(n, h // 8, 8, w // 8, 8).transpose(2, 3)  # [N, h8, w8, 8, 8]
    coef = d @ blocks @ d.T
    t = table.view(n, 1, 1, 8, 8)
    coef = torch.round(coef / t) * t
    return (d.T @ coef @ d).transpose(2, 3).reshape(n, h, w)


def jpeg_batch(rgb: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Baseline JPEG round trip of `[N, 3, H, W]` sRGB in [0, 1] at per-sample `quality` `[N]` (1-100): 8-bit
    input, JFIF YCbCr, 4:2:0 chroma (box down, bilinear up like libjpeg's fancy upsampling), IJG tables."""
    n, _, h, w = rgb.shape
    dtype = rgb.dtype
    x = torch.round(rgb.clamp(0, 1) * 255)
    ph, pw = (-h) % 16, (-w) % 16
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)
    d = _dct_matrix(rgb.device, dtype)
    luma_table, chroma_table = _tables(quality, dtype)
    y = _code_blocks(y - 128, luma_table, d) + 128
    cb, cr = (_code_blocks(c - 128, chroma_table, d) + 128 for c in chroma.unbind(1))
    chroma = F.interpolate(torch.stack([cb, cr], 1), scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0] - 128, chroma[:, 1] - 128
    out = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    return (torch.round(out.clamp(0, 255)) / 255)[..., :h, :w]
