"""Rendering deferred simulator samples a batch at once (glow.data.batched) against the per-sample CPU simulator."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from glow.data import BlurSimulator, SharpFolderDataset, collate
from glow.data.batched import RECIPE_FIELDS, jpeg_batch, render_batch, render_pending
from glow.data.camera import jpeg_compress
from glow.metrics import psnr


def _image(seed=0, h=64, w=72):
    g = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.rand(1, 3, h, w, generator=g), 3, 1, 1)[0]


def _pairs(config, count):
    sim, img = BlurSimulator(config, seed=0), _image()
    direct, deferred = [], []
    for seed in range(count):
        a, b = sim(img, seed=seed), sim(img, seed=seed, defer=True)
        assert a["text"] == b["text"] and torch.equal(a["kernel"], b["kernel"]) and a["kinds"] == b["kinds"]
        if "recipe" in b:
            direct.append(a)
            deferred.append(b)
    return direct, collate(deferred)


def test_deferred_rendering_equals_the_simulator_without_noise_and_jpeg():
    # every global kind, "none", rotation and zoom; highlights, Bayer + white balance, both tone curves
    direct, batch = _pairs({"p_noise": 0.0, "p_low_light": 0.0, "p_jpeg": 0.0, "p_bayer": 0.5, "p_highlights": 0.5},
                           80)
    assert len(direct) > 20 and bool(batch["recipe_pending"].all())
    kinds = {s["kinds"][0] for s in direct}
    assert {"camera_shake", "linear_motion", "defocus", "gaussian", "rotation", "zoom"} <= kinds
    assert torch.equal(batch["blurry"], batch["sharp"])  # nothing rendered in the worker
    out = render_batch(batch["sharp"], batch["recipe_kernel"], batch["recipe"])
    assert (out - torch.stack([s["blurry"] for s in direct])).abs().max() < 1e-5


def test_deferred_noise_has_the_simulators_strength():
    direct, batch = _pairs({"p_noise": 1.0, "p_low_light": 0.3, "p_jpeg": 0.0, "p_bayer": 0.3}, 40)
    quiet = batch["recipe"].clone()  # the same recipes with the noise off and normal exposure
    quiet[:, RECIPE_FIELDS.index("noise")] = 0.0
    quiet[:, RECIPE_FIELDS.index("exposure")] = 1.0
    clean = render_batch(batch["sharp"], batch["recipe_kernel"], quiet)
    noisy = render_batch(batch["sharp"], batch["recipe_kernel"], batch["recipe"], torch.Generator().manual_seed(1))
    cpu_noise = torch.stack([(s["blurry"] - c).std() for s, c in zip(direct, clean)])
    ratio = (noisy - clean).flatten(1).std(dim=1) / cpu_noise
    assert 0.85 < float(ratio.median()) < 1.15 and float((ratio - 1).abs().max()) < 0.5


@pytest.mark.parametrize("quality", [40, 75, 95])
def test_torch_jpeg_matches_pillows_error(quality):
    x = F.interpolate(torch.rand(1, 3, 24, 26, generator=torch.Generator().manual_seed(quality)), size=(101, 90),
                      mode="bicubic").clamp(0, 1)[0]  # odd size: padded to whole 16 px blocks and cropped back
    ours, pillows = jpeg_batch(x[None], torch.tensor([quality]))[0], jpeg_compress(x, quality)
    assert ours.shape == x.shape
    assert psnr(ours, pillows) > 35
    assert abs(psnr(ours, x) - psnr(pillows, x)) < 0.3
    assert torch.equal(ours, torch.round(ours * 255) / 255)  # 8-bit levels like a decoded file


def test_dataset_renders_spatial_kinds_itself_and_collate_fills_idle_recipes(tmp_path):
    Image.fromarray((np.random.default_rng(0).random((80, 90, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    spatial = SharpFolderDataset(tmp_path, resolution=64, render_on_device=True,
                                 simulator={"kind_weights": {"object_motion": 1.0}}, length=2)
    shake = SharpFolderDataset(tmp_path, resolution=64, render_on_device=True,
                               simulator={"kind_weights": {"camera_shake": 1.0}}, length=2)
    plain = SharpFolderDataset(tmp_path, resolution=64, simulator={"kind_weights": {"camera_shake": 1.0}}, length=2)
    a, b, c = spatial[0], shake[0], plain[0]
    assert not torch.equal(a["blurry"], a["sharp"]) and torch.equal(b["blurry"], b["sharp"]) and "recipe" not in c
    batch = collate([a, b, c])
    assert batch["recipe_pending"].tolist() == [False, True, False]
    before = batch["blurry"].clone()
    render_pending(batch, torch.Generator().manual_seed(0))
    assert torch.equal(batch["blurry"][0], before[0]) and torch.equal(batch["blurry"][2], before[2])
    assert psnr(batch["blurry"][1], batch["sharp"][1]) < 40  # now blurred


def test_each_row_takes_only_its_own_camera_path():
    """A batch mixing Bayer / RGB rows and JPEG / no JPEG renders each row as that row alone would be rendered
    (each path runs on its rows only)."""
    index = {name: i for i, name in enumerate(RECIPE_FIELDS)}
    n = 4
    recipe = torch.zeros(n, len(RECIPE_FIELDS), dtype=torch.float64)
    for name, value in (("pending", 1), ("srgb", 1), ("gamma", 2.2), ("highlight_threshold", 1),
                        ("highlight_gain", 1), ("exposure", 1.5), ("gain_r", 1.2), ("gain_g", 1), ("gain_b", 1.4)):
        recipe[:, index[name]] = value
    recipe[:, index["bayer"]] = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    recipe[:, index["jpeg_quality"]] = torch.tensor([0.0, 0.0, 75.0, 90.0], dtype=torch.float64)
    sharp = torch.rand(n, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    kernels = torch.zeros(n, 7, 7)
    kernels[:, 3, 1:6] = 0.2
    batch = render_batch(sharp, kernels, recipe)
    alone = torch.cat([render_batch(sharp[i : i + 1], kernels[i : i + 1], recipe[i : i + 1]) for i in range(n)])
    assert torch.allclose(batch, alone, atol=1e-6)
    flipped = recipe.clone()
    flipped[:, index["bayer"]] = 1 - flipped[:, index["bayer"]]
    assert (render_batch(sharp, kernels, flipped) - batch).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # each path counts
