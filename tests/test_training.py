"""Training scripts end to end: tiny preset, tiny data made here, the scripts run as real subprocesses."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--preset", "tiny", "--resolution", "64", "--train_batch_size", "2", "--logging_steps", "1",
          "--validation_resolution", "64", "--num_validation_images", "2", "--lr_warmup_steps", "1",
          "--learning_rate", "1e-3"]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    return env


def run(args, timeout=240, launcher=None):
    cmd = (launcher or [sys.executable]) + args
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def read_log(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "logs" / "train_log.jsonl").read_text().splitlines()]


def losses_by_step(out_dir):
    return {r["step"]: r["loss/total"] for r in read_log(out_dir) if "loss/total" in r}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Sharp images (incl. a grayscale and a corrupt file), a frame clip, a paired folder, validation images."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)

    def photo(h, w):  # smooth shapes + texture, so blur is visible
        y, x = np.mgrid[:h, :w]
        img = np.stack([np.sin(x / (5 + 3 * c)) * np.cos(y / (7 + c)) for c in range(3)], -1) * 0.4 + 0.5
        img[(x // 16 + y // 16) % 2 == 0] *= 0.6
        return (np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1) * 255).astype(np.uint8)

    sharp = root / "sharp" / "set_a"
    sharp.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(photo(96 + 8 * i, 128)).save(sharp / f"img{i}.jpg", quality=95)
    Image.fromarray(photo(100, 100)[..., 0]).save(sharp / "gray.png")
    (sharp / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    clip = root / "frames" / "clip0"
    clip.mkdir(parents=True)
    base = photo(80, 160)
    for i in range(24):
        Image.fromarray(np.roll(base, 2 * i, axis=1)).save(clip / f"{i:06d}.png")
    pairs = root / "pairs"
    for sub in ("blur", "sharp"):
        (pairs / sub).mkdir(parents=True)
    for i in range(3):
        s = photo(72, 96)
        b = (0.5 * s.astype(np.float32) + 0.5 * np.roll(s, 3, axis=1)).astype(np.uint8)
        Image.fromarray(s).save(pairs / "sharp" / f"p{i}.png")
        Image.fromarray(b).save(pairs / "blur" / f"p{i}.png")
    val = root / "val"
    val.mkdir()
    for i in range(2):
        Image.fromarray(photo(70, 90)).save(val / f"v{i}.png")
    return root


def bpp_args(data, out, steps, extra=()):
    return [str(ROOT / "train" / "bpp.py"), *COMMON, "--train_data_dir", str(data / "sharp"),
            "--frames_data_dir", str(data / "frames"), "--val_frames_holdout", "6",
            "--validation_data_dir", str(data / "val"), "--output_dir", str(out), "--max_train_steps", str(steps),
            *extra]


@pytest.fixture(scope="module")
def bpp_run(data, tmp_path_factory):
    """An uninterrupted 4-step BPP run (diffusion loss on from step 2), checkpoints at 2 and 4, Hub dry run."""
    out = tmp_path_factory.mktemp("bpp")
    run(bpp_args(data, out, 4, ["--checkpointing_steps", "2", "--checkpoints_total_limit", "3",
                                "--diffusion_start_step", "1", "--validation_steps", "4", "--hub_dry_run",
                                "--hub_model_id", "someone/glowdeblur-test", "--dataloader_num_workers", "1"]))
    return out


def test_bpp_run_writes_checkpoints_log_and_pipeline(bpp_run):
    steps = losses_by_step(bpp_run)
    assert sorted(steps) == [1, 2, 3, 4] and all(np.isfinite(v) for v in steps.values())
    records = read_log(bpp_run)
    assert any("loss/diffusion" in r for r in records if r.get("step") == 2)  # --diffusion_start_step 1
    assert not any("loss/diffusion" in r for r in records if r.get("step") == 1)
    assert sorted(p.name for p in bpp_run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    ckpt = bpp_run / "checkpoint-4"
    for name in ("model.safetensors", "ema_model.safetensors", "optimizer.bin", "scheduler.bin", "trainer_state.json"):
        assert (ckpt / name).is_file(), name
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 4
    assert list((bpp_run / "validation").glob("step-0000004.png"))
    # the exported pipeline holds the EMA weights, not the raw ones
    from safetensors.torch import load_file

    ema = load_file(str(ckpt / "ema_model.safetensors"))
    raw = load_file(str(ckpt / "model.safetensors"))
    exported = load_file(str(bpp_run / "pipeline" / "prereconstruction" / "diffusion_pytorch_model.safetensors"))
    name = next(k for k in exported if k.endswith("weight") and exported[k].numel() > 100)
    assert torch.equal(exported[name], ema[f"prereconstruction.{name}"])
    assert not torch.equal(exported[name], raw[f"prereconstruction.{name}"])


def test_exported_pipeline_loads_with_trust_remote_code_and_deblurs(bpp_run):
    code = (
        "import sys, torch, numpy as np\n"
        "from diffusers import DiffusionPipeline\n"
        f"pipe = DiffusionPipeline.from_pretrained({str(bpp_run / 'pipeline')!r}, trust_remote_code=True)\n"
        "img = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(0))\n"
        "out = pipe(img, output_type='np').images[0]\n"
        "assert out.shape == (50, 70, 3) and np.isfinite(out).all(), out.shape\n"
        "print('OK', type(pipe).__module__)\n"
    )
    # run outside the repo, without glow importable: the folder must be self-contained
    env = _env()
    env.pop("PYTHONPATH")
    proc = subprocess.run([sys.executable, "-c", code], cwd=bpp_run, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    card = (bpp_run / "pipeline" / "README.md").read_text()
    assert "**Weights:** BPP: 4 steps (EMA weights), preset tiny" in card and "library_name: diffusers" in card


def test_hub_dry_run_folder_has_model_card_with_measured_metrics(bpp_run):
    plan = json.loads((bpp_run / "hub_dry_run.json").read_text())
    assert plan["repo_id"] == "someone/glowdeblur-test"
    assert "README.md" in plan["files"] and "model_index.json" in plan["files"]
    card = (bpp_run / "pipeline" / "README.md").read_text()
    metrics = [r for r in read_log(bpp_run) if "val/pipeline_psnr" in r][-1]
    assert metrics["step"] == 4
    assert f"| pipeline_psnr | {metrics['val/pipeline_psnr']:.4f} |" in card
    assert f"| prerecon_ssim | {metrics['val/prerecon_ssim']:.4f} |" in card
    assert "library_name: diffusers" in card and "trust_remote_code=True" in card and "someone/glowdeblur-test" in card


def test_resume_reproduces_uninterrupted_losses(bpp_run, data, tmp_path):
    import shutil

    shutil.copytree(bpp_run / "checkpoint-2", tmp_path / "checkpoint-2")
    # a stale partial checkpoint (killed while saving) must be ignored and cleaned up
    (tmp_path / "checkpoint-3.tmp").mkdir()
    run(bpp_args(data, tmp_path, 4, ["--checkpointing_steps", "2", "--checkpoints_total_limit", "3",
                                     "--diffusion_start_step", "1", "--validation_steps", "4",
                                     "--resume_from_checkpoint", "latest"]))
    expected, resumed = losses_by_step(bpp_run), losses_by_step(tmp_path)
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), (step, resumed, expected)
    assert not (tmp_path / "checkpoint-3.tmp").exists()
    from safetensors.torch import load_file

    a = load_file(str(bpp_run / "checkpoint-4" / "ema_model.safetensors"))
    b = load_file(str(tmp_path / "checkpoint-4" / "ema_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def test_resume_with_a_new_learning_rate_uses_it(bpp_run, data, tmp_path):
    """accelerate restores the scheduler's own base lr; a resumed run given another --learning_rate must use it."""
    import shutil

    shutil.copytree(bpp_run / "checkpoint-2", tmp_path / "checkpoint-2")
    run(bpp_args(data, tmp_path, 4, ["--diffusion_start_step", "1", "--validation_steps", "0",
                                     "--resume_from_checkpoint", "latest", "--learning_rate", "3e-4"]))
    original = {r["step"]: r["lr"] for r in read_log(bpp_run) if "lr" in r}  # COMMON: --learning_rate 1e-3, cosine
    resumed = [r for r in read_log(tmp_path) if "lr" in r]
    assert [r["step"] for r in resumed] == [3, 4]
    # same place in the schedule, scaled to the new base rate
    assert resumed[0]["lr"] == pytest.approx(original[3] * 0.3) and original[3] > 0
    # every log line carries the process CPU time it covers, for curves against CPU-hours
    assert all(r["cpu_seconds"] > 0 and r["threads"] >= 1 for r in resumed)


def test_init_from_grows_a_trained_model_without_changing_its_output(bpp_run, data, tmp_path):
    """Deeper U-Net levels started from a smaller trained model: every matching tensor is copied and the extra
    NAFBlocks start as the identity, so the grown pre-reconstruction equals the trained one before it trains on."""
    from glow import training
    from glow.pipeline_glowdeblur import GLOWDeblurPipeline
    from glow.presets import apply_overrides, build_pipeline, get_preset

    trained = GLOWDeblurPipeline.from_pretrained(str(bpp_run / "pipeline"))
    grown_cfg = apply_overrides(get_preset("tiny"), {"prereconstruction": {"enc_blocks": [1, 2, 2], "middle_blocks": 3}})
    grown = build_pipeline(grown_cfg, seed=1)
    report = training.load_matching_weights(grown, bpp_run / "checkpoint-4")  # its EMA weights = the pipeline's
    assert report["loaded"] > 50 and report["skipped"] == []
    assert any(".middle.2." in n for n in report["new"]) and not any(".middle.0." in n for n in report["new"])
    img = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        est = trained.motion_estimator(img)
        a = trained.prereconstruction(img, est.kernels, est.motion).image
        b = grown.prereconstruction(img, est.kernels, est.motion).image
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, img, atol=1e-4)
    # a pipeline folder is read the same way (per-component files)
    from_folder = build_pipeline(grown_cfg, seed=2)
    assert training.load_matching_weights(from_folder, bpp_run / "pipeline")["loaded"] == report["loaded"]
    with torch.no_grad():
        assert torch.allclose(from_folder.prereconstruction(img, est.kernels, est.motion).image, a, atol=1e-6)
    with pytest.raises(ValueError, match="no safetensors"):
        training.load_matching_weights(grown, tmp_path)
    # and through the script: a grown run starts from those weights and trains
    out = tmp_path / "grown"
    proc = run(bpp_args(data, out, 2, ["--validation_steps", "0", "--init_from", str(bpp_run / "checkpoint-4"),
                                       "--model_config", '{"prereconstruction": {"middle_blocks": 3}}']))
    assert "--init_from" in proc.stderr and "tensors loaded" in proc.stderr
    assert sorted(losses_by_step(out)) == [1, 2]


def test_sigterm_writes_a_complete_checkpoint_and_exits_cleanly(data, tmp_path):
    cmd = [sys.executable] + bpp_args(data, tmp_path, 1000, ["--checkpointing_steps", "1000", "--validation_steps", "0",
                                                             "--diffusion_start_step", "0"])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "logs" / "train_log.jsonl"
    deadline = time.time() + 180
    try:
        while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 2):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    ckpts = list(tmp_path.glob("checkpoint-*"))
    assert len(ckpts) == 1 and not ckpts[0].name.endswith(".tmp"), ckpts
    step = int(ckpts[0].name.split("-")[1])
    assert step >= 2 and step == max(losses_by_step(tmp_path))
    assert "SIGTERM" in err
    # loadable: resuming continues from exactly that step
    run(bpp_args(data, tmp_path, step + 1, ["--validation_steps", "0", "--diffusion_start_step", "0",
                                           "--resume_from_checkpoint", "latest"]))
    assert max(losses_by_step(tmp_path)) == step + 1
    assert (tmp_path / f"checkpoint-{step + 1}").is_dir()


def test_two_process_cpu_run(data, tmp_path):
    # torchrun-style launcher; the script selects CPU + gloo itself (see train/configs/cpu_2proc.yaml)
    proc = run(bpp_args(data, tmp_path, 2, ["--checkpointing_steps", "2", "--validation_steps", "0",
                                            "--diffusion_start_step", "1"]),
               launcher=["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29517"])
    assert "total batch 4" in proc.stderr  # 2 processes x batch 2
    records = read_log(tmp_path)
    assert [r["step"] for r in records if "loss/total" in r] == [1, 2]
    assert (tmp_path / "checkpoint-2" / "model.safetensors").is_file()
    assert (tmp_path / "pipeline" / "model_index.json").is_file()


def test_finetune_mixes_real_and_simulated_data_with_freezing(bpp_run, data, tmp_path):
    from safetensors.torch import load_file

    proc = run([str(ROOT / "train" / "finetune.py"), *COMMON, "--pretrained_model_name_or_path",
                str(bpp_run / "pipeline"), "--train_data_dir", str(data / "pairs"), "--sharp_data_dir",
                str(data / "sharp"), "--frames_data_dir", str(data / "frames"), "--val_frames_holdout", "6",
                "--mix_ratios", "0.5,0.2,0.3", "--freeze", "motion_estimator", "--validation_data_dir",
                str(data / "pairs"), "--output_dir", str(tmp_path), "--max_train_steps", "2",
                "--checkpointing_steps", "2", "--hub_dry_run", "--use_ema", "--ema_decay", "0.5",
                "--render_on_device"])  # simulated rows rendered in the loop, pairs and frames beside them
    assert "frozen: ['motion_estimator']" in proc.stderr
    assert json.loads((tmp_path / "args.json").read_text())["render_on_device"] is True
    assert sorted(losses_by_step(tmp_path)) == [1, 2]
    before = load_file(str(bpp_run / "pipeline" / "motion_estimator" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(tmp_path / "pipeline" / "motion_estimator" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen
    before = load_file(str(bpp_run / "pipeline" / "prereconstruction" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(tmp_path / "pipeline" / "prereconstruction" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # trained
    card = (tmp_path / "pipeline" / "README.md").read_text()
    assert "joint fine-tuning" in card and "paired/pairs" in card and "sim/sharp" in card


def test_push_to_hub_offline_fails_clearly_after_the_folder_is_complete(data, tmp_path):
    cmd = [sys.executable] + bpp_args(data, tmp_path, 1, ["--validation_steps", "0", "--push_to_hub",
                                                          "--hub_model_id", "someone/glowdeblur-test"])
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)  # HF_HUB_OFFLINE=1
    assert proc.returncode == 1
    assert "Pushing to the Hub failed" in proc.stderr and str(tmp_path / "pipeline") in proc.stderr
    for name in ("model_index.json", "README.md", "pipeline_glowdeblur.py",
                 "transformer/diffusion_pytorch_model.safetensors"):
        assert (tmp_path / "pipeline" / name).is_file(), name


def test_model_config_overrides_reach_the_saved_pipeline(data, tmp_path):
    # the Wiener ablation: --model_config switches the physics branch off in the trained and exported model
    out = tmp_path / "no_wiener"
    run(bpp_args(data, out, 1, ["--model_config", '{"prereconstruction": {"use_wiener": false}}',
                                "--validation_steps", "0"]))
    cfg = json.loads((out / "pipeline" / "prereconstruction" / "config.json").read_text())
    assert cfg["use_wiener"] is False
    assert json.loads((out / "pipeline" / "model_index.json").read_text())["preset"] == "tiny"
    assert "Wiener\ndeconvolution branch switched off" in (out / "pipeline" / "README.md").read_text()  # the card
    bad = subprocess.run([sys.executable, *bpp_args(data, tmp_path / "bad", 1, ["--model_config", '{"unet": {}}'])],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert bad.returncode != 0 and "override 'unet'" in bad.stderr


def test_simulator_config_narrows_the_simulated_blur_and_is_recorded(data, tmp_path):
    # a linear-motion-only, noise-free simulator: recorded in args.json and the model card; bad overrides fail early
    config = '{"kind_weights": {"linear_motion": 1.0}, "linear_length": [3, 8], "p_noise": 0, "p_jpeg": 0}'
    out = tmp_path / "narrow"
    run(bpp_args(data, out, 1, ["--simulator_config", config, "--validation_steps", "0"]))
    assert json.loads((out / "args.json").read_text())["simulator_config"] == json.loads(config)
    # the card's data lines are read from the datasets actually built: the simulated source carries the overrides
    # (as the simulator stores them), the frame source keeps the default camera and says nothing
    card = (out / "pipeline" / "README.md").read_text()
    expected = {"kind_weights": {"linear_motion": 1.0}, "p_noise": 0, "p_jpeg": 0, "linear_length": [3, 8]}
    sim_line = next(line for line in card.splitlines() if line.strip().startswith("- sim/"))
    assert json.loads(sim_line.split("simulator overrides `")[1].rstrip("`")) == expected
    frames_line = next(line for line in card.splitlines() if line.strip().startswith("- frames/"))
    assert "simulator overrides" not in frames_line
    for bad, message in [('{"p_nois": 0}', "unexpected keyword argument 'p_nois'"),
                         ('{"kind_weights": {"shake": 1}}', "Unknown blur kinds ['shake']"),
                         ("[1, 2]", "expected a JSON object")]:
        proc = subprocess.run([sys.executable, *bpp_args(data, tmp_path / "bad", 1, ["--simulator_config", bad])],
                              cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "bad").exists()  # rejected before anything is written


def test_few_step_sigmas_are_the_pipelines_own():
    # training draws exactly the sigmas GLOWDeblurPipeline visits with 1..4 steps, with sigma=1 (1 step) most often
    import argparse

    from glow.training import sample_diffusion_inputs

    args = argparse.Namespace(weighting_scheme="few_step", max_inference_steps=4)
    _, sigmas = sample_diffusion_inputs(args, (4000, 1, 1, 1), torch.Generator().manual_seed(0))
    visited = {round(s, 4) for n in range(1, 5) for s in np.linspace(1.0, 0.0, n + 1)[:-1]}
    values, counts = torch.unique(sigmas, return_counts=True)
    assert {round(float(v), 4) for v in values} == visited
    assert 0.45 < counts[values == 1.0].item() / 4000 < 0.6


def test_channels_last_and_compiled_training_step_and_export(data, tmp_path):
    # the GPU options on CPU: NHWC convolution weights and a torch.compile'd training module (through Accelerate;
    # the "eager" backend runs dynamo's graph capture without code generation, so it stays fast here. inductor gave
    # the same losses to 1e-5 by hand, after a 2-minute compile; aot_eager fails inside torch on a view)
    out = tmp_path / "nhwc"
    run(bpp_args(data, out, 2, ["--channels_last", "--dynamo_backend", "eager", "--diffusion_start_step", "0",
                                "--validation_steps", "0", "--checkpointing_steps", "2"]))
    losses = losses_by_step(out)
    assert sorted(losses) == [1, 2] and all(np.isfinite(v) for v in losses.values()), losses
    from glow.pipeline_glowdeblur import GLOWDeblurPipeline

    pipe = GLOWDeblurPipeline.from_pretrained(out / "pipeline")  # weights saved contiguous, loadable as usual
    pipe.set_progress_bar_config(disable=True)
    assert pipe(np.zeros((40, 48, 3), np.uint8), output_type="np").images[0].shape == (40, 48, 3)
