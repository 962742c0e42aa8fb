"""Blur kernels, the motion encoding, spatially varying fields and the camera steps (tiny synthetic inputs)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glow.data import camera
from glow.data.kernels import (camera_shake_kernel, convolve, defocus_kernel, gaussian_kernel, kernel_support_radius,
                               linear_kernel, rasterize_points)
from glow.data.motion import KERNEL_SIZE, kernel_to_motion, motion_to_polar, points_to_motion
from glow.data.spatial import depth_defocus, rotation_blur, zoom_blur


def _centroid(k):
    size = k.shape[-1]
    idx = torch.arange(size, dtype=torch.float32)
    return float((k.sum(0) * idx).sum()), float((k.sum(1) * idx).sum())


def _all_kernels():
    rng = np.random.default_rng(0)
    ks = [camera_shake_kernel(rng)[0] for _ in range(6)]
    ks += [linear_kernel(3, 0.3), linear_kernel(60, 2.0), defocus_kernel(6), defocus_kernel(9, blades=6, ring=0.8),
           gaussian_kernel(5, 1, 0.7), camera_shake_kernel(rng, extent=75)[0]]
    return ks


def test_kernels_are_normalised_non_negative_and_centred():
    c = (KERNEL_SIZE - 1) / 2
    for k in _all_kernels():
        assert k.shape == (KERNEL_SIZE, KERNEL_SIZE)
        assert float(k.min()) >= 0
        assert abs(float(k.sum()) - 1) < 1e-5
        cx, cy = _centroid(k)
        assert abs(cx - c) < 1e-3 and abs(cy - c) < 1e-3


def test_camera_shake_extent_and_variety():
    rng = np.random.default_rng(1)
    lengths = [float(kernel_to_motion(camera_shake_kernel(rng, extent=e)[0])[2]) for e in (5, 20, 60)]
    assert lengths[0] < lengths[1] < lengths[2]
    a, b = camera_shake_kernel(np.random.default_rng(2))[0], camera_shake_kernel(np.random.default_rng(3))[0]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("length,angle_deg", [(21, 30), (11, 0), (41, 90), (15, 135)])
def test_linear_motion_gives_expected_field(length, angle_deg):
    theta, d, measured = motion_to_polar(kernel_to_motion(linear_kernel(length, math.radians(angle_deg))))
    diff = abs((math.degrees(float(theta)) - angle_deg + 90) % 180 - 90)
    assert diff < 2.0
    assert float(d) > 0.95
    assert abs(float(measured) - length) < 1.5


def test_isotropic_kernels_have_no_direction():
    _, d, length = motion_to_polar(kernel_to_motion(defocus_kernel(8)))
    assert float(d) < 0.02
    assert abs(float(length) - math.sqrt(3) * 8) < 0.6  # a disk of radius R has variance R^2/4 per axis


def test_points_and_kernel_encodings_agree():
    pts = torch.from_numpy(np.random.default_rng(4).normal(size=(200, 2)) * [6, 2]).float()
    a = points_to_motion(pts)
    b = kernel_to_motion(rasterize_points(pts))
    assert torch.allclose(a, b, atol=0.05 * float(b[2]) + 0.05)


def test_fft_convolution_matches_direct_and_keeps_alignment():
    img = torch.rand(3, 40, 53)
    k = camera_shake_kernel(np.random.default_rng(5), extent=20)[0]
    out = convolve(img, k)
    r = KERNEL_SIZE // 2
    direct = F.conv2d(F.pad(img[None], (r, r, r, r), mode="replicate"), k.flip(-1, -2).expand(3, 1, -1, -1),
                      groups=3)[0]
    assert out.shape == img.shape
    # away from the borders (the padding modes differ) the two agree
    s = kernel_support_radius(k)
    assert 0 < s < 18
    assert torch.allclose(out[:, s:-s, s:-s], direct[:, s:-s, s:-s], atol=1e-5)
    dot = torch.zeros(1, 81, 81)
    dot[0, 40, 40] = 1
    streak = convolve(dot, k)[0]
    cx, cy = _centroid(streak)
    assert abs(cx - 40) < 1e-3 and abs(cy - 40) < 1e-3  # the blurred dot stays where the sharp one was


def test_rotation_field_is_tangential_and_zoom_radial():
    img = torch.rand(3, 96, 128)
    rng = np.random.default_rng(6)
    _, motion, kernels, info = rotation_blur(img, rng, max_disp=20)
    cx, cy = info["center"]
    theta, d, length = motion_to_polar(motion, dim=0)
    ys, xs = torch.meshgrid(torch.arange(12) * 8 + 3.5, torch.arange(16) * 8 + 3.5, indexing="ij")
    radial = torch.atan2(ys - cy, xs - cx)
    far = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt() > 30
    tangential_err = torch.remainder(theta - radial - math.pi / 2 + math.pi / 2, math.pi) - math.pi / 2
    assert tangential_err[far].abs().max() < math.radians(5)
    assert kernels.shape == (2, 2, KERNEL_SIZE, KERNEL_SIZE)
    assert torch.allclose(kernels.sum((-1, -2)), torch.ones(2, 2), atol=1e-5)
    _, motion, _, info = zoom_blur(img, rng, max_disp=20)
    cx, cy = info["center"]
    theta, _, length = motion_to_polar(motion, dim=0)
    radial = torch.atan2(ys - cy, xs - cx)
    far = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt() > 30
    radial_err = torch.remainder(theta - radial + math.pi / 2, math.pi) - math.pi / 2
    assert radial_err[far].abs().max() < math.radians(5)
    dist = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt()
    assert float(length[dist > 60].mean()) > float(length[dist < 20].mean())  # zoom blur grows outwards


def test_depth_defocus_radius_follows_depth():
    img = torch.rand(3, 64, 128)
    out, motion, kernels, info = depth_defocus(img, np.random.default_rng(7), max_radius=6)
    assert out.shape == img.shape and motion.shape == (3, 8, 16)
    _, d, length = motion_to_polar(motion, dim=0)
    assert float(d.max()) < 0.05  # defocus has no direction
    assert float(length.max()) > 5 and float(length.min()) < 3  # in focus somewhere, blurred elsewhere


def test_noise_statistics_match_the_requested_level():
    gen = torch.Generator().manual_seed(0)
    for level, shot, read in ((0.3, 0.01, 0.02), (0.05, 0.002, 0.005)):
        x = torch.full((1, 256, 256), level)
        y = camera.add_poisson_gaussian_noise(x, shot, read, gen)
        expected = math.sqrt(shot * level + read**2)
        assert abs(float(y.std()) / expected - 1) < 0.03
        assert abs(float(y.mean()) - level) < 0.05 * expected + 1e-4


def test_camera_curves_and_bayer_round_trip():
    x = torch.rand(3, 16, 18)
    assert torch.allclose(camera.linear_to_srgb(camera.srgb_to_linear(x)), x, atol=1e-5)
    assert torch.allclose(camera.linear_to_gamma(camera.gamma_to_linear(x, 2.2), 2.2), x, atol=1e-4)
    flat = torch.tensor([0.2, 0.5, 0.7]).view(3, 1, 1).expand(3, 10, 12)
    assert torch.allclose(camera.demosaic_bilinear(camera.mosaic_bayer(flat)), flat, atol=1e-6)
    boosted = camera.boost_highlights(torch.tensor([0.2, 0.99]).view(1, 1, 2).expand(3, 1, 2), 0.8, 4.0)
    assert float(boosted[0, 0, 0]) == pytest.approx(0.2) and float(boosted[0, 0, 1]) > 3.5
    q = camera.jpeg_compress(x, 50)
    assert q.shape == x.shape and 0 < float((q - x).abs().mean()) < 0.3
