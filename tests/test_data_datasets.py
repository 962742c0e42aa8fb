"""Datasets on tiny folders made inside the tests: sharp folders, paired layouts, frame averaging, mixing."""
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from glow.data import (FrameFolderDataset, MixedDataset, PairedFolderDataset, SharpFolderDataset, SimulatorConfig,
                       collate)
from glow.data.camera import linear_to_srgb, srgb_to_linear
from glow.data.datasets import unsharp_mask
from glow.data.paired import detect_layout

KEYS = {"blurry", "sharp", "motion", "motion_valid", "kernel", "kernel_valid", "kinds", "text"}
FAST = SimulatorConfig(kind_weights={"camera_shake": 1, "linear_motion": 1, "defocus": 1, "object_motion": 1})


def _save(path: Path, h=40, w=56, seed=0, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return arr


def _sharp_folder(tmp_path):
    root = tmp_path / "sharp"
    _save(root / "a" / "one.png", 50, 60, 1)
    _save(root / "b" / "deep" / "two.jpg", 64, 48, 2)
    _save(root / "tiny.png", 9, 13, 3)  # far smaller than the crop: upscaled
    _save(root / "small.png", 24, 30, 4, mode="L")  # a bit smaller: reflect padded
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    (root / "notes.txt").write_text("ignored")
    return root


def test_sharp_folder_skips_corrupt_files_and_keeps_tiny_images(tmp_path):
    root = _sharp_folder(tmp_path)
    ds = SharpFolderDataset(root, resolution=32, simulator=FAST, seed=0)
    assert len(ds) == 5  # four images + the corrupt one (skipped at read time)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]
    messages = [str(w.message) for w in caught if "broken.jpg" in str(w.message)]
    assert len(messages) == 1  # warned once, never crashed
    for s in samples:
        assert set(s) == KEYS
        assert s["blurry"].shape == (3, 32, 32) and s["sharp"].shape == (3, 32, 32)
        assert s["motion"].shape == (3, 4, 4) and s["kernel"].shape == (1, 1, 75, 75)


def test_sharp_folder_is_deterministic_per_seed_epoch_index(tmp_path):
    root = _sharp_folder(tmp_path)
    a = SharpFolderDataset(root, resolution=32, simulator=FAST, seed=7)
    b = SharpFolderDataset(root, resolution=32, simulator=FAST, seed=7)
    assert torch.equal(a[1]["blurry"], b[1]["blurry"]) and torch.equal(a[1]["sharp"], b[1]["sharp"])
    assert torch.equal(a[1]["blurry"], a[1]["blurry"])  # order of access does not matter
    first = a[1]["blurry"]
    a.set_epoch(1)
    assert not torch.equal(first, a[1]["blurry"])
    c = SharpFolderDataset(root, resolution=32, simulator=FAST, seed=8)
    assert not torch.equal(first, c[1]["blurry"])


def test_dataloader_and_collate(tmp_path):
    ds = SharpFolderDataset(_sharp_folder(tmp_path), resolution=32, simulator=FAST, seed=0, length=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert batch["blurry"].shape == (3, 3, 32, 32) and batch["kernel"].shape == (3, 1, 1, 75, 75)
    assert isinstance(batch["kinds"], list) and all(isinstance(k, list) for k in batch["kinds"])
    assert isinstance(batch["text"], list) and len(batch["text"]) == 3


def _pair(blur: Path, sharp: Path, seed: int):
    arr = _save(sharp, 36, 44, seed)
    _save(blur, 36, 44, seed + 100)
    return arr


@pytest.mark.parametrize("layout", ["folders", "gopro", "gopro_gamma", "bsd", "realblur", "rsblur", "rsblur_dirs"])
def test_paired_layouts_are_detected_and_read(tmp_path, layout):
    root = tmp_path / layout
    if layout == "folders":
        _pair(root / "blur" / "x.png", root / "sharp" / "x.png", 1)
    elif layout in ("gopro", "gopro_gamma"):
        name = "blur" if layout == "gopro" else "blur_gamma"
        _pair(root / "GOPR0001" / name / "000001.png", root / "GOPR0001" / "sharp" / "000001.png", 1)
        _pair(root / "GOPR0002" / name / "000001.png", root / "GOPR0002" / "sharp" / "000001.png", 2)
    elif layout == "bsd":
        _pair(root / "000" / "Blur" / "RGB" / "00000000.png", root / "000" / "Sharp" / "RGB" / "00000000.png", 1)
    elif layout == "realblur":
        _pair(root / "RealBlur-J" / "scene001" / "blur" / "blur_1.png",
              root / "RealBlur-J" / "scene001" / "gt" / "gt_1.png", 1)
        (root / "RealBlur_J_train_list.txt").write_text(
            "RealBlur-J/scene001/gt/gt_1.png RealBlur-J/scene001/blur/blur_1.png\n")
    elif layout == "rsblur":
        _pair(root / "RSBlur" / "0001" / "000001" / "real_blur" / "real_blur.png",
              root / "RSBlur" / "0001" / "000001" / "gt" / "gt_sharp.png", 1)
        (root / "RSBlur_real_train.txt").write_text(
            "RSBlur/0001/000001/gt/gt_sharp.png RSBlur/0001/000001/real_blur/real_blur.png\n")
    else:
        scene = root / "0001" / "000001"
        _pair(scene / "real_blur" / "real_blur.png", scene / "gt" / "gt_sharp.png", 1)
    expected = {"rsblur_dirs": "rsblur"}.get(layout, layout)
    assert detect_layout(root) == expected
    ds = PairedFolderDataset(root, resolution=None, augment=False)
    s = ds[0]
    assert set(s) == KEYS and s["kinds"] == ["real_pair", expected] and s["text"] == ""
    assert float(s["motion_valid"].sum()) == 0 and float(s["kernel_valid"].sum()) == 0
    sharp = torch.from_numpy(_save(tmp_path / "ref.png", 36, 44, 1)).permute(2, 0, 1).float() / 255
    assert torch.allclose(s["sharp"], sharp)
    assert not torch.allclose(s["blurry"], sharp)
    cropped = PairedFolderDataset(root, resolution=(16, 24))[0]
    assert cropped["blurry"].shape[-2:] in ((16, 24), (24, 16))


def test_unknown_layout_has_a_clear_error(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError, match="Cannot detect the paired layout"):
        detect_layout(tmp_path)


def _frames(root: Path, n=20, h=24, w=32):
    frames = []
    for i in range(n):
        frames.append(_save(root / f"{i + 1:06d}.png", h, w, seed=i))
    return frames


def test_frame_averaging_is_the_mean_in_linear_light(tmp_path):
    frames = _frames(tmp_path / "seq", n=5)
    ds = FrameFolderDataset(tmp_path / "seq", k_range=(5, 5), resolution=None, augment=False)
    s = ds[0]
    stack = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in frames])
    expected = linear_to_srgb(srgb_to_linear(stack).mean(0))
    assert torch.allclose(s["blurry"], expected, atol=1e-5)
    assert torch.allclose(s["sharp"], stack[2])  # the middle frame
    assert not torch.allclose(s["blurry"], stack.mean(0), atol=1e-3)  # not the naive sRGB mean
    assert s["kinds"] == ["frame_averaging"] and float(s["motion_valid"].sum()) == 0


def test_frame_splits_exclude_validation_frames(tmp_path):
    _frames(tmp_path / "seq", n=20)
    train = FrameFolderDataset.train_split(tmp_path / "seq", holdout=6, k_range=(3, 5), resolution=16)
    val = FrameFolderDataset.val_split(tmp_path / "seq", holdout=6, k_range=(3, 3), resolution=16)
    assert [p.name for p in train.files] == [f"{i:06d}.png" for i in range(1, 15)]
    assert [p.name for p in val.files] == [f"{i:06d}.png" for i in range(15, 21)]
    assert len(val) == 2
    first = val[1]["blurry"]
    val.set_epoch(3)
    assert torch.equal(first, val[1]["blurry"])  # validation does not depend on the epoch
    s = train[0]
    assert s["blurry"].shape == (3, 16, 16) and set(s) == KEYS


def test_mixed_dataset_honours_ratios_and_is_reproducible(tmp_path):
    pairs_root = tmp_path / "pairs"
    for i in range(3):
        _pair(pairs_root / "blur" / f"{i}.png", pairs_root / "sharp" / f"{i}.png", i)
    pairs = PairedFolderDataset(pairs_root, resolution=16)
    sim = SharpFolderDataset(_sharp_folder(tmp_path), resolution=16, simulator=FAST)
    mixed = MixedDataset({"sim": sim, "real": pairs}, {"sim": 0.75, "real": 0.25}, length=4000, seed=3)
    counts = Counter(mixed.source_of(i)[0] for i in range(len(mixed)))
    assert abs(counts["sim"] / 4000 - 0.75) < 0.03
    order = [mixed.source_of(i) for i in range(20)]
    assert order == [MixedDataset({"sim": sim, "real": pairs}, {"sim": 0.75, "real": 0.25}, length=4000,
                                  seed=3).source_of(i) for i in range(20)]
    mixed.set_epoch(1)
    assert [mixed.source_of(i) for i in range(20)] != order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real_index = next(i for i in range(50) if mixed.source_of(i)[0] == "real")
        s = mixed[real_index]
        assert s["kinds"][0] == "real_pair" and torch.equal(s["blurry"], mixed[real_index]["blurry"])
        batch = collate([mixed[i] for i in range(4)])
    assert batch["blurry"].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError):
        MixedDataset({"sim": sim}, {"nope": 1.0})


def _high_frequency_share(x):
    spectrum = torch.fft.fft2(x.mean(0) - x.mean()).abs() ** 2
    fy, fx = torch.fft.fftfreq(x.shape[-2]).view(-1, 1), torch.fft.fftfreq(x.shape[-1]).view(1, -1)
    r = (fx**2 + fy**2).sqrt()
    return float(spectrum[r > 0.3].sum() / spectrum[r > 0.05].sum())


def test_sharpen_probability_gives_crisper_targets_and_unsharp_mask_keeps_flat_areas(tmp_path):
    # a soft photo (smoothed noise, like the RealSR / DRealSR crops); the sharp target is what gets crisper
    soft = np.random.default_rng(0).integers(0, 256, (96, 96, 3)).astype(np.float32)
    soft = torch.nn.functional.avg_pool2d(torch.from_numpy(soft).permute(2, 0, 1)[None], 3, 1, 1)[0]
    Image.fromarray(soft.permute(1, 2, 0).round().clamp(0, 255).byte().numpy()).save(tmp_path / "soft.png")
    plain = SharpFolderDataset(tmp_path, resolution=64, simulator=FAST, seed=0, length=8, scale_range=None)
    crisp = SharpFolderDataset(tmp_path, resolution=64, simulator=FAST, seed=0, length=8, scale_range=None,
                               sharpen_probability=1.0)
    before = [_high_frequency_share(plain[i]["sharp"]) for i in range(8)]
    after = [_high_frequency_share(crisp[i]["sharp"]) for i in range(8)]
    gains = [a / b for a, b in zip(after, before)]
    assert min(gains) > 1.15 and np.mean(gains) > 1.5
    assert torch.equal(crisp[3]["sharp"], crisp[3]["sharp"])  # still deterministic per index
    flat = torch.full((3, 20, 20), 0.4)
    assert torch.allclose(unsharp_mask(flat, sigma=1.0, amount=1.5), flat, atol=1e-6)
