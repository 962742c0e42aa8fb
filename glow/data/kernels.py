"""Global blur kernels (PSFs) and FFT convolution.

Every kernel is `KERNEL_SIZE` x `KERNEL_SIZE` (75), non-negative, sums to 1 and has its centroid on the centre pixel,
so a blurred image stays aligned with its sharp source. Random parameters come from a `numpy.random.Generator`
(seeded by the caller), rasterisation and convolution are torch.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from .motion import KERNEL_SIZE

__all__ = [
    "rasterize_points",
    "camera_shake_points",
    "linear_points",
    "camera_shake_kernel",
    "linear_kernel",
    "defocus_kernel",
    "gaussian_kernel",
    "delta_kernel",
    "normalize_kernel",
    "kernel_support_radius",
    "convolve",
]


def normalize_kernel(kernel: torch.Tensor) -> torch.Tensor:
    kernel = kernel.clamp_min(0)
    return kernel / kernel.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def delta_kernel(size: int = KERNEL_SIZE) -> torch.Tensor:
    k = torch.zeros(size, size)
    k[size // 2, size // 2] = 1.0
    return k


def rasterize_points(points: torch.Tensor, weights: torch.Tensor | None = None, size: int = KERNEL_SIZE
                     ) -> torch.Tensor:
    """Trajectory samples `[N, 2]` or `[B, N, 2]` (x, y in px, any origin) -> PSF `[K, K]` / `[B, K, K]`.

    The samples are shifted so their weighted mean lands on the centre pixel (bilinear splatting preserves the
    centroid exactly), and shrunk about it if they would leave the kernel.
    """
    squeeze = points.dim() == 2
    if squeeze:
        points = points.unsqueeze(0)
        weights = None if weights is None else weights.unsqueeze(0)
    points = points.to(torch.float32)
    b, n, _ = points.shape
    if weights is None:
        weights = torch.ones(b, n)
    w = weights.to(torch.float32)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    mean = (points * w.unsqueeze(-1)).sum(1, keepdim=True)
    rel = points - mean
    half = (size - 1) / 2 - 1.0  # keep one pixel of margin for the bilinear footprint
    reach = rel.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    rel = rel * torch.clamp(half / reach, max=1.0)
    pos = rel + (size - 1) / 2
    x0 = pos[..., 0].floor()
    y0 = pos[..., 1].floor()
    fx = pos[..., 0] - x0
    fy = pos[..., 1] - y0
    x0 = x0.long()
    y0 = y0.long()
    out = torch.zeros(b, size * size)
    for dx, dy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        idx = ((y0 + dy).clamp(0, size - 1) * size + (x0 + dx).clamp(0, size - 1))
        out.scatter_add_(1, idx, wt * w)
    out = normalize_kernel(out.view(b, size, size))
    return out[0] if squeeze else out


def camera_shake_points(rng: np.random.Generator, extent: float, n_steps: int = 320,
                        exposure: float | None = None) -> np.ndarray:
    """A random camera-shake trajectory `[N, 2]` in px (Boracchi & Foi 2012 style).

    The velocity has inertia (it is renormalised every step), gets Gaussian jitter and a pull back to the start
    (centripetal term), and now and then a sharp jerk (a big random turn). The exposure covers a random contiguous
    fraction of the motion, and the speed varies smoothly so some parts of the path get more light than others.
    The result is scaled so its larger bounding-box side equals `extent`.
    """
    anxiety = rng.uniform(0.005, 0.1)
    centripetal = rng.uniform(0.0, 0.7)
    # jitter per step scaled for our finer time step (B&F use 64 samples per trajectory); expected number of
    # jerks over the whole path 0-2.5 (hand shake is mostly smooth with a few abrupt turns)
    gaussian_term = rng.uniform(0.0, 10.0) * math.sqrt(64 / n_steps)
    jerk_prob = rng.uniform(0.0, 2.5) / n_steps
    step = 1.0 / (n_steps - 1)
    angle = rng.uniform(0, 2 * math.pi)
    v = complex(math.cos(angle), math.sin(angle)) * step
    x = np.zeros(n_steps, dtype=np.complex128)
    normal = rng.standard_normal((n_steps, 2))
    uniform = rng.random((n_steps, 2))
    for t in range(n_steps - 1):
        if uniform[t, 0] < jerk_prob:  # a jerk: reverse-ish direction
            turn = math.pi + (uniform[t, 1] - 0.5)
            nxt = 2 * v * complex(math.cos(turn), math.sin(turn))
        else:
            nxt = 0
        dv = nxt + anxiety * (gaussian_term * complex(normal[t, 0], normal[t, 1]) - centripetal * x[t]) * step
        v = v + dv
        v = v / (abs(v) + 1e-12) * step
        x[t + 1] = x[t] + v
    if exposure is None:
        exposure = rng.uniform(0.4, 1.0)
    length = max(8, int(round(exposure * n_steps)))
    start = int(rng.integers(0, n_steps - length + 1))
    x = x[start:start + length]
    # variable speed: resample the path at non-uniform times (slow parts collect more light)
    phase = np.linspace(0, rng.uniform(1, 4) * math.pi, length) + rng.uniform(0, 6.3)
    speed = 1.0 + rng.uniform(0, 0.8) * np.sin(phase)
    s = np.concatenate([[0], np.cumsum(speed[:-1])])
    s = s / s[-1] * (length - 1)
    x = np.interp(s, np.arange(length), x.real) + 1j * np.interp(s, np.arange(length), x.imag)
    pts = np.stack([x.real, x.imag], axis=1)
    span = (pts.max(0) - pts.min(0)).max()
    pts = pts / max(span, 1e-9) * extent
    # densify so consecutive samples are < 0.5 px apart (continuous streaks after splatting)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    total = seg.sum()
    n_dense = int(min(4000, max(len(pts), 2 * total + 2)))
    if n_dense > len(pts):
        # keep the time parametrisation (equal time per original sample) -> interpolate in sample index
        ti = np.linspace(0, len(pts) - 1, n_dense)
        t0 = np.arange(len(pts))
        pts = np.stack([np.interp(ti, t0, pts[:, 0]), np.interp(ti, t0, pts[:, 1])], axis=1)
    return pts.astype(np.float32)


def linear_points(length: float, angle: float, n: int | None = None) -> np.ndarray:
    """A uniform straight streak of `length` px at `angle` radians (x right, y down)."""
    n = n or max(2, int(math.ceil(length * 2)) + 1)
    t = np.linspace(-0.5, 0.5, n) * length
    return np.stack([t * math.cos(angle), t * math.sin(angle)], axis=1).astype(np.float32)


def camera_shake_kernel(rng: np.random.Generator, extent: float | None = None, size: int = KERNEL_SIZE):
    if extent is None:
        extent = float(np.exp(rng.uniform(math.log(4), math.log(72))))
    pts = camera_shake_points(rng, extent)
    return rasterize_points(torch.from_numpy(pts), size=size), {"extent": extent}


def linear_kernel(length: float, angle: float, size: int = KERNEL_SIZE) -> torch.Tensor:
    return rasterize_points(torch.from_numpy(linear_points(length, angle)), size=size)


def defocus_kernel(radius: float, blades: int = 0, rotation: float = 0.0, ring: float = 0.0,
                   size: int = KERNEL_SIZE, supersample: int = 4) -> torch.Tensor:
    """Out-of-focus PSF: a disk (`blades=0`) or a regular polygon aperture with `blades` sides, optionally with a
    bright rim (`ring` in [0, 1], spherical-aberration look). Area-sampled with `supersample`^2 points per pixel."""
    radius = float(min(max(radius, 0.3), (size - 3) / 2))
    if blades < 3 and ring <= 0:
        # plain disks repeat a lot (depth defocus draws one per patch): cache them at 1/100 px radius steps
        return _disk_kernel(round(radius, 2), size, supersample).clone()
    return _aperture_kernel(radius, blades, rotation, ring, size, supersample)


@functools.lru_cache(maxsize=512)
def _disk_kernel(radius: float, size: int, supersample: int) -> torch.Tensor:
    return _aperture_kernel(radius, 0, 0.0, 0.0, size, supersample)


def _aperture_kernel(radius: float, blades: int, rotation: float, ring: float, size: int, supersample: int
                     ) -> torch.Tensor:
    c = (size - 1) / 2
    offs = (torch.arange(supersample, dtype=torch.float32) + 0.5) / supersample - 0.5
    coords = torch.arange(size, dtype=torch.float32) - c
    fine = (coords.view(-1, 1) + offs.view(1, -1)).reshape(-1)
    yy, xx = torch.meshgrid(fine, fine, indexing="ij")
    r = torch.sqrt(xx * xx + yy * yy)
    if blades >= 3:
        phi = torch.atan2(yy, xx) - rotation
        sector = 2 * math.pi / blades
        local = torch.remainder(phi, sector) - sector / 2
        # distance to the polygon edge along this direction, for a polygon with circumradius `radius`
        edge = radius * math.cos(math.pi / blades) / torch.cos(local)
    else:
        edge = torch.full_like(r, radius)
    inside = (r <= edge).float()
    if ring > 0:
        inside = inside * (1.0 + ring * 3.0 * (r / edge.clamp_min(1e-6)) ** 4)
    k = inside.view(size, supersample, size, supersample).mean(dim=(1, 3))
    return normalize_kernel(k)


def gaussian_kernel(sigma_x: float, sigma_y: float, angle: float, size: int = KERNEL_SIZE) -> torch.Tensor:
    """Anisotropic Gaussian with standard deviations `sigma_x` (along `angle`) and `sigma_y` (across)."""
    c = (size - 1) / 2
    coords = torch.arange(size, dtype=torch.float32) - c
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    ca, sa = math.cos(angle), math.sin(angle)
    u = ca * xx + sa * yy
    v = -sa * xx + ca * yy
    k = torch.exp(-0.5 * ((u / max(sigma_x, 0.2)) ** 2 + (v / max(sigma_y, 0.2)) ** 2))
    return normalize_kernel(k)


def kernel_support_radius(kernel: torch.Tensor, eps: float = 1e-7) -> int:
    """Smallest r such that the kernel (or every kernel of a batch) vanishes outside the centre ± r box."""
    size = kernel.shape[-1]
    c = size // 2
    mass = kernel.reshape(-1, size, size).amax(0) > eps
    if not mass.any():
        return 0
    ys, xs = torch.nonzero(mass, as_tuple=True)
    return int(max((ys - c).abs().max(), (xs - c).abs().max()))


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (FFT sizes with small prime factors are several times faster)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _pad(image: torch.Tensor, r: int) -> torch.Tensor:
    if r == 0:
        return image
    h, w = image.shape[-2:]
    if r < h and r < w:
        return F.pad(image, (r, r, r, r), mode="reflect")
    return F.pad(image, (r, r, r, r), mode="replicate")


def convolve(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Blur `[C, H, W]` / `[B, C, H, W]` with a centred PSF `[K, K]` (shared) or `[B, K, K]` (one per image).

    FFT convolution (torch.fft) on a reflect-padded image: cost is independent of the kernel size, which matters for
    75 px shake kernels. The kernel is first cropped to its support so the padding stays small.
    """
    squeeze = image.dim() == 3
    if squeeze:
        image = image.unsqueeze(0)
    r = kernel_support_radius(kernel)
    c = kernel.shape[-1] // 2
    k = kernel[..., c - r:c + r + 1, c - r:c + r + 1]
    if r == 0:
        out = image * k.reshape(-1, 1, 1, 1)
        return out[0] if squeeze else out
    padded = _pad(image, r)
    # zero-extending past the reflect padding to a fast FFT size adds no wrap-around inside the crop
    hp, wp = _fast_len(padded.shape[-2]), _fast_len(padded.shape[-1])
    if k.dim() == 2:
        k = k.unsqueeze(0)
    kp = torch.zeros(k.shape[0], hp, wp, dtype=image.dtype, device=image.device)
    kp[:, : 2 * r + 1, : 2 * r + 1] = k
    kp = torch.roll(kp, shifts=(-r, -r), dims=(-2, -1))  # kernel centre at (0, 0)
    spec = torch.fft.rfft2(padded, s=(hp, wp)) * torch.fft.rfft2(kp).unsqueeze(1)
    out = torch.fft.irfft2(spec, s=(hp, wp))[..., r:r + image.shape[-2], r:r + image.shape[-1]]
    return out[0] if squeeze else out
