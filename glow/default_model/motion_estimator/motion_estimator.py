# Self-contained: imported by diffusers with trust_remote_code from a saved pipeline folder, where `glow` is not
# importable. Only torch, numpy, diffusers and the standard library.
"""MotionEstimator: patch-wise motion field + per-64-px-patch blur kernels from a blurry image.

Outputs (see DESIGN.md):
- ``motion`` ``[B, 3, H/8, W/8]``: ``d*cos(2θ)``, ``d*sin(2θ)`` (|.| <= 1) and the blur length in pixels.
- ``kernel_weights`` ``[B, num_basis, H/64, W/64]``: softmax weights over a learnable, saved basis of
  ``kernel_size x kernel_size`` PSFs (initialised with a delta, lines at several angles/lengths and disks), so a
  predicted kernel can be more than a straight line (mixtures approximate curved shake and defocus).
- ``kernels`` ``[B, H/64, W/64, kernel_size, kernel_size]``: the mixed kernels, non-negative, each summing to 1,
  consumed by ``PreReconstructionUNet`` (Wiener step).

The network runs at ``1 / input_downscale`` resolution for speed.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

MOTION_PATCH = 8  # Copied from glow.data.motion.MOTION_PATCH
KERNEL_PATCH = 64  # Copied from glow.data.motion.KERNEL_PATCH (this module travels alone in saved folders)


@dataclass
class MotionEstimatorOutput(BaseOutput):
    motion: torch.Tensor
    kernel_weights: torch.Tensor
    kernels: torch.Tensor


def _line_kernel(size, length, angle, supersample=8, offset=0.5):
    """Anti-aliased uniform line PSF (length in px, angle from +x towards +y), sums to 1. ``offset`` = 0.5 centres
    it; 0 makes a ray starting at the centre (asymmetric shapes: mixtures of rays form curved trajectories)."""
    c = size // 2
    k = np.zeros((size, size), np.float64)
    n = max(int(length * supersample), 1)
    ts = (np.arange(n) + 0.5) / n - offset
    for t in ts:
        x, y = c + t * length * math.cos(angle), c + t * length * math.sin(angle)
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            if 0 <= y0 + dy < size and 0 <= x0 + dx < size:
                k[y0 + dy, x0 + dx] += w
    return k / k.sum()


def _disk_kernel(size, radius):
    c = size // 2
    yy, xx = np.mgrid[:size, :size] - c
    # 4x4 supersampled coverage for a smooth edge
    k = np.zeros((size, size))
    for oy in np.linspace(-0.375, 0.375, 4):
        for ox in np.linspace(-0.375, 0.375, 4):
            k += ((yy + oy) ** 2 + (xx + ox) ** 2 <= radius**2)
    return k / k.sum()


def initial_kernel_basis(num_basis, kernel_size):
    """Delta, disks (defocus), centred lines (linear motion) and rays from the centre (mixtures of rays make curved,
    asymmetric shake trajectories), truncated to ``num_basis`` kernels. Learned further in training."""
    kernels = [np.eye(1, kernel_size * kernel_size, (kernel_size * kernel_size) // 2).reshape(kernel_size, kernel_size)]
    max_len = kernel_size - 2
    num_disks = max(1, num_basis // 12)
    for r in np.geomspace(1.5, max(2.0, max_len / 4), num_disks):
        kernels.append(_disk_kernel(kernel_size, r))
    rest = max(num_basis - len(kernels), 0)
    num_lines = rest - rest // 2
    num_angles = 8 if num_lines >= 16 else 4
    num_lengths = max(1, math.ceil(num_lines / num_angles))
    for length in np.geomspace(5, max_len, num_lengths):
        for a in range(num_angles):
            kernels.append(_line_kernel(kernel_size, length, math.pi * a / num_angles))
    num_rays = num_basis - len(kernels)
    if num_rays > 0:
        ray_angles = 8 if num_rays >= 8 else max(num_rays, 1)
        ray_lengths = np.geomspace(4, max_len / 2, max(1, math.ceil(num_rays / ray_angles)))
        for length in ray_lengths:
            for a in range(ray_angles):
                kernels.append(_line_kernel(kernel_size, length, 2 * math.pi * a / ray_angles, offset=0.0))
    kernels = kernels[:num_basis]
    return torch.tensor(np.stack(kernels), dtype=torch.get_default_dtype())  # honours from_pretrained(dtype=...)


class ConvBlock(nn.Module):
    """Residual depthwise-separable block (cheap at low resolution)."""

    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.pw1 = nn.Conv2d(c, 2 * c, 1)
        self.pw2 = nn.Conv2d(2 * c, c, 1)

    def forward(self, x):
        return x + self.pw2(F.gelu(self.pw1(self.dw(x))))


class MotionEstimator(ModelMixin, ConfigMixin):
    """Predicts the motion field (per 8-px patch) and kernel mixture weights (per 64-px patch).

    ``forward(blurry [B,3,H,W]) -> MotionEstimatorOutput``; H and W must be multiples of 64 (the pipeline pads).
    Its training losses are in ``glow.training.losses`` (models carry no losses, as in diffusers).
    """

    @register_to_config
    def __init__(
        self,
        width: int = 24,
        num_blocks_fine: int = 2,
        num_blocks_coarse: int = 2,
        input_downscale: int = 4,
        num_basis: int = 36,
        kernel_size: int = 41,
        max_blur_length: float = 80.0,
    ):
        super().__init__()
        if input_downscale not in (1, 2, 4, 8):
            raise ValueError("input_downscale must be 1, 2, 4 or 8")
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd")
        c = width
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        # from 1/input_downscale to the /8 motion grid
        n_down = int(math.log2(MOTION_PATCH // input_downscale))
        self.to_fine = nn.Sequential(*[nn.Conv2d(c, c, 2, stride=2) for _ in range(n_down)]) if n_down else nn.Identity()
        self.fine = nn.Sequential(*[ConvBlock(c) for _ in range(num_blocks_fine)])
        # /8 -> /64 for the kernel grid (and context for the motion field)
        self.to_coarse = nn.Sequential(
            nn.Conv2d(c, 2 * c, 2, stride=2), nn.GELU(), nn.Conv2d(2 * c, 2 * c, 2, stride=2), nn.GELU(),
            nn.Conv2d(2 * c, 2 * c, 2, stride=2),
        )
        self.coarse = nn.Sequential(*[ConvBlock(2 * c) for _ in range(num_blocks_coarse)])
        self.coarse_to_fine = nn.Conv2d(2 * c, c, 1)
        self.motion_head = nn.Sequential(ConvBlock(c), nn.Conv2d(c, 3, 1))
        self.kernel_head = nn.Conv2d(2 * c, num_basis, 1)
        # learnable kernel basis, stored as logits (softmax over pixels keeps each basis kernel a valid PSF)
        basis = initial_kernel_basis(num_basis, kernel_size)
        self.basis_logits = nn.Parameter(torch.log(basis + 1e-4))

    @property
    def kernel_basis(self):
        """``[num_basis, K, K]`` non-negative kernels, each summing to 1."""
        nb, k, _ = self.basis_logits.shape
        return torch.softmax(self.basis_logits.view(nb, -1), dim=-1).view(nb, k, k)

    def kernels_from_weights(self, kernel_weights):
        """``[B, nb, h, w]`` mixture weights -> ``[B, h, w, K, K]`` kernels."""
        return torch.einsum("bnhw,nij->bhwij", kernel_weights, self.kernel_basis)

    def forward(self, blurry, return_dict=True):
        b, _, h, w = blurry.shape
        if h % KERNEL_PATCH or w % KERNEL_PATCH:
            raise ValueError(f"MotionEstimator needs H, W multiples of {KERNEL_PATCH}, got {h}x{w}")
        ds = self.config.input_downscale
        x = F.avg_pool2d(blurry, ds) if ds > 1 else blurry
        x = x * 2 - 1
        fine = self.fine(self.to_fine(F.gelu(self.stem(x))))
        coarse = self.coarse(self.to_coarse(fine))
        fine = fine + F.interpolate(self.coarse_to_fine(coarse), size=fine.shape[-2:], mode="nearest")
        m = self.motion_head(fine)
        direction = torch.tanh(m[:, :2])  # each in [-1, 1]; the trainer supervises d*cos2θ, d*sin2θ
        length = F.softplus(m[:, 2:3]) * (self.config.max_blur_length / 20.0)
        motion = torch.cat([direction, length], dim=1)
        kernel_weights = torch.softmax(self.kernel_head(coarse), dim=1)
        kernels = self.kernels_from_weights(kernel_weights)
        if not return_dict:
            return motion, kernel_weights, kernels
        return MotionEstimatorOutput(motion=motion, kernel_weights=kernel_weights, kernels=kernels)

