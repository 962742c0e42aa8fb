#!/usr/bin/env python
"""Training throughput of train/bpp.py: steps/s, samples/s and the share of time spent waiting for data.

Runs the real script (subprocess) for a few steps per DataLoader worker count and reads its JSONL log (every step is
logged with samples_per_s, steps_per_s and data_wait_share). The first `--warmup` steps are excluded.

    python benchmarks/bench_train.py                       # small preset, 256 px, batch 4, workers 0 and 1
    python benchmarks/bench_train.py --preset tiny --steps 6 --workers 0
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


def measure(args, workers: int, sharp: Path, frames: Path | None, out: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "train" / "bpp.py"), "--preset", args.preset, "--resolution",
           str(args.resolution), "--train_batch_size", str(args.batch_size), "--train_data_dir", str(sharp),
           "--output_dir", str(out), "--max_train_steps", str(args.steps), "--logging_steps", "1",
           "--checkpointing_steps", str(10**9), "--validation_steps", "0", "--dataloader_num_workers", str(workers),
           "--diffusion_start_step", str(args.diffusion_start_step)]
    if frames is not None:
        cmd += ["--frames_data_dir", str(frames)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "steps_per_s" in r and r["step"] > args.warmup]
    seconds = sum(1.0 / r["steps_per_s"] for r in steps)
    waited = sum(r["data_wait_share"] / r["steps_per_s"] for r in steps)
    return {"workers": workers, "steps": len(steps), "steps_per_s": len(steps) / seconds,
            "samples_per_s": len(steps) * args.batch_size / seconds, "data_wait_share": waited / seconds,
            "wall_s_incl_startup": wall}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    p.add_argument("--diffusion_start_step", type=int, default=0, help="0 = full step incl. the diffusion loss")
    p.add_argument("--synthetic", action="store_true", help="random images instead of ../shared/data")
    args = p.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.synthetic or not (SHARED / "sharp").is_dir():
            sharp, frames = synthetic_data(tmp / "data")
        else:
            sharp, frames = SHARED / "sharp", (SHARED / "frames" if (SHARED / "frames").is_dir() else None)
        results = [measure(args, w, sharp, frames, tmp / f"run{w}") for w in args.workers]
    print(f"preset={args.preset} resolution={args.resolution} batch={args.batch_size} cores={os.cpu_count()} "
          f"loadavg(1m) before={load_before[0]:.2f} after={os.getloadavg()[0]:.2f} data={'synthetic' if args.synthetic else sharp}")
    print("| DataLoader workers | steps/s | samples/s | data-wait share |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['steps_per_s']:.3f} | {r['samples_per_s']:.2f} | {r['data_wait_share']:.0%} |")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
