"""glow.metrics against known values and scikit-image, and train/evaluate.py end to end on tiny folders."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from glow import metrics

ROOT = Path(__file__).resolve().parents[1]


def _smooth_image(seed=0, size=(96, 96)):
    rng = np.random.default_rng(seed)
    image = gaussian_filter(rng.random((*size, 3)), (2, 2, 0))
    return ((image - image.min()) / (image.max() - image.min()) * 255 + 0.5).astype(np.uint8)


def test_identical_images_give_inf_psnr_and_unit_ssim():
    image = _smooth_image()
    assert metrics.psnr(image, image) == math.inf
    assert metrics.ssim(image, image) == pytest.approx(1.0)
    assert metrics.realblur_psnr_ssim(image, image)[1] == pytest.approx(1.0, abs=1e-6)


def test_known_mse_gives_known_psnr():
    target = np.full((16, 16, 3), 100, np.uint8)
    output = target.copy()
    output[::2] += 10  # half the pixels off by 10 -> MSE 50
    assert metrics.psnr(output, target) == pytest.approx(10 * math.log10(255**2 / 50.0), abs=1e-9)


def test_psnr_ssim_match_skimage_and_accept_tensors_and_pil():
    target, output = _smooth_image(0), _smooth_image(1)
    assert metrics.psnr(output, target) == pytest.approx(peak_signal_noise_ratio(target, output, data_range=255))
    expected = structural_similarity(target, output, channel_axis=-1, data_range=255)
    assert metrics.ssim(output, target) == pytest.approx(expected)
    as_tensor = torch.from_numpy(output).permute(2, 0, 1).float() / 255.0  # [3,H,W] in [0,1] round-trips exactly
    assert metrics.psnr(as_tensor, Image.fromarray(target)) == pytest.approx(metrics.psnr(output, target))
    assert metrics.batch_psnr(as_tensor[None], torch.from_numpy(target).permute(2, 0, 1)[None] / 255.0) == [
        pytest.approx(metrics.psnr(output, target))
    ]
    with pytest.raises(ValueError, match="differ in size"):
        metrics.psnr(output[:10], target)


def test_blur_effect_is_lower_for_sharper_images():
    rng = np.random.default_rng(0)
    sharp = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    blurry = gaussian_filter(sharp.astype(float), (2, 2, 0)).astype(np.uint8)
    assert metrics.blur_effect(sharp) < metrics.blur_effect(blurry)


@pytest.mark.parametrize("dy,dx", [(3, -2), (-4, 5)])
def test_realblur_alignment_recovers_an_integer_shift(dy, dx):
    big = _smooth_image(2, (140, 140))
    target = big[20:116, 20:116]
    output = big[20 - dy : 116 - dy, 20 - dx : 116 - dx]  # output(y, x) = target(y - dy, x - dx)
    aligned, masked_target, mask, warp = metrics.realblur_align(output, target)
    # The warp maps target coordinates into the output image: the centre moves by (dx, dy).
    centre = warp @ np.array([48.0, 48.0, 1.0])
    centre = centre[:2] / centre[2]
    assert centre == pytest.approx([48.0 + dx, 48.0 + dy], abs=0.15)
    assert mask.min() == 0 and mask.mean() > 0.8  # the border the shift uncovers is masked out
    unaligned = metrics.psnr(output, target)
    aligned_psnr, aligned_ssim = metrics.realblur_psnr_ssim(output, target)
    assert aligned_psnr > max(28.0, unaligned + 10) and aligned_ssim > 0.97
