"""--deconvolved_inputs: the networks train on what the pipeline's blind deconvolution leaves (glow/training/deconvolved.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from glow.data import BlurSimulator, collate
from glow.data.batched import render_pending
from glow.data.kernels import linear_kernel
from glow.metrics import psnr
from glow.models.blind_deconvolution import BlindDeconvolution
from glow.training.deconvolved import deconvolve_inputs, perturb_kernel

ROOT = Path(__file__).resolve().parents[1]


def _scene(seed=0, size=96):
    g = torch.Generator().manual_seed(seed)
    img = F.interpolate(torch.rand(1, 3, size // 8, size // 8, generator=g), size=(size, size), mode="nearest")[0]
    return F.avg_pool2d(img[None], 3, 1, 1)[0]  # flat patches with edges: blur shows, deconvolution can undo it


def test_perturbed_kernel_is_a_thicker_nearby_psf():
    kernel = linear_kernel(21.0, 0.3)
    moved = [perturb_kernel(kernel, torch.Generator().manual_seed(s)) for s in range(8)]
    for k in moved:
        assert k.shape == kernel.shape and float(k.min()) >= 0 and abs(float(k.sum()) - 1) < 1e-5
        assert (k > 1e-4).sum() >= (kernel > 1e-4).sum() * 0.8  # never much thinner
        assert float((k * kernel).sum()) > 0  # overlaps the truth
    assert any(not torch.allclose(a, b) for a, b in zip(moved, moved[1:]))


def test_deconvolved_rows_come_closer_to_sharp_and_others_are_left_alone():
    sim = BlurSimulator({"kind_weights": {"linear_motion": 1.0}, "linear_length": [9, 13], "p_noise": 0.0,
                         "p_jpeg": 0.0, "p_bayer": 0.0, "p_highlights": 0.0, "p_low_light": 0.0,
                         "p_combine": 0.0}, seed=0)
    samples = [sim(_scene(i), seed=i, defer=True) for i in range(4)]
    batch = collate(samples + [{k: v for k, v in sim(_scene(9), seed=9).items()}])  # the last: rendered, no recipe
    render_pending(batch, torch.Generator().manual_seed(0))
    before = batch["blurry"].clone()
    done = deconvolve_inputs(batch, BlindDeconvolution(), 1.0, torch.Generator().manual_seed(0))
    assert done == 4
    assert torch.equal(batch["blurry"][4], before[4])
    gains = [psnr(batch["blurry"][i], batch["sharp"][i]) - psnr(before[i], batch["sharp"][i]) for i in range(4)]
    assert float(np.mean(gains)) > 0.5, gains


def test_training_with_deconvolved_inputs_runs_and_validates_with_the_deconvolution(tmp_path):
    rng = np.random.default_rng(0)
    sharp = tmp_path / "sharp"
    sharp.mkdir()
    for i in range(4):
        img = (np.kron(rng.random((12, 12, 3)), np.ones((8, 8, 1))) * 255).astype(np.uint8)
        Image.fromarray(img).save(sharp / f"{i}.png")
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "train/bpp.py", "--preset", "tiny", "--resolution", "64", "--train_batch_size", "2",
           "--train_data_dir", str(sharp), "--validation_data_dir", str(sharp), "--num_validation_images", "1",
           "--validation_resolution", "64", "--output_dir", str(out), "--max_train_steps", "2", "--logging_steps", "1",
           "--render_on_device", "--deconvolved_inputs", "1.0", "--simulator_config",
           json.dumps({"kind_weights": {"camera_shake": 1.0}})]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss/total" in r] == [1, 2]
    assert any("val/pipeline_psnr" in r for r in log)
    refused = subprocess.run(cmd[:-4] + ["--no-render_on_device", "--deconvolved_inputs", "0.5"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "needs --render_on_device" in refused.stderr


def test_make_deconvolved_pairs_caches_the_estimators_output_as_a_paired_folder(tmp_path):
    """train/make_deconvolved_pairs.py: simulated photos, frame averages and real pairs, each deconvolved by the
    shipped BlindDeconvolution, written as blur/ + sharp/ that PairedFolderDataset reads; an unreadable pair is reported
    and skipped; a rerun makes nothing new."""
    from glow.data import PairedFolderDataset

    rng = np.random.default_rng(0)
    sharp, clip, pairs = tmp_path / "sharp", tmp_path / "clip", tmp_path / "pairs"
    for d in (sharp, clip, pairs / "blur", pairs / "sharp"):
        d.mkdir(parents=True)
    for i in range(3):
        img = (np.kron(rng.random((12, 12, 3)), np.ones((8, 8, 1))) * 255).astype(np.uint8)
        Image.fromarray(img).save(sharp / f"{i}.png")
    scene = (np.kron(rng.random((10, 14, 3)), np.ones((8, 8, 1))) * 255).astype(np.uint8)
    for i in range(8):  # a pan: each frame shifted by one more pixel
        Image.fromarray(np.roll(scene, i, axis=1)).save(clip / f"{i:03d}.png")
    Image.fromarray(scene).save(pairs / "sharp" / "a.png")
    Image.fromarray(np.roll(scene, 2, axis=1)).save(pairs / "blur" / "a.png")
    for side in ("blur", "sharp"):  # a truncated download
        (pairs / side / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "train" / "make_deconvolved_pairs.py"),
           "--model", str(ROOT / "glow" / "default_model"),
           "--output_dir", str(out), "--sharp_data_dir", str(sharp), "--num_sharp", "2", "--crop", "80",
           "--frames_data_dir", str(clip), "--num_frames", "2", "--holdout", "2", "--pairs_data_dir", str(pairs),
           "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "skipped pair_pairs_b" in run.stdout
    names = sorted(p.name for p in (out / "blur").iterdir())
    assert names == sorted(p.name for p in (out / "sharp").iterdir())
    assert len(names) == 5 and sum(n.startswith("frames_") for n in names) == 2 and "pair_pairs_a.png" in names
    records = [json.loads(line) for line in open(out / "estimates-0.jsonl")]
    assert len(records) == 5 and all(0.0 <= r["confidence"] <= 1.0 for r in records)
    for name in names:  # the deconvolved photo keeps its target's size (frames: full 80x112)
        assert Image.open(out / "blur" / name).size == Image.open(out / "sharp" / name).size
    assert Image.open(out / "sharp" / "frames_clip_00000.png").size == (112, 80)
    dataset = PairedFolderDataset(out, resolution=64)
    assert dataset.layout == "folders" and len(dataset) == 5 and dataset[0]["blurry"].shape == (3, 64, 64)
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    # everything readable exists: nothing is redone, and the unreadable pair is reported again
    skipped = [line for line in run.stdout.splitlines() if line.startswith("skipped")]
    assert rerun.returncode == 0 and rerun.stdout.splitlines() == skipped
    assert len(open(out / "estimates-0.jsonl").read().splitlines()) == 5
