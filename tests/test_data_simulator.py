"""BlurSimulator: every kind, odd sizes, gray/RGBA input, determinism, ground truth consistency."""
import math

import pytest
import torch

from glow.data import BLUR_KINDS, BlurSimulator, SimulatorConfig, kernel_to_motion, motion_to_polar
from glow.data.motion import KERNEL_SIZE


def _image(c=3, h=45, w=67, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(c, h // 4 + 1, w // 4 + 1, generator=g)
    return torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear")[0].clamp(0, 1)


@pytest.mark.parametrize("kind", BLUR_KINDS)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_every_kind_runs_on_odd_sizes_gray_and_rgba(kind, channels):
    img = _image(channels, 45, 67)
    s = BlurSimulator(seed=1)(img, kind=kind)
    assert set(s) == {"blurry", "sharp", "motion", "motion_valid", "kernel", "kernel_valid", "kinds", "text"}
    assert s["blurry"].shape == (3, 45, 67) and s["sharp"].shape == (3, 45, 67)
    assert s["motion"].shape == (3, 6, 9) and s["motion_valid"].shape == (1, 6, 9)
    assert s["kernel"].shape == (1, 2, KERNEL_SIZE, KERNEL_SIZE) and s["kernel_valid"].shape == (1, 2)
    for key in ("blurry", "sharp", "motion", "kernel"):
        assert torch.isfinite(s[key]).all()
    assert float(s["blurry"].min()) >= 0 and float(s["blurry"].max()) <= 1
    assert float(s["kernel"].min()) >= 0
    assert torch.allclose(s["kernel"].sum((-1, -2)), torch.ones(1, 2), atol=1e-4)
    assert s["kinds"][0] == kind and isinstance(s["text"], str) and s["text"]
    # the target is the clean input (gray repeated, alpha dropped)
    expected = img[:1].expand(3, -1, -1) if channels == 1 else img[:3]
    assert torch.equal(s["sharp"], expected)


def test_same_seed_same_sample_different_seed_different():
    img = _image(3, 64, 64)
    a = BlurSimulator(seed=5)(img)
    b = BlurSimulator(seed=5)(img)
    for key in ("blurry", "motion", "kernel"):
        assert torch.equal(a[key], b[key])
    assert a["kinds"] == b["kinds"] and a["text"] == b["text"]
    sim = BlurSimulator(seed=0)
    assert torch.equal(sim(img, seed=11)["blurry"], sim(img, seed=11)["blurry"])  # per-call seed
    c = BlurSimulator(seed=6)(img)
    assert not torch.equal(a["blurry"], c["blurry"])


def test_global_blur_truth_matches_its_kernel_and_no_noise_config_is_exact_blur():
    quiet = SimulatorConfig(p_noise=0, p_low_light=0, p_bayer=0, p_jpeg=0, p_highlights=0, p_combine=0,
                            p_srgb_curve=1.0)
    img = _image(3, 64, 96)
    s = BlurSimulator(quiet, seed=2)(img, kind="linear_motion")
    k = s["kernel"][0, 0]
    assert torch.equal(s["kernel"][0, 1], k)  # global: one PSF everywhere
    expected = kernel_to_motion(k)
    assert torch.allclose(s["motion"], expected.view(3, 1, 1).expand(3, 8, 12))
    theta, d, length = motion_to_polar(expected)
    assert float(d) > 0.9 and 3 <= float(length) <= 62
    # blurry = sRGB(k * linear(sharp)) exactly when every camera step is off
    from glow.data.camera import linear_to_srgb, srgb_to_linear
    from glow.data.kernels import convolve

    assert torch.allclose(s["blurry"], linear_to_srgb(convolve(srgb_to_linear(img), k)).clamp(0, 1), atol=1e-5)
    direction = "horizontal" if abs(math.cos(float(theta))) > 0.92 else "vertical" if abs(
        math.sin(float(theta))) > 0.92 else "diagonal"
    assert direction in s["text"] and "linear motion" in s["text"]


def test_camera_steps_are_reported_in_kinds_and_text():
    loud = SimulatorConfig(p_noise=1, p_low_light=1, p_jpeg=1, p_highlights=1, p_bayer=1)
    s = BlurSimulator(loud, seed=3)(_image(3, 40, 40), kind="defocus")
    for tag in ("noise", "low_light", "jpeg", "saturated_highlights", "bayer"):
        assert tag in s["kinds"]
    for words in ("low light", "JPEG", "saturated highlights"):
        assert words in s["text"]


def test_object_motion_truth_follows_the_object():
    torch.manual_seed(0)
    sim = BlurSimulator(SimulatorConfig(max_objects=1), seed=4)
    found = False
    for seed in range(6):
        s = sim(_image(3, 128, 128, seed), seed=seed, kind="object_motion")
        lengths = s["motion"][2]
        if float(lengths.max() - lengths.min()) > 2:  # object and background differ
            found = True
            break
    assert found


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        BlurSimulator({"kind_weights": {"warp_drive": 1.0}})
    with pytest.raises(ValueError):
        BlurSimulator(seed=0)(_image(), kind="warp_drive")


def test_every_ground_truth_kernel_is_centred_including_combined_ones():
    sim = BlurSimulator(SimulatorConfig(p_combine=1.0), seed=9)
    idx = torch.arange(KERNEL_SIZE, dtype=torch.float32)
    c = (KERNEL_SIZE - 1) / 2
    combined = 0
    for seed, kind in enumerate(list(BLUR_KINDS) * 2):
        s = sim(_image(3, 70, 70, seed), seed=seed, kind=kind)
        combined += "combined" in s["kinds"]
        k = s["kernel"].reshape(-1, KERNEL_SIZE, KERNEL_SIZE)
        cx = (k.sum(1) * idx).sum(-1)
        cy = (k.sum(2) * idx).sum(-1)
        assert (cx - c).abs().max() < 1e-3 and (cy - c).abs().max() < 1e-3, kind
    assert combined >= 2


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (2, 70)])
def test_tiny_images_work_with_every_camera_step(size):
    loud = SimulatorConfig(p_noise=1, p_low_light=1, p_jpeg=1, p_highlights=1, p_bayer=1, p_combine=1)
    sim = BlurSimulator(loud, seed=0)
    for kind in BLUR_KINDS:
        s = sim(torch.rand(3, *size), kind=kind)
        assert s["blurry"].shape == (3, *size) and torch.isfinite(s["blurry"]).all()
        assert s["motion"].shape == (3, 1, math.ceil(size[1] / 8))
