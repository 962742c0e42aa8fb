"""Blind kernel estimation and deconvolution (glow.models.blind_deconvolution) on small synthetic photos."""
import math

import numpy as np
import pytest
import torch

from glow.data.kernels import camera_shake_kernel, convolve, defocus_kernel, linear_kernel
from glow.data.motion import kernel_to_motion, motion_to_polar
from glow.models.blind_deconvolution import BlindDeconvolution
from glow.models.deconvolution_utils import (
    find_light_sources,
    kernel_moments,
    kernel_motion,
    light_source_start,
    light_trails,
    noise_sigma,
    trail_fit,
)
from glow.presets import build_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

# small and quick: the search for kernels up to 25 px on a 192 px region
SMALL = dict(max_kernel_size=25, kernel_sizes=(25,), region_size=192, region_long_side=None, iterations=6)


def scene(size=192, seed=0):
    """A sharp synthetic photo: many overlapping rectangles and disks (edges in every direction, at every scale) on
    a ramp, RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((3, size, size), np.float32) + 0.35 + 0.15 * (xx / size)
    for _ in range(60):
        colour = rng.uniform(0.05, 0.9, 3).astype(np.float32)[:, None, None]
        if rng.random() < 0.5:
            x0, y0 = rng.integers(0, size - 20, 2)
            w, h = rng.integers(4, 40, 2)
            m = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
        else:
            cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, 20)
            m = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img = np.where(m[None], colour, img)
    return torch.from_numpy(img)


def blur(sharp, kernel, noise=0.005, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (convolve(sharp, kernel) + noise * torch.randn(sharp.shape, generator=g)).clamp(0, 1)


def psnr(a, b):
    return float(10 * torch.log10(1 / ((a.clamp(0, 1) - b) ** 2).mean()))


def centre_crop(kernel, size):
    c, r = kernel.shape[-1] // 2, size // 2
    return kernel[c - r : c + r + 1, c - r : c + r + 1]


def test_linear_kernel_is_recovered_and_deconvolution_helps():
    sharp = scene()
    true = centre_crop(linear_kernel(13.0, math.radians(30)), 25)
    blurry = blur(sharp, true)
    bd = BlindDeconvolution(**SMALL)
    kernel, confidence, info = bd.estimate_kernel(blurry)
    length, _, angle = kernel_moments(kernel)
    true_length, _, true_angle = kernel_moments(true)
    assert abs(length - true_length) < 3.0, (length, true_length)
    assert abs(math.degrees(angle - true_angle)) < 10, (math.degrees(angle), math.degrees(true_angle))
    assert confidence == 1.0
    # L1 distance of two PSFs is at most 2; the estimate is ~1-2 px thicker than a 1-px line (measured 1.06)
    assert float((kernel - true).abs().sum()) < 1.2
    out = bd(blurry[None]).image[0]
    assert psnr(out, sharp) > psnr(blurry, sharp) + 3.0, (psnr(out, sharp), psnr(blurry, sharp))


def test_camera_shake_kernel_is_recovered():
    sharp = scene(seed=3)
    true = centre_crop(camera_shake_kernel(np.random.default_rng(5), extent=12.0)[0], 25)
    true = true / true.sum()
    blurry = blur(sharp, true)
    bd = BlindDeconvolution(**SMALL)
    kernel, _, _ = bd.estimate_kernel(blurry)
    assert float((kernel - true).abs().sum()) < 1.0
    assert psnr(bd.deconvolve(blurry, kernel), sharp) > psnr(blurry, sharp) + 2.0


def test_sharp_image_passes_unchanged():
    sharp = (scene(seed=7) + 0.005 * torch.randn(3, 192, 192, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    out = BlindDeconvolution(**SMALL)(sharp[None])
    assert float(out.confidence[0]) == 0.0
    assert torch.equal(out.image[0], sharp)


def test_unblurred_is_what_the_search_returns_when_it_finds_no_blur():
    """The pipeline's shortcut for plainly sharp photos gives the same outputs as a search that finds no blur: the
    photos unchanged, delta kernels, confidence 0, the motion encoding of a delta."""
    sharp = (scene(seed=7) + 0.005 * torch.randn(3, 192, 192, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    component = BlindDeconvolution(**SMALL)
    searched, shortcut = component(sharp[None]), component.unblurred(torch.stack([sharp, sharp]))
    assert float(searched.confidence[0]) == 0.0 and shortcut.confidence.tolist() == [0.0, 0.0]
    assert torch.equal(shortcut.image[1], sharp) and shortcut.kernels.shape == (2, 25, 25)
    assert float(shortcut.kernels[0, 12, 12]) == 1.0 and float(shortcut.kernels.sum()) == 2.0
    assert torch.equal(shortcut.motion[0], kernel_motion(shortcut.kernels[0]))


@pytest.mark.parametrize("radius", [4.0, 7.0])
def test_defocus_disk_is_found_and_deconvolved(radius):
    # a disk has no direction: the free-form kernel gets no confidence; the ring of zeros in the spectrum gives it away
    sharp = scene(seed=2)
    true = centre_crop(defocus_kernel(radius), 25)
    blurry = blur(sharp, true / true.sum())
    bd = BlindDeconvolution(**SMALL)
    kernel, confidence, info = bd.estimate_kernel(blurry)
    assert info["defocus"] and abs(info["defocus_radius"] - radius) <= 0.5, info
    assert confidence > 0.9
    assert psnr(bd(blurry[None]).image[0], sharp) > psnr(blurry, sharp) + 3.0  # measured +4.0 / +4.2 dB
    assert BlindDeconvolution(**SMALL, defocus_radii=None).estimate_kernel(blurry)[1] == 0.0  # the search is off
    # searched only up to the true radius, the best fit sits at the end of the range: the edge of the search, no
    # evidence of a disk (sharp photos' fits pile up there), so it is not applied
    _, edge_confidence, edge_info = BlindDeconvolution(**SMALL, defocus_radii=(1.5, radius)).estimate_kernel(blurry)
    assert edge_info["defocus_radius"] >= radius - 1.0 and not edge_info.get("defocus") and edge_confidence == 0.0


def test_motion_blur_is_not_taken_for_defocus():
    sharp = scene(seed=3)
    blurry = blur(sharp, centre_crop(linear_kernel(15.0, math.radians(-20)), 25))
    kernel, confidence, info = BlindDeconvolution(**SMALL).estimate_kernel(blurry)
    assert not info.get("defocus") and confidence == 1.0
    length, width, _ = kernel_moments(kernel)
    assert length > 3 * width


@pytest.mark.parametrize("sigma", [0.0, 0.01, 0.02])
def test_noise_sigma_reads_white_noise_beside_edges(sigma):
    photo = scene(seed=4)[0] + sigma * torch.randn(192, 192, generator=torch.Generator().manual_seed(3))
    assert abs(noise_sigma(photo) - sigma) <= 0.15 * sigma + 0.001, noise_sigma(photo)


@pytest.mark.parametrize("noise_aware", [True, False])
def test_confidence_map_leaves_flat_noisy_tiles_to_the_photo(noise_aware):
    """A streaked scene beside a flat wall, 2% noise everywhere: the wall's tiles hold no evidence against the kernel
    (their power is noise), so they keep the photo's confidence; without the noise floor their ratio reads ~0.84
    (noise is as strong where the kernel passes nothing) and they were switched off (Kodak shake: -0.6 dB)."""
    kernel = centre_crop(linear_kernel(15.0, math.radians(30)), 25)
    g = torch.Generator().manual_seed(3)
    wall = (torch.full((3, 192, 192), 0.5) + 0.02 * torch.randn(3, 192, 192, generator=g)).clamp(0, 1)
    photo = torch.cat([blur(scene(seed=12), kernel, noise=0.02), wall], dim=-1)
    conf = BlindDeconvolution(**SMALL, gate_tile=96, noise_aware_tiles=noise_aware).confidence_map(photo, kernel)
    assert float(conf[:, :150].mean()) > 0.9
    assert (float(conf[:, 234:].mean()) > 0.9) == noise_aware, float(conf[:, 234:].mean())


def test_the_kernel_step_on_the_lag_window_is_the_same_operator():
    """The kernel step's conjugate gradients run on an FFT of ~3k instead of the whole region: the normal operator
    must be the same, and on a region too small for the window the whole-region one is kept."""
    from glow.models.deconvolution_utils import otf2psf, psf2otf

    g = torch.Generator().manual_seed(0)
    shape, k = (200, 310), 25
    gram = torch.fft.rfft2(torch.randn(shape, generator=g)).abs() ** 2
    kernel = torch.rand(k, k, generator=g)
    small, small_shape = BlindDeconvolution._lag_window(gram, shape, k)
    assert small_shape == (75, 75)
    whole = otf2psf(gram * psf2otf(kernel, shape), shape, k)
    torch.testing.assert_close(otf2psf(small * psf2otf(kernel, small_shape), small_shape, k), whole, rtol=1e-4, atol=1e-3)
    assert BlindDeconvolution._lag_window(gram, (40, 310), k)[1] == (40, 310)


@pytest.mark.parametrize("size", [1, 3, 25, 75])
def test_dilate_is_the_square_max_pool(size):
    """The separable dilation around clipped lights must be exactly the square max-pool it replaces."""
    from glow.models.deconvolution_utils import dilate

    g = torch.Generator().manual_seed(size)
    for mask in ((torch.rand(90, 130, generator=g) > 0.99).float(), torch.rand(90, 130, generator=g)):
        square = torch.nn.functional.max_pool2d(mask[None, None], size, stride=1, padding=size // 2)[0, 0]
        assert torch.equal(dilate(mask, size), square)


def test_differences_and_kernel_placement_are_the_rolled_definitions():
    """The slice-written differences and the wrapped kernel placement must give exactly what torch.roll gives (the
    kernel search depends on float-identical steps: docs/deconvolution.md), and grad_xt must be grad_x's adjoint."""
    from glow.models.deconvolution_utils import grad_x, grad_xt, grad_y, grad_yt, otf2psf, psf2otf

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 37, 53, generator=g), torch.randn(2, 37, 53, generator=g)
    assert torch.equal(grad_x(x), x - torch.roll(x, 1, dims=-1))
    assert torch.equal(grad_y(x), x - torch.roll(x, 1, dims=-2))
    assert torch.equal(grad_xt(x), x - torch.roll(x, -1, dims=-1))
    assert torch.equal(grad_yt(x), x - torch.roll(x, -1, dims=-2))
    for d, dt in ((grad_x, grad_xt), (grad_y, grad_yt)):
        torch.testing.assert_close((d(x) * y).sum(), (x * dt(y)).sum())
    for k in (1, 3, 15):
        kernel = torch.rand(k, k, generator=g)
        padded = torch.zeros(37, 53)
        padded[:k, :k] = kernel
        rolled = torch.roll(padded, shifts=(-(k // 2), -(k // 2)), dims=(-2, -1))
        assert torch.equal(psf2otf(kernel, (37, 53)), torch.fft.rfft2(rolled))
        torch.testing.assert_close(otf2psf(psf2otf(kernel, (37, 53)), (37, 53), k), kernel, atol=1e-6, rtol=0)


def test_the_largest_search_is_sparse_for_long_blurs_only_and_must_win_clearly():
    sharp = scene(seed=3)
    settings = dict(SMALL, kernel_sizes=(19, 25), long_blur_lambda=4e-3, long_blur_length=8.0)
    for length, sparse in ((4.0, False), (13.0, True)):
        blurry = blur(sharp, centre_crop(linear_kernel(length, math.radians(30)), 25))
        _, _, info = BlindDeconvolution(**settings).estimate_kernel(blurry)
        assert info["long_blur_search"] == sparse and len(info["spectral_ratios"][0]) == 2, (length, info)
    # the sparse search replaces the usual one: its kernel differs from what the usual weight finds
    usual = BlindDeconvolution(**dict(settings, long_blur_lambda=None, long_blur_margin=-100.0))
    sparse = BlindDeconvolution(**dict(settings, long_blur_margin=-100.0))
    assert usual.estimate_kernel(blurry)[2]["spectral_ratios"] != sparse.estimate_kernel(blurry)[2]["spectral_ratios"]
    # a margin no ratio can meet: the smaller search's kernel, exactly as if it had been the only one
    alone, alone_conf, _ = BlindDeconvolution(**dict(SMALL, kernel_sizes=(19,))).estimate_kernel(blurry)
    never, never_conf, _ = BlindDeconvolution(**dict(settings, long_blur_margin=1.0)).estimate_kernel(blurry)
    assert torch.equal(never, alone) and never_conf == alone_conf
    # a margin any ratio meets: the sparse kernel wins, and the confidence is judged on its own ratio
    _, _, info = sparse.estimate_kernel(blurry)
    assert info["spectral_ratio"] == info["spectral_ratios"][0][1]


def test_linear_light_deconvolution_undoes_a_blur_made_in_linear_light():
    """deconv_linear_light (off by default): a camera blurs in linear light; with the true kernel, deconvolving there
    gets closer than deconvolving the sRGB values, and the default (off) is exactly the sRGB deconvolution."""
    from glow.models.deconvolution_utils import linear_to_srgb, srgb_to_linear

    sharp = scene(seed=5)
    kernel = centre_crop(linear_kernel(13.0, math.radians(20)), 25)
    g = torch.Generator().manual_seed(1)
    blurry = (linear_to_srgb(convolve(srgb_to_linear(sharp), kernel)) + 0.005 * torch.randn(sharp.shape, generator=g))
    blurry = blurry.clamp(0, 1)
    srgb = BlindDeconvolution(**SMALL)
    linear = BlindDeconvolution(**dict(SMALL, deconv_linear_light=True))
    assert torch.equal(srgb.deconvolve_photo(blurry, kernel), srgb.deconvolve(blurry, kernel))
    gain_srgb = psnr(srgb.deconvolve_photo(blurry, kernel), sharp) - psnr(blurry, sharp)
    gain_linear = psnr(linear.deconvolve_photo(blurry, kernel), sharp) - psnr(blurry, sharp)
    assert gain_linear > gain_srgb + 1.0 and gain_srgb > 2.0, (gain_srgb, gain_linear)


def test_a_hypothesis_that_finds_no_blur_vetoes_the_deconvolution():
    # a 3 px support cannot hold a blur of min_blur_length (5 px): that hypothesis says "no blur", like a search on a
    # sharp photo; the 25 px one finds the 13 px line and wins the ranking
    blurry = blur(scene(seed=3), centre_crop(linear_kernel(13.0, math.radians(30)), 25))
    settings = dict(SMALL, kernel_sizes=(3, 25))
    kernel, confidence, info = BlindDeconvolution(**settings).estimate_kernel(blurry)
    assert not info["unanimous"] and confidence == 0.0 and kernel_moments(kernel)[0] > 10
    _, confidence, info = BlindDeconvolution(**dict(settings, unanimous_blur=False)).estimate_kernel(blurry)
    assert confidence > 0.9
    # two supports that both hold the blur agree: full confidence, as with one
    _, confidence, info = BlindDeconvolution(**dict(SMALL, kernel_sizes=(19, 25))).estimate_kernel(blurry)
    assert info["unanimous"] and confidence == 1.0


def test_saturated_lights_do_not_derail_the_estimate():
    sharp = scene(seed=11)
    yy, xx = torch.meshgrid(torch.arange(192.0), torch.arange(192.0), indexing="ij")
    for cx, cy in ((40, 50), (150, 120), (90, 160)):  # street lights: far above white before the camera clips
        sharp = torch.where(((xx - cx) ** 2 + (yy - cy) ** 2 < 16)[None], torch.full_like(sharp, 6.0), sharp)
    true = centre_crop(linear_kernel(11.0, math.radians(-60)), 25)
    blurry = blur(sharp, true)  # clipped to [0, 1]: the saturated streaks lose their shape
    bd = BlindDeconvolution(**SMALL)
    kernel, _, _ = bd.estimate_kernel(blurry)
    length, _, angle = kernel_moments(kernel)
    # the direction holds; the length comes out long here (16 px for 11.6, measured; docs/deconvolution.md)
    assert abs(length - kernel_moments(true)[0]) < 0.6 * kernel_moments(true)[0]
    assert abs(math.degrees(angle - kernel_moments(true)[2])) < 10


def test_clipped_lights_leave_no_negative_ringing():
    """A night scene with clipped lights, deconvolved with the true kernel: the latent image is kept non-negative (the
    default), so the dark rings around each light are gone, and the photo, most of all around the lights, comes out
    closer to the sharp one than without the constraint (measured: 43% less squared error near the lights)."""
    sharp = scene(seed=12) * 0.3
    yy, xx = torch.meshgrid(torch.arange(192.0), torch.arange(192.0), indexing="ij")
    near = torch.zeros(192, 192, dtype=torch.bool)
    for cx, cy in ((40, 50), (150, 120), (90, 160)):  # street lights, far above white before the camera clips
        sharp = torch.where(((xx - cx) ** 2 + (yy - cy) ** 2 < 9)[None], torch.full_like(sharp, 10.0), sharp)
        near |= ((xx - cx) ** 2 + (yy - cy) ** 2) < 30**2
    true = centre_crop(camera_shake_kernel(np.random.default_rng(3), extent=18.0)[0], 25)
    blurry = blur(sharp, true / true.sum())
    target = sharp.clamp(0, 1)
    # the light-source start (next test) off in both: this one is about the constraint alone
    kept = BlindDeconvolution(**SMALL, deconv_light_sources=False).deconvolve(blurry, true / true.sum())
    free = BlindDeconvolution(**SMALL, deconv_nonnegative=False, deconv_light_sources=False).deconvolve(
        blurry, true / true.sum())
    assert float(kept.min()) >= 0.0 and float(free.min()) < -0.5

    def error(image, where):
        return float(((image.clamp(0, 1) - target) ** 2).mean(0)[where].mean())

    assert error(kept, near) < 0.8 * error(free, near)
    assert error(kept, ~near) <= error(free, ~near) + 1e-4
    # a photo without clipped pixels is deconvolved exactly as before
    plain = blur(scene(seed=12) * 0.3, true / true.sum())
    assert torch.equal(BlindDeconvolution(**SMALL).deconvolve(plain, true / true.sum()),
                       BlindDeconvolution(**SMALL, deconv_nonnegative=False).deconvolve(plain, true / true.sum()))


def test_clipped_lights_are_deconvolved_as_light_sources():
    """The same kind of night scene: each clipped trail is explained by a small source far brighter than white (the
    start of the missing-data deconvolution, ``deconv_light_sources``), so the light comes back as a spot where it
    was, not as a white copy of the trail with echoes around it. A white wall (a clipped region larger than the
    kernel), a light whose trail leaves the photo and a glint a little over white are not taken for light sources."""
    sharp = scene(seed=5) * 0.3
    yy, xx = torch.meshgrid(torch.arange(192.0), torch.arange(192.0), indexing="ij")
    centres = ((45, 60), (140, 110), (95, 150))
    near = torch.zeros(192, 192, dtype=torch.bool)
    for cx, cy in centres:
        sharp = torch.where(((xx - cx) ** 2 + (yy - cy) ** 2 < 5)[None], torch.full_like(sharp, 10.0), sharp)
        near |= ((xx - cx) ** 2 + (yy - cy) ** 2) < 30**2
    true = centre_crop(camera_shake_kernel(np.random.default_rng(7), extent=20.0)[0], 25)
    true = true / true.sum()
    blurry = blur(sharp, true)
    target = sharp.clamp(0, 1)
    sources = BlindDeconvolution(**SMALL).deconvolve(blurry, true)
    trails = BlindDeconvolution(**SMALL, deconv_light_sources=False).deconvolve(blurry, true)

    def error(image, where):
        return float(((image.clamp(0, 1) - target) ** 2).mean(0)[where].mean())

    assert error(sources, near) < 0.7 * error(trails, near), (error(sources, near), error(trails, near))
    assert error(sources, ~near) <= error(trails, ~near) + 1e-4
    for cx, cy in centres:  # the brightest deconvolved pixel near each light is the light itself, far above white
        window = sources[:, cy - 20 : cy + 21, cx - 20 : cx + 21].mean(0)
        py, px = divmod(int(window.argmax()), window.shape[1])
        assert abs(py - 20) <= 2 and abs(px - 20) <= 2 and float(window.max()) > 3, (cx, cy, py, px)

    assert len(find_light_sources(blurry, true, 0.97)) == 3
    wall = blur(torch.where((xx > 40) & (xx < 150) & (yy > 60) & (yy < 130), 3.0, 0.3).expand(3, -1, -1), true)
    assert find_light_sources(wall, true, 0.97) == []
    edge = blur(torch.where((xx - 2) ** 2 + (yy - 96) ** 2 < 5, 10.0, 0.3).expand(3, -1, -1), true)
    assert find_light_sources(edge, true, 0.97) == []
    # a glint three times white (a sunlit surface, skin) clips a small patch: no source is made of it (a source
    # ten times white, as the lights above, would be)
    glint = blur(torch.where((xx - 96) ** 2 + (yy - 96) ** 2 < 9, 3.0, 0.5).expand(3, -1, -1), true)
    candidates = find_light_sources(glint, true, 0.97)
    assert len(candidates) >= 1
    assert torch.equal(light_source_start(glint[0], candidates, 0.97), glint[0])


def night_scene(kernel, lights=8, size=192, seed=5):
    """A dark textured photo with ``lights`` small lights (5 px disks, ten times white) on a grid, blurred by
    ``kernel``: each light leaves a clipped trail shaped like the kernel."""
    sharp = scene(size, seed=seed) * 0.3
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    spots = [(int(x), int(y)) for y in torch.linspace(35, size - 35, 3) for x in torch.linspace(35, size - 35, 3)]
    for cx, cy in spots[:lights]:
        sharp = torch.where(((xx - cx) ** 2 + (yy - cy) ** 2 < 5)[None], torch.full_like(sharp, 10.0), sharp)
    return blur(sharp, kernel)


def test_light_trails_check_a_kernel():
    """``trail_fit``: the true kernel explains the lights' trails' shapes, as small lights far brighter than white; a
    kernel turned the wrong way explains none, a piece of it the shapes but not as lights.
    ``light_trails`` finds the same trails whatever the kernel, and leaves out a white wall, a trail cut by the
    border and a photo without clipped pixels."""
    true = linear_kernel(17.0, 0.3)
    true = centre_crop(true, 25) / true.sum()
    lum = night_scene(true).mean(0)
    trails = light_trails(lum, 0.97, 25)
    assert len(trails) == 8
    assert min(trail_fit(trails, true, 0.97)) >= 0.8
    turned = centre_crop(linear_kernel(17.0, 0.3 + math.pi / 2), 25)
    assert trail_fit(trails, turned / turned.sum(), 0.97) == (0.0, 0.0)
    # a piece of the streak predicts the trails' shape from a dim source spread along each, but not as lights
    piece = centre_crop(linear_kernel(9.0, 0.3), 25)
    assert trail_fit(trails, piece / piece.sum(), 0.97)[1] <= 0.2
    yy, xx = torch.meshgrid(torch.arange(192.0), torch.arange(192.0), indexing="ij")
    wall = blur(torch.where((xx > 40) & (xx < 150) & (yy > 60) & (yy < 130), 3.0, 0.3).expand(3, -1, -1), true)
    edge = blur(torch.where((xx - 2) ** 2 + (yy - 96) ** 2 < 5, 10.0, 0.3).expand(3, -1, -1), true)
    assert light_trails(wall.mean(0), 0.97, 25) == [] and light_trails(edge.mean(0), 0.97, 25) == []
    assert light_trails(lum.clamp(max=0.9), 0.97, 25) == []
    assert all(math.isnan(v) for v in trail_fit([], true, 0.97))


def test_light_trails_gate_and_confirm_the_search():
    """In ``estimate_kernel``: with ``trail_trust`` set, a kernel the trails confirm is trusted even where
    ``spectral_ratio`` alone gives it no confidence (the holes cut around the lights leak power into its zeros);
    one they contradict gets none (here a
    search limited to 9 px on a 17 px streak finds a short kernel); with ``trail_min_count`` None the trails are not
    looked at."""
    true = linear_kernel(17.0, 0.3)
    true = centre_crop(true, 25) / true.sum()
    photo = night_scene(true, lights=4, size=256)
    kernel, confidence, info = BlindDeconvolution(**SMALL, trail_trust=0.8).estimate_kernel(photo)
    assert info["light_trails"] == 4 and info["trail_lights"] >= 0.8 and confidence == 1.0
    assert abs(info["length"] - kernel_moments(true)[0]) < 2.0
    _, unchecked, info = BlindDeconvolution(**SMALL, trail_min_count=None).estimate_kernel(photo)
    assert info["spectral_ratio"] > 0.5 and unchecked == 0.0 and math.isnan(info["trail_fit"])
    assert BlindDeconvolution(**SMALL).estimate_kernel(photo)[1] == 0.0  # the trust is off by default
    # the scene blurred by the streak, its lights by the streak turned a quarter turn (lights moving across the
    # frame): the search finds the scene's streak, which explains none of the trails
    turned = centre_crop(linear_kernel(17.0, 0.3 + math.pi / 2), 25)
    turned = turned / turned.sum()
    lights = night_scene(turned, size=256, lights=4) - blur(scene(256, seed=5) * 0.3, turned)
    photo = (blur(scene(256, seed=5) * 0.3, true) + lights).clamp(0, 1)
    _, unchecked, _ = BlindDeconvolution(**SMALL, trail_min_count=None).estimate_kernel(photo)
    kernel, checked, info = BlindDeconvolution(**SMALL).estimate_kernel(photo)
    assert unchecked > 0.5 and info["light_trails"] == 4 and info["trail_fit"] <= 0.2 and checked == 0.0


def test_the_search_runs_on_the_most_edge_rich_region_only():
    """Cost bounded by ``region_size``, not the photo: on a 576 px photo that is flat but for one busy corner, the
    one 192 px region searched is that corner."""
    bd = BlindDeconvolution(**SMALL)
    photo = torch.full((3, 576, 576), 0.5)
    photo[:, 350:550, 20:220] = scene(seed=2, size=200)
    _, _, info = bd.estimate_kernel(photo)
    (y0, x0), = info["regions"]
    assert info["region_size"] == [192, 192]
    assert 350 - 40 <= y0 <= 550 - 192 + 40 and 20 - 40 <= x0 <= 220 - 192 + 40, (y0, x0)


def test_the_region_stretches_along_the_long_side():
    """``region_long_side``: a landscape photo's region is ``region_size`` high and up to that wide, a portrait's
    the other way round, and on the busy part of the photo."""
    bd = BlindDeconvolution(**{**SMALL, "region_long_side": 288})
    photo = torch.full((3, 240, 576), 0.5)
    photo[:, 20:220, 300:560] = scene(seed=3, size=260)[:, :200]
    _, _, info = bd.estimate_kernel(photo)
    (y0, x0), = info["regions"]
    assert info["region_size"] == [192, 288]
    assert 300 - 48 <= x0 <= 560 - 288 + 48, x0
    _, _, info = bd.estimate_kernel(photo.transpose(1, 2))
    assert info["region_size"] == [288, 192]


def test_confidence_map_keeps_the_part_the_kernel_does_not_explain():
    """A subject moved (left half streaked), the background did not (right half sharp): the kernel is trusted on
    the left, not on the right. (At 30 degrees: this scene's
    edges are all horizontal or vertical, and a horizontal kernel's zeros fall where it has little power anyway,
    so a sharp tile scores 0.25-0.54 there, measured.)"""
    kernel = centre_crop(linear_kernel(15.0, math.radians(30)), 25)
    left = blur(scene(seed=12), kernel)
    right = (scene(seed=13) + 0.005 * torch.randn(3, 192, 192, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    photo = torch.cat([left, right], dim=-1)
    bd = BlindDeconvolution(**SMALL, gate_tile=96)
    conf = bd.confidence_map(photo, kernel)
    assert float(conf[:, :150].mean()) > 0.7 and float(conf[:, 234:].mean()) < 0.3, (conf[:, :150].mean(), conf[:, 234:].mean())


def test_tile_ranges_widen_for_long_kernels_only():
    """``tile_ratio_length``: a kernel shorter than it is gated exactly as without it; a longer one never gets less
    confidence, and on the sharp half of the photo (ratios ~0.3-0.6 here) it gets more."""
    kernel = centre_crop(linear_kernel(15.0, math.radians(30)), 25)
    left = blur(scene(seed=12), kernel)
    right = (scene(seed=13) + 0.005 * torch.randn(3, 192, 192, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    photo = torch.cat([left, right], dim=-1)
    maps = {length: BlindDeconvolution(**SMALL, gate_tile=96, tile_ratio_length=length).confidence_map(photo, kernel)
            for length in (None, 20.0, 5.0)}
    torch.testing.assert_close(maps[20.0], maps[None])
    assert bool((maps[5.0] >= maps[None] - 1e-6).all())
    assert float(maps[5.0][:, 234:].mean()) > float(maps[None][:, 234:].mean()) + 0.1


@pytest.mark.parametrize("shape", [(20, 300), (40, 64), (64, 300)])
def test_small_photos_get_a_kernel_smaller_than_themselves(shape):
    """The default settings (kernels up to 75 px) on photos narrower than the kernel: no error, a valid kernel."""
    photo = torch.nn.functional.interpolate(scene(seed=1)[None], size=shape, mode="bilinear")[0]
    out = BlindDeconvolution(kernel_sizes=(31, 75), iterations=2)(photo[None])
    assert out.image.shape == photo[None].shape and torch.isfinite(out.image).all()
    assert abs(float(out.kernels[0].sum()) - 1) < 1e-4


def test_motion_encoding_of_the_kernel_matches_the_simulator_encoding():
    """kernel_motion is a copy (the component file cannot import glow): it must agree with the original."""
    for kernel in (camera_shake_kernel(np.random.default_rng(0), extent=20.0)[0], linear_kernel(9.0, 1.0)):
        torch.testing.assert_close(kernel_motion(kernel), kernel_to_motion(kernel), rtol=1e-4, atol=1e-4)


def test_pipeline_motion_map_of_a_horizontal_blur_is_horizontal():
    pipe = build_pipeline("tiny")
    pipe.blind_deconvolution = BlindDeconvolution(**SMALL)
    blurry = blur(scene(seed=4), centre_crop(linear_kernel(15.0, 0.0), 25))
    out = pipe(blurry, output_type="pt", generator=torch.Generator().manual_seed(0))
    theta, d, length = motion_to_polar(out.motion_fields[0], dim=0)
    assert out.kernels[0].shape == (25, 25)
    assert float(d.mean()) > 0.6  # a streak, not a disk (drawn as a circle below 0.25)
    assert float(torch.minimum(theta, math.pi - theta).max()) < math.radians(10)  # horizontal
    assert abs(float(length.mean()) - 15.0) < 3.0
    off = pipe(blurry, output_type="pt", deconvolve=False, generator=torch.Generator().manual_seed(0))
    assert off.kernels is None


def test_pipeline_without_networks_returns_the_deconvolution_alone():
    """networks=False: the output is the component's own deconvolution (not the networks' result), with its kernel
    as the motion map; a sharp photo comes out as it went in; with deconvolve=False too there is nothing to do."""
    pipe = build_pipeline("tiny")
    pipe.blind_deconvolution = BlindDeconvolution(**SMALL)
    torch.nn.init.normal_(pipe.prereconstruction.ending.weight, std=0.05)  # networks that visibly change a photo
    blurry = blur(scene(seed=4), centre_crop(linear_kernel(15.0, 0.0), 25))
    alone = pipe(blurry, output_type="pt", networks=False)
    expected = pipe.blind_deconvolution(blurry[None])
    torch.testing.assert_close(alone.images[0], expected.image[0].clamp(0, 1), atol=1 / 255, rtol=0)
    torch.testing.assert_close(alone.kernels[0], expected.kernels[0])
    torch.testing.assert_close(alone.prereconstructions[0], alone.images[0])
    theta, _, length = motion_to_polar(alone.motion_fields[0], dim=0)
    assert abs(float(length.mean()) - 15.0) < 3.0 and float(torch.minimum(theta, math.pi - theta).max()) < 0.2
    with_networks = pipe(blurry, output_type="pt", generator=torch.Generator().manual_seed(0)).images[0]
    assert float((with_networks - alone.images[0]).abs().max()) > 0.05
    sharp = scene(seed=5)
    out = pipe(sharp, output_type="pt", networks=False)
    assert out.blur_confidences[0] == 0.0 and float((out.images[0] - sharp).abs().max()) <= 1 / 255
    with pytest.raises(ValueError, match="nothing to do"):
        pipe(blurry, networks=False, deconvolve=False)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "tiny", "huge"])
def test_pipeline_with_deconvolution_keeps_every_input_layout(mode):
    from PIL import Image

    pipe = build_pipeline("tiny")  # the tiny preset has a blind_deconvolution component
    rgb = (scene(seed=6, size=96).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    if mode == "L":
        image = Image.fromarray(rgb).convert("L")
    elif mode == "RGBA":
        image = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]), mode="RGBA")
    elif mode == "I;16":
        image = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # a uint16 array is mode I;16
    elif mode == "tiny":
        image = Image.fromarray(rgb[:3, :2])
    else:  # the whole photo is deconvolved in one FFT; the kernel search stays on one region
        image = Image.fromarray(np.tile(rgb, (14, 21, 1)))  # 1344 x 2016
    out = pipe(image, fidelity=1.0)
    assert out.images[0].size == image.size and out.images[0].mode == image.mode
    assert out.kernels[0].shape[-1] == pipe.blind_deconvolution.config.max_kernel_size
