"""Spatially varying blur: in-plane rotation, zoom (forward motion), depth-varying defocus, moving objects.

Each function blurs a linear-light image `[3, H, W]` and returns `(blurred, motion [3, h8, w8], kernels
[h64, w64, K, K])` with the local PSF of every patch computed from the same model that made the blur:
- rotation / zoom: the analytic trajectory of the patch centre over the exposure;
- depth defocus: the disk of the patch's mean radius;
- moving objects: the object's trajectory where the object (smeared over the exposure) covers most of the patch,
  the background PSF elsewhere.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .kernels import convolve, defocus_kernel, rasterize_points
from .motion import KERNEL_PATCH, KERNEL_SIZE, MOTION_PATCH, kernel_to_motion, points_to_motion

__all__ = ["patch_centers", "affine_path_blur", "rotation_blur", "zoom_blur", "depth_defocus", "moving_objects",
           "smooth_noise", "random_blob_mask"]


def patch_centers(h: int, w: int, patch: int) -> torch.Tensor:
    """Centres `[ceil(h/patch), ceil(w/patch), 2]` (x, y) of the image-clipped patches, in pixel coordinates."""
    ys = torch.arange(0, h, patch, dtype=torch.float32)
    xs = torch.arange(0, w, patch, dtype=torch.float32)
    cy = (ys + torch.clamp(ys + patch, max=h) - 1) / 2
    cx = (xs + torch.clamp(xs + patch, max=w) - 1) / 2
    gy, gx = torch.meshgrid(cy, cx, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def _affine_offsets(points: torch.Tensor, center, angles: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """PSF offsets u_t = x - A_t(x) for A_t(p) = c + s_t R(a_t)(p - c); points `[..., 2]` -> `[..., T, 2]`."""
    c = torch.tensor(center, dtype=torch.float32)
    p = (points - c).unsqueeze(-2)
    ca, sa = torch.cos(angles), torch.sin(angles)
    ax = scales * (ca * p[..., 0] - sa * p[..., 1])
    ay = scales * (sa * p[..., 0] + ca * p[..., 1])
    mapped = torch.stack([ax, ay], dim=-1) + c
    return points.unsqueeze(-2) - mapped


def affine_path_grid(h: int, w: int, center, angles: torch.Tensor, scales: torch.Tensor, device=None) -> torch.Tensor:
    """grid_sample grids `[T, h, w, 2]` of the sub-frames warped by A_t (rotation `angles`, scale `scales`)."""
    # A_t is affine in pixel coordinates, hence also in grid_sample's normalised ones: n = D x + b
    d = torch.tensor([2.0 / w, 2.0 / h])
    b = torch.tensor([1.0 / w - 1, 1.0 / h - 1])
    c = torch.tensor(center, dtype=torch.float32)
    ca, sa = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([torch.stack([ca, -sa], -1), torch.stack([sa, ca], -1)], -2) * scales.view(-1, 1, 1)  # [T,2,2]
    lin = d.view(1, 2, 1) * rot / d.view(1, 1, 2)  # D sR D^-1
    shift = d * c - (lin @ b) - d * (rot @ c) + b
    lin, shift = lin.to(device), shift.to(device)
    # broadcast instead of F.affine_grid (a batched matmul over all pixels, ~10x slower on CPU)
    xn = ((2 * torch.arange(w, dtype=torch.float32, device=device) + 1) / w - 1).view(1, 1, w)
    yn = ((2 * torch.arange(h, dtype=torch.float32, device=device) + 1) / h - 1).view(1, h, 1)
    co = lambda v: v.view(-1, 1, 1)  # noqa: E731
    return torch.stack([co(lin[:, 0, 0]) * xn + co(lin[:, 0, 1]) * yn + co(shift[:, 0]),
                        co(lin[:, 1, 0]) * xn + co(lin[:, 1, 1]) * yn + co(shift[:, 1])], dim=-1)


def affine_path_steps(h: int, w: int, center, total_angle: float, log_zoom: float, max_step: float = 1.5):
    """-> (sub-frame count, largest displacement px): the count follows the largest displacement (≤ `max_step` px
    apart, 6..24)."""
    corners = torch.tensor([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=torch.float32)
    ends = torch.tensor([-0.5, 0.5])
    off = _affine_offsets(corners, center, total_angle * ends, torch.exp(log_zoom * ends))
    max_disp = float((off[:, 1] - off[:, 0]).norm(dim=-1).max())
    return sub_frame_count(max_disp, max_step), max_disp


def sub_frame_count(max_disp: float, max_step: float = 1.5) -> int:
    return int(min(24, max(6, math.ceil(max_disp / max_step) + 1)))


def affine_path_truth(h: int, w: int, center, total_angle: float, log_zoom: float):
    """Ground truth of an affine path, from the continuous path (64 samples), not the sub-frames:
    (motion [3, h8, w8], kernels [h64, w64, K, K])."""
    t_fine = torch.linspace(-0.5, 0.5, 64)
    a_fine, s_fine = total_angle * t_fine, torch.exp(log_zoom * t_fine)
    m_off = _affine_offsets(patch_centers(h, w, MOTION_PATCH), center, a_fine, s_fine)
    motion = points_to_motion(m_off).permute(2, 0, 1).contiguous()
    k_centers = patch_centers(h, w, KERNEL_PATCH)
    k_off = _affine_offsets(k_centers, center, a_fine, s_fine)
    kh, kw = k_centers.shape[:2]
    kernels = rasterize_points(k_off.reshape(kh * kw, 64, 2)).view(kh, kw, KERNEL_SIZE, KERNEL_SIZE)
    return motion, kernels


def affine_path_blur(linear: torch.Tensor | None, center, total_angle: float, log_zoom: float, max_step: float = 1.5,
                     h: int | None = None, w: int | None = None):
    """Average of sub-frames warped by A_t (t uniform in [-1/2, 1/2]: rotation a_t = total_angle t, scale
    exp(log_zoom t)) -- what a camera rotating about its axis / moving forward records during one exposure.

    Bilinear grid_sample; `linear=None` (give `h`, `w`) draws nothing and returns `blurred=None` (the sub-frames are
    then averaged later on the training device: `glow.data.batched`). -> (blurred, motion, kernels, max_disp)."""
    if linear is not None:
        _, h, w = linear.shape
    n_sub, max_disp = affine_path_steps(h, w, center, total_angle, log_zoom, max_step)
    blurred = None
    if linear is not None:
        t = torch.linspace(-0.5, 0.5, n_sub)
        grid = affine_path_grid(h, w, center, total_angle * t, torch.exp(log_zoom * t))
        frames = F.grid_sample(linear.unsqueeze(0).expand(n_sub, -1, -1, -1), grid, mode="bilinear",
                               padding_mode="reflection", align_corners=False)
        blurred = frames.mean(0)
    motion, kernels = affine_path_truth(h, w, center, total_angle, log_zoom)
    return blurred, motion, kernels, max_disp


def rotation_blur(linear: torch.Tensor | None, rng: np.random.Generator, max_disp: float | None = None,
                  size: tuple[int, int] | None = None):
    """In-plane camera rotation about a random centre (inside or near the frame); the farthest pixel moves
    `max_disp` px (3..45 by default). `linear=None` with `size=(h, w)`: drawn, not rendered (see affine_path_blur)."""
    h, w = linear.shape[-2:] if linear is not None else size
    center = (rng.uniform(-0.2, 1.2) * (w - 1), rng.uniform(-0.2, 1.2) * (h - 1))
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)
    r_max = float(np.linalg.norm(corners - np.array(center), axis=1).max())
    if max_disp is None:
        max_disp = float(np.exp(rng.uniform(math.log(3), math.log(45))))
    angle = max_disp / max(r_max, 1.0) * rng.choice([-1.0, 1.0])
    blurred, motion, kernels, disp = affine_path_blur(linear, center, angle, 0.0, h=h, w=w)
    return blurred, motion, kernels, {"center": center, "angle_deg": math.degrees(angle), "max_disp": disp,
                                      "total_angle": angle, "log_zoom": 0.0}


def zoom_blur(linear: torch.Tensor | None, rng: np.random.Generator, max_disp: float | None = None,
              size: tuple[int, int] | None = None):
    """Forward/backward camera motion: radial streaks out of a focus of expansion near the centre. `linear=None`
    with `size=(h, w)`: drawn, not rendered (see affine_path_blur)."""
    h, w = linear.shape[-2:] if linear is not None else size
    center = (rng.uniform(0.2, 0.8) * (w - 1), rng.uniform(0.2, 0.8) * (h - 1))
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)
    r_max = float(np.linalg.norm(corners - np.array(center), axis=1).max())
    if max_disp is None:
        max_disp = float(np.exp(rng.uniform(math.log(3), math.log(40))))
    log_zoom = max_disp / max(r_max, 1.0) * rng.choice([-1.0, 1.0])
    blurred, motion, kernels, disp = affine_path_blur(linear, center, 0.0, log_zoom, h=h, w=w)
    return blurred, motion, kernels, {"center": center, "zoom": math.exp(log_zoom), "max_disp": disp,
                                      "total_angle": 0.0, "log_zoom": log_zoom}


def smooth_noise(h: int, w: int, rng: np.random.Generator, cells: int = 4) -> torch.Tensor:
    """Smooth random field `[h, w]` in [0, 1]: bicubic upsampling of a coarse Gaussian grid."""
    gh = max(2, int(round(cells * h / max(h, w))) + 1)
    gw = max(2, int(round(cells * w / max(h, w))) + 1)
    coarse = torch.from_numpy(rng.standard_normal((1, 1, gh, gw)).astype(np.float32))
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0, 0]
    lo, hi = field.min(), field.max()
    return (field - lo) / (hi - lo).clamp_min(1e-6)


def depth_defocus(linear: torch.Tensor, rng: np.random.Generator, max_radius: float | None = None,
                  levels: int = 5):
    """Defocus whose radius follows a smooth random depth map: r(x) = R |depth(x) - focus|.

    The image is blurred with `levels` disks (0..R) and each pixel interpolates between the two nearest radii,
    the usual layered approximation of a depth-dependent PSF."""
    _, h, w = linear.shape
    depth = smooth_noise(h, w, rng, cells=int(rng.integers(2, 6)))
    if rng.random() < 0.5:  # a ground plane: depth grows towards the top of the frame
        ramp = torch.linspace(1, 0, h).view(h, 1).expand(h, w)
        depth = 0.5 * depth + 0.5 * ramp
    focus = rng.uniform(0, 1)
    if max_radius is None:
        max_radius = rng.uniform(2.0, 10.0)
    gap = (depth - focus).abs()
    radius = max_radius * gap / gap.max().clamp_min(1e-6)
    r_levels = torch.linspace(0, max_radius, levels)
    level_kernels = torch.stack([defocus_kernel(float(r)) if r > 0.3 else _delta() for r in r_levels])
    blurred_levels = torch.stack([linear] + [convolve(linear, k) for k in level_kernels[1:]])  # [L, 3, h, w]
    pos = (radius / (max_radius / (levels - 1))).clamp(0, levels - 1 - 1e-6)
    lo = pos.floor().long()
    frac = (pos - lo).unsqueeze(0)
    take = lambda idx: blurred_levels.gather(0, idx.view(1, 1, h, w).expand(1, 3, h, w))[0]  # noqa: E731
    blurred = take(lo) * (1 - frac) + take(lo + 1) * frac
    level_motion = kernel_to_motion(level_kernels)  # [L, 3]
    pix_motion = level_motion[lo] * (1 - frac[0]).unsqueeze(-1) + level_motion[lo + 1] * frac[0].unsqueeze(-1)
    motion = _pool(pix_motion.permute(2, 0, 1), MOTION_PATCH)
    patch_r = _pool(radius.unsqueeze(0), KERNEL_PATCH)[0]
    # radii on a 0.05 px grid: the cached disks are reused across patches and samples
    kernels = torch.stack([defocus_kernel(round(float(r) * 20) / 20) if r > 0.3 else _delta()
                           for r in patch_r.reshape(-1)])
    kernels = kernels.view(*patch_r.shape, KERNEL_SIZE, KERNEL_SIZE)
    return blurred, motion, kernels, {"max_radius": float(max_radius), "focus": float(focus)}


def _delta() -> torch.Tensor:
    k = torch.zeros(KERNEL_SIZE, KERNEL_SIZE)
    k[KERNEL_SIZE // 2, KERNEL_SIZE // 2] = 1
    return k


def _pool(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Mean over (possibly partial, image-clipped) patches: `[C, H, W]` -> `[C, ceil(H/p), ceil(W/p)]`."""
    return F.avg_pool2d(x.unsqueeze(0), patch, stride=patch, ceil_mode=True)[0]


def random_blob_mask(h: int, w: int, rng: np.random.Generator) -> torch.Tensor:
    """A random smooth object mask `[h, w]` in [0, 1]: a rotated ellipse with a noisy boundary and a soft edge."""
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    ay, ax = rng.uniform(0.12, 0.35) * h, rng.uniform(0.12, 0.35) * w
    rot = rng.uniform(0, math.pi)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    u = (xs - cx) * math.cos(rot) + (ys - cy) * math.sin(rot)
    v = -(xs - cx) * math.sin(rot) + (ys - cy) * math.cos(rot)
    dist = torch.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    dist = dist + 0.5 * (smooth_noise(h, w, rng, cells=6) - 0.5)
    edge = 1.5 / max(min(ax, ay), 1.0)  # ~1.5 px soft edge
    return ((1 - dist) / edge + 0.5).clamp(0, 1)


def _fill_behind(linear: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rough background behind an object (what the moving object uncovers): normalised convolution of the
    unmasked pixels at 1/8 resolution, used under the mask."""
    h, w = linear.shape[-2:]
    keep = (1 - mask).unsqueeze(0)
    small = F.avg_pool2d((linear * keep).unsqueeze(0), 8, ceil_mode=True)
    wsmall = F.avg_pool2d(keep.unsqueeze(0), 8, ceil_mode=True)
    for _ in range(4):  # grow the known region into the hole
        num = F.avg_pool2d(small, 3, stride=1, padding=1, count_include_pad=False)
        den = F.avg_pool2d(wsmall, 3, stride=1, padding=1, count_include_pad=False)
        small = torch.where(wsmall > 0.5, small, num)
        wsmall = torch.where(wsmall > 0.5, wsmall, den)
    filled = F.interpolate(small / wsmall.clamp_min(1e-3), size=(h, w), mode="bilinear", align_corners=False)[0]
    return linear * keep + filled * (1 - keep)


def moving_objects(linear: torch.Tensor, rng: np.random.Generator, background_kernel: torch.Tensor,
                   object_kernels: list[torch.Tensor]):
    """Objects moving during the exposure over a (static or differently blurred) background.

    For an object layer with mask M and PSF k (pure translation during the exposure) the exposure integrates to
    `k * (M O) + (1 - k * M) B`: the object smears over the background, which shows through where the object was
    only part of the time. Layers are composited back to front, background first."""
    _, h, w = linear.shape
    masks = [random_blob_mask(h, w, rng) for _ in object_kernels]
    union = torch.stack(masks).amax(0)
    background = _fill_behind(linear, union) if len(masks) else linear
    out = convolve(background, background_kernel)
    coverages = []
    for mask, k in zip(masks, object_kernels):
        smeared_mask = convolve(mask.unsqueeze(0), k)
        out = convolve(linear * mask, k) + (1 - smeared_mask) * out
        coverages.append(smeared_mask)
    # ground truth: the front-most layer that covers more than half of a patch owns it
    bg_motion = kernel_to_motion(background_kernel)
    h8, w8 = math.ceil(h / MOTION_PATCH), math.ceil(w / MOTION_PATCH)
    h64, w64 = math.ceil(h / KERNEL_PATCH), math.ceil(w / KERNEL_PATCH)
    motion = bg_motion.view(3, 1, 1).expand(3, h8, w8).clone()
    kernels = background_kernel.expand(h64, w64, KERNEL_SIZE, KERNEL_SIZE).clone()
    for cov, k in zip(coverages, object_kernels):
        own8 = _pool(cov, MOTION_PATCH)[0] > 0.5
        own64 = _pool(cov, KERNEL_PATCH)[0] > 0.5
        motion[:, own8] = kernel_to_motion(k).view(3, 1)
        kernels[own64] = k
    object_share = float(torch.stack(coverages).amax(0).mean()) if coverages else 0.0
    return out, motion, kernels, {"n_objects": len(masks), "object_share": object_share}
