"""Throughput of the BPP data engine on ONE core: 256x256 samples/s for the default mix and per blur kind.

    python benchmarks/bench_data.py [--n 200] [--per-kind 30] [--resolution 256] [--data ../shared/data]
    python benchmarks/bench_data.py --device cuda --batch 64     # also: rendering on the training device

Measures (1) the simulator alone on pre-loaded 256x256 crops, (2) each blur kind alone, and, when the shared data
folder exists, (3) SharpFolderDataset end to end (decode + crop + simulate) and (4) FrameFolderDataset (decode k
full 1280x720 frames + average). The machine load (`os.getloadavg`) is printed with the results.
With `--device`, (5) the split that `--render_on_device` training uses: drawing a sample in a worker (`defer=True`)
and rendering whole batches of `--batch` on the device (`glow.data.batched.render_batch`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glow.data import BLUR_KINDS, BlurSimulator  # noqa: E402
from glow.data.datasets import FrameFolderDataset, SharpFolderDataset  # noqa: E402


def _crops(data: Path | None, n: int, res: int) -> list[torch.Tensor]:
    if data is not None and (data / "val" / "sharp").is_dir():
        ds = SharpFolderDataset(data / "val" / "sharp", resolution=res, seed=0, length=n)
        rng = np.random.default_rng(0)
        return [ds._crop(ds.sample_image(i), rng) for i in range(n)]
    rng = np.random.default_rng(0)
    return [torch.from_numpy(rng.random((3, res, res), dtype=np.float32)) for _ in range(n)]


def _rate(fn, n: int) -> tuple[float, float]:
    """(samples per wall-clock second, samples per CPU second of this process). On a shared machine the CPU-time
    rate is what one free core would deliver; the wall-clock rate is what this run got."""
    fn(0)  # warm-up (FFT plans, imports)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--per-kind", type=int, default=30)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--device", default=None, help="Also time rendering on this device (cpu, cuda).")
    parser.add_argument("--batch", type=int, default=64, help="Batch size of the device rendering.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = Path(args.data) if Path(args.data).is_dir() else None
    res = args.resolution
    crops = _crops(data, 24, res)
    print(f"load average before: {os.getloadavg()[0]:.2f} (2-core machine shared with other jobs)")
    print(f"torch threads: {torch.get_num_threads()}, resolution {res}x{res}")

    sim = BlurSimulator(seed=0)
    wall, cpu = _rate(lambda i: sim(crops[i % len(crops)]), args.n)
    print(f"\nsimulator, default mix: {wall:6.1f} samples/s wall, {cpu:6.1f} samples/CPU-s (n={args.n})")
    print("per blur kind (camera steps drawn as in the default mix):       wall    per CPU-s")
    for kind in BLUR_KINDS:
        wall, cpu = _rate(lambda i, k=kind: sim(crops[i % len(crops)], kind=k), args.per_kind)
        print(f"  {kind:<15s} {wall:6.1f} {cpu:6.1f} samples/s")

    if data is not None and (data / "train" / "sharp").is_dir():
        ds = SharpFolderDataset(data / "train" / "sharp", resolution=res, seed=0)
        wall, cpu = _rate(lambda i: ds[i], min(args.n, len(ds) - 1))
        print(f"\nSharpFolderDataset end to end (decode JPEG + random scale/crop/flip + simulate): "
              f"{wall:6.1f} samples/s wall, {cpu:6.1f} per CPU-s")
    frames = data / "train" / "frames" / "GOPR0477_11_00" if data is not None else None
    if frames is not None and frames.is_dir():
        fd = FrameFolderDataset.train_split(frames, resolution=res)
        wall, cpu = _rate(lambda i: fd[i], 10)
        print(f"FrameFolderDataset (k in 5..13 1280x720 JPEG frames averaged in linear light): "
              f"{wall:6.2f} samples/s wall, {cpu:6.2f} per CPU-s")
    if args.device:
        args.data_dir = data
        bench_device(sim, crops, args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def bench_device(sim: BlurSimulator, crops: list[torch.Tensor], args) -> None:
    from glow.data import collate
    from glow.data.batched import render_batch

    device = torch.device(args.device)
    samples = [sim(crops[i % len(crops)], seed=i, defer=True) for i in range(4 * args.batch)]
    deferred = [s for s in samples if "recipe" in s]
    wall, cpu = _rate(lambda i: sim(crops[i % len(crops)], seed=i, defer=True), args.n)
    print(f"\n--device {device}: drawing one sample in a worker (defer=True, default mix; depth defocus and moving "
          f"objects are still rendered there): {wall:6.1f} samples/s wall, {cpu:6.1f} per CPU-s; "
          f"{len(deferred) / len(samples):.0%} of the mix is deferred")
    if args.data_dir is not None and (args.data_dir / "train" / "sharp").is_dir():
        ds = SharpFolderDataset(args.data_dir / "train" / "sharp", resolution=args.resolution, seed=0,
                                render_on_device=True)
        wall, cpu = _rate(lambda i: ds[i], min(args.n, len(ds) - 1))
        print(f"SharpFolderDataset(render_on_device=True) end to end (decode + crop + draw): {wall:6.1f} samples/s "
              f"wall, {cpu:6.1f} per CPU-s")
    batch = collate(deferred[: args.batch])
    tensors = [batch[k].to(device) for k in ("sharp", "recipe_kernel", "recipe")]
    gen = torch.Generator(device).manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    render_batch(*tensors, gen)
    sync()
    start, cpu0, reps = time.perf_counter(), time.process_time(), max(3, args.n // args.batch)
    for _ in range(reps):
        render_batch(*tensors, gen)
    sync()
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu0
    n = reps * len(deferred[: args.batch])
    print(f"rendering batches of {len(deferred[: args.batch])} on {device}: {n / wall_s:8.1f} samples/s wall"
          + (f", {n / cpu_s:6.1f} per CPU-s" if device.type == "cpu" else ""))


if __name__ == "__main__":
    main()
