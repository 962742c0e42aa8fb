"""glow-deblur on a folder against the same pipeline called in a Python loop (issue: no per-file overhead).

    python benchmarks/bench_cli.py [--count 100] [--megapixels 1.0] [--threads 2] [--no-deconvolve]

Writes `--count` synthetic blurred photos of `--megapixels`, deblurs them (1) with the pipeline loaded once in a
Python loop (read, deblur, write PNG) and (2) with `glow-deblur` in a subprocess, and prints both wall times, their
ratio and the CLI's peak RSS after the first and the last file (from its `--report`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_photos(folder: Path, count: int, megapixels: float) -> None:
    from glow.data.kernels import convolve, linear_kernel

    w = int(round((megapixels * 1e6 * 4 / 3) ** 0.5 / 8)) * 8
    h = int(round(w * 3 / 4 / 8)) * 8
    rng = np.random.default_rng(0)
    for i in range(count):
        base = torch.rand(3, h // 16, w // 16, generator=torch.Generator().manual_seed(i))
        img = torch.nn.functional.interpolate(base[None], size=(h, w), mode="bicubic")[0].clamp(0, 1)
        img = convolve(img, linear_kernel(float(rng.uniform(8, 20)), float(rng.uniform(0, np.pi)))).clamp(0, 1)
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(folder / f"{i:04d}.jpg",
                                                                                      quality=92)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--megapixels", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-deconvolve", dest="deconvolve", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import glow
    from glow.io import load_image_array, to_pil
    from glow.pipeline_glowdeblur import GLOWDeblurPipeline

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        make_photos(tmp / "in", args.count, args.megapixels)
        files = sorted((tmp / "in").glob("*.jpg"))
        pipe = GLOWDeblurPipeline.from_pretrained(glow.DEFAULT_MODEL_PATH)
        pipe.set_progress_bar_config(disable=True)
        (tmp / "loop").mkdir()
        start = time.perf_counter()
        for f in files:
            array, _ = load_image_array(f)
            out = pipe(array, generator=torch.Generator().manual_seed(0), output_type="pt", deconvolve=args.deconvolve)
            to_pil(out.images[0]).save(tmp / "loop" / (f.stem + ".png"))
        loop_s = time.perf_counter() - start
        del pipe
        cmd = [sys.executable, "-m", "glow", str(tmp / "in"), "-o", str(tmp / "cli"), "--report",
               str(tmp / "report.jsonl")] + ([] if args.deconvolve else ["--no-deconvolve"])
        env = {"OMP_NUM_THREADS": str(args.threads), "PATH": "/usr/bin:/bin"}
        import os

        env = dict(os.environ, **env)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        cli_s = time.perf_counter() - start
        records = [json.loads(line) for line in (tmp / "report.jsonl").read_text().splitlines()]
    print(f"{args.count} photos of {args.megapixels} MP ({'with' if args.deconvolve else 'without'} the blind "
          f"deconvolution, {args.threads} threads)")
    print(f"python loop, pipeline loaded once: {loop_s:7.1f} s  ({loop_s / args.count:.2f} s/photo)")
    print(f"glow-deblur (incl. start-up):      {cli_s:7.1f} s  ({cli_s / args.count:.2f} s/photo)  "
          f"ratio {cli_s / loop_s:.3f}")
    print(f"glow-deblur peak RSS after file 1: {records[0]['peak_rss_mb']} MB, after file {len(records)}: "
          f"{records[-1]['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
