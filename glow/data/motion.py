"""The motion-field encoding shared by the simulator (ground truth) and the MotionEstimator (prediction).

One vector per `MOTION_PATCH` px patch: `(d cos 2θ, d sin 2θ, L)` with θ the dominant blur direction (x right,
y down, θ from +x towards +y; doubled because a streak has no sign), `d = (λ1 - λ2) / (λ1 + λ2)` the
directionality and `L = sqrt(12 λ1)` the blur length, λ1 ≥ λ2 the eigenvalues of the PSF's second-moment
(covariance) matrix.
Because `d cos 2θ = (cxx - cyy) / (cxx + cyy)` and `d sin 2θ = 2 cxy / (cxx + cyy)`, no angle is ever computed.
"""
from __future__ import annotations

import math

import torch

MOTION_PATCH = 8
KERNEL_PATCH = 64
KERNEL_SIZE = 75

__all__ = [
    "MOTION_PATCH",
    "KERNEL_PATCH",
    "KERNEL_SIZE",
    "covariance_to_motion",
    "kernel_to_motion",
    "points_to_motion",
    "motion_to_polar",
    "motion_to_color",
]


def covariance_to_motion(cxx: torch.Tensor, cyy: torch.Tensor, cxy: torch.Tensor) -> torch.Tensor:
    """Second moments (any matching shapes) -> `[..., 3]` motion encoding."""
    trace = cxx + cyy
    diff = cxx - cyy
    root = torch.sqrt(diff * diff + 4 * cxy * cxy)
    lam1 = 0.5 * (trace + root)
    safe = torch.where(trace > 1e-8, trace, torch.ones_like(trace))
    c2 = torch.where(trace > 1e-8, diff / safe, torch.zeros_like(trace))
    s2 = torch.where(trace > 1e-8, 2 * cxy / safe, torch.zeros_like(trace))
    length = torch.sqrt(12.0 * lam1.clamp_min(0))
    return torch.stack([c2, s2, length], dim=-1)


def kernel_to_motion(kernel: torch.Tensor) -> torch.Tensor:
    """PSF(s) `[..., K, K]` (any non-negative weights; normalised here) -> `[..., 3]` motion encoding."""
    kernel = kernel.to(torch.float32)
    k = kernel.shape[-1]
    kh = kernel.shape[-2]
    total = kernel.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    p = kernel / total
    ys = torch.arange(kh, dtype=torch.float32, device=kernel.device).view(kh, 1)
    xs = torch.arange(k, dtype=torch.float32, device=kernel.device).view(1, k)
    mx = (p * xs).sum(dim=(-2, -1), keepdim=True)
    my = (p * ys).sum(dim=(-2, -1), keepdim=True)
    dx = xs - mx
    dy = ys - my
    cxx = (p * dx * dx).sum(dim=(-2, -1))
    cyy = (p * dy * dy).sum(dim=(-2, -1))
    cxy = (p * dx * dy).sum(dim=(-2, -1))
    return covariance_to_motion(cxx, cyy, cxy)


def points_to_motion(points: torch.Tensor, weights: torch.Tensor | None = None, pixel_variance: float = 1 / 6
                     ) -> torch.Tensor:
    """Trajectory samples `[..., N, 2]` (x, y) -> `[..., 3]`: the encoding of the PSF they rasterise to.

    `pixel_variance` adds the spread a bilinear splat gives a point (mean of f(1 - f) over sub-pixel offsets is 1/6),
    so the analytic field of spatially varying blur matches `kernel_to_motion` of the rasterised PSF.
    """
    if weights is None:
        weights = torch.ones(points.shape[:-1], dtype=points.dtype, device=points.device)
    w = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    mean = (points * w.unsqueeze(-1)).sum(dim=-2, keepdim=True)
    d = points - mean
    cxx = (w * d[..., 0] ** 2).sum(-1) + pixel_variance
    cyy = (w * d[..., 1] ** 2).sum(-1) + pixel_variance
    cxy = (w * d[..., 0] * d[..., 1]).sum(-1)
    return covariance_to_motion(cxx, cyy, cxy)


def motion_to_polar(motion: torch.Tensor, dim: int = -1):
    """Encoding -> (θ in [0, π) radians, directionality d, length L), split along `dim`."""
    c2, s2, length = motion.unbind(dim)
    theta = torch.remainder(0.5 * torch.atan2(s2, c2), math.pi)
    return theta, torch.sqrt(c2 * c2 + s2 * s2), length


def motion_to_color(motion: torch.Tensor, max_length: float | None = 40.0) -> torch.Tensor:
    """`[3, h, w]` motion field -> `[3, h, w]` RGB colour wheel: hue = direction (doubled angle, so a streak and its
    reverse share a colour), saturation = directionality, value = length / max_length (1 when `max_length` is None:
    the app draws the length as streaks instead)."""
    theta, d, length = motion_to_polar(motion, dim=0)
    hue = theta / math.pi  # doubled angle: full wheel over [0, π)
    sat = d.clamp(0, 1)
    val = torch.ones_like(length) if max_length is None else (length / max_length).clamp(0, 1)
    h6 = hue * 6.0
    i = torch.floor(h6)
    f = h6 - i
    p = val * (1 - sat)
    q = val * (1 - sat * f)
    t = val * (1 - sat * (1 - f))
    i = i.long() % 6
    r = torch.stack([val, q, p, p, t, val])
    g = torch.stack([t, val, val, q, p, p])
    b = torch.stack([p, p, t, val, val, q])
    idx = i.unsqueeze(0)
    return torch.cat([r.gather(0, idx), g.gather(0, idx), b.gather(0, idx)], dim=0)
