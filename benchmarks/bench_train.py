#!/usr/bin/env python
"""Training throughput of train/bpp.py: steps/s, samples/s and the share of time spent waiting for data.

Runs the real script (subprocess) for a few steps per DataLoader worker count and reads its JSONL log (every step is
logged with samples_per_s, steps_per_s and data_wait_share). The first `--warmup` steps are excluded.

    python benchmarks/bench_train.py                       # small preset, 256 px, batch 4, workers 0 and 1
    python benchmarks/bench_train.py --preset tiny --steps 6 --workers 0
    # a GPU machine with the training pack: where does a step stop waiting for data?
    python benchmarks/bench_train.py --data packs/train --batch_size 32 64 128 256 --workers 15 --steps 60 \
        --mixed_precision bf16 --text_embeddings packs/train/text_embeddings.safetensors
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "train"


def synthetic_data(folder: Path) -> tuple[Path, Path | None]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    sharp = folder / "sharp"
    sharp.mkdir(parents=True)
    for i in range(32):
        Image.fromarray((rng.random((480, 640, 3)) * 255).astype(np.uint8)).save(sharp / f"{i}.jpg", quality=95)
    return sharp, None


def measure(args, workers: int, batch_size: int, sharp: Path, frames: Path | None, out: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "train" / "bpp.py"), "--preset", args.preset, "--resolution",
           str(args.resolution), "--train_batch_size", str(batch_size), "--train_data_dir", str(sharp),
           "--output_dir", str(out), "--max_train_steps", str(args.steps), "--logging_steps", "1",
           "--checkpointing_steps", str(10**9), "--validation_steps", "0", "--dataloader_num_workers", str(workers),
           "--diffusion_start_step", str(args.diffusion_start_step)]
    if frames is not None:
        cmd += ["--frames_data_dir", str(frames), "--val_frames_holdout", str(args.val_frames_holdout)]
    cmd += ["--mixed_precision", args.mixed_precision]
    if args.text_embeddings:
        cmd += ["--text_embeddings", args.text_embeddings]
    if args.render_on_device is not None:
        cmd += ["--render_on_device" if args.render_on_device else "--no-render_on_device"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "steps_per_s" in r and r["step"] > args.warmup]
    seconds = sum(1.0 / r["steps_per_s"] for r in steps)
    waited = sum(r["data_wait_share"] / r["steps_per_s"] for r in steps)
    return {"workers": workers, "batch": batch_size, "steps": len(steps), "steps_per_s": len(steps) / seconds,
            "samples_per_s": len(steps) * batch_size / seconds, "data_wait_share": waited / seconds,
            "wall_s_incl_startup": wall}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch_size", type=int, nargs="+", default=[4], help="One run per batch size (and worker count).")
    p.add_argument("--data", default=None, help="A folder with sharp/ (and frames/): a training pack, say.")
    p.add_argument("--val_frames_holdout", type=int, default=60, help="0 for a pack (held out already).")
    p.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--text_embeddings", default=None, help="Precomputed prompt embeddings (no text encoder needed).")
    p.add_argument("--render_on_device", action=argparse.BooleanOptionalAction, default=None,
                   help="Passed to bpp.py (default: its own, on with a GPU).")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    p.add_argument("--diffusion_start_step", type=int, default=0, help="0 = full step incl. the diffusion loss")
    p.add_argument("--synthetic", action="store_true", help="random images instead of ../shared/data")
    args = p.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = Path(args.data) if args.data else SHARED
        if args.synthetic or not (root / "sharp").is_dir():
            sharp, frames = synthetic_data(tmp / "data")
        else:
            sharp, frames = root / "sharp", (root / "frames" if (root / "frames").is_dir() else None)
        results = [measure(args, w, b, sharp, frames, tmp / f"run{w}-{b}") for b in args.batch_size
                   for w in args.workers]
    print(f"preset={args.preset} resolution={args.resolution} cores={os.cpu_count()} "
          f"precision={args.mixed_precision} loadavg(1m) before={load_before[0]:.2f} after={os.getloadavg()[0]:.2f} "
          f"data={'synthetic' if args.synthetic else sharp}")
    print("| batch | DataLoader workers | steps/s | samples/s | data-wait share |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['batch']} | {r['workers']} | {r['steps_per_s']:.3f} | {r['samples_per_s']:.2f} | "
              f"{r['data_wait_share']:.0%} |")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
