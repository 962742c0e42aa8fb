#!/usr/bin/env python
"""Training pairs as the pipeline's networks see them: each blurry photo deconvolved by `BlindDeconvolution` with the
kernel it *estimates* (faded by its confidence), beside its sharp target.

`--deconvolved_inputs` (glow/training/deconvolved.py) imitates the estimator with a perturbed true kernel; it cannot
reproduce what the estimator does on non-uniform blur (frame averaging, real pairs), where the estimate is wrong in
places. This script runs the real estimator once per photo and caches the result as a paired folder (`blur/` +
`sharp/`, the "folders" layout of `glow.data.paired`), so a fine-tune reads it with `--train_data_dir`:

    python train/make_deconvolved_pairs.py --model glow/default_model --output_dir packs/deconvolved \
        --sharp_data_dir ../shared/data/train/sharp --num_sharp 160 \
        --frames_data_dir ../shared/data/train/frames/GOPR0477_11_00 --num_frames 100 \
        --pairs_data_dir ../shared/data/train/pairs/gopro_style --shard 0/2 --threads 1

Sources: simulated blur on random crops of sharp photos (half camera shake, half the default BPP mix), frame
averages from a clip (k odd in 5-13, the last --holdout frames never used), and real blurry/sharp pairs. Existing
outputs are skipped (a stopped run resumes); unreadable inputs are reported and skipped. `estimates-<shard>.jsonl`
records each photo's confidence and kernel length. Run several shards (`--shard i/n`) in parallel.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glow.data import BlurSimulator, FrameFolderDataset  # noqa: E402
from glow.data.datasets import list_images  # noqa: E402
from glow.data.paired import PairedFolderDataset  # noqa: E402
from glow.io import ImageReadError, image_to_tensor, to_pil  # noqa: E402
from glow.models.blind_deconvolution import BlindDeconvolution  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="glow/default_model", help="pipeline folder whose blind_deconvolution is used")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--sharp_data_dir", action="append", default=[], help="sharp photos to blur with the simulator")
    p.add_argument("--num_sharp", type=int, default=0, help="simulated photos to make (all shards together)")
    p.add_argument("--crop", type=int, default=640, help="crop size of the simulated photos (px)")
    p.add_argument("--frames_data_dir", action="append", default=[], help="a clip of consecutive frames")
    p.add_argument("--num_frames", type=int, default=0, help="frame averages to make per clip (all shards together)")
    p.add_argument("--holdout", type=int, default=60, help="the clip's last frames, never used (validation)")
    p.add_argument("--pairs_data_dir", action="append", default=[], help="real blurry/sharp pairs (any paired layout)")
    p.add_argument("--shard", default="0/1", help="i/n: this process makes every n-th photo, from the i-th")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    return p.parse_args(argv)


def jobs(args):
    """Every photo to make, as (name, thunk returning (blurry, sharp)); deterministic, so shards agree."""
    out = []
    sharp_files = list_images(args.sharp_data_dir) if args.sharp_data_dir else []
    if args.num_sharp and not sharp_files:
        raise SystemExit(f"no images in {args.sharp_data_dir}")
    simulator = BlurSimulator(seed=args.seed)
    for i in range(args.num_sharp):
        def make(i=i):
            rng = np.random.default_rng([args.seed, 1, i])
            path = sharp_files[int(rng.integers(len(sharp_files)))]
            sharp = image_to_tensor(path)
            h, w = sharp.shape[-2:]
            c = min(args.crop, h, w)
            y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            sharp = sharp[:, y:y + c, x:x + c]
            kind = "camera_shake" if i % 2 == 0 else None
            sample = simulator(sharp, seed=int(rng.integers(1 << 62)), kind=kind)
            return sample["blurry"], sample["sharp"]
        out.append((f"sim_{i:05d}", make))
    for clip in args.frames_data_dir:
        frames = FrameFolderDataset.train_split(clip, holdout=args.holdout, resolution=None, seed=args.seed)
        for i in range(args.num_frames):
            def make(frames=frames, i=i):
                sample = frames.sample(i, int(np.random.default_rng([args.seed, 2, i]).integers(1 << 62)))
                return sample["blurry"], sample["sharp"]
            out.append((f"frames_{Path(clip).name}_{i:05d}", make))
    for root in args.pairs_data_dir:
        pairs = PairedFolderDataset(root, resolution=None, augment=False)
        for blur_path, sharp_path in pairs.pairs:
            # read here, not through pairs.sample: a training dataset replaces an unreadable pair by another one,
            # which would be cached under this pair's name
            def make(blur_path=blur_path, sharp_path=sharp_path):
                blurry, sharp = image_to_tensor(blur_path)[:3], image_to_tensor(sharp_path)[:3]
                if blurry.shape != sharp.shape:
                    raise ImageReadError(f"{blur_path}: size {tuple(blurry.shape)} differs from {tuple(sharp.shape)}")
                return blurry.float(), sharp.float()
            out.append((f"pair_{Path(root).name}_{Path(blur_path).stem}", make))
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shard, shards = (int(v) for v in args.shard.split("/"))
    output = Path(args.output_dir)
    (output / "blur").mkdir(parents=True, exist_ok=True)
    (output / "sharp").mkdir(parents=True, exist_ok=True)
    blind = BlindDeconvolution.from_pretrained(str(Path(args.model) / "blind_deconvolution")).eval()
    todo = jobs(args)[shard::shards]
    with open(output / f"estimates-{shard}.jsonl", "a") as log:
        for n, (name, make) in enumerate(todo):
            if (output / "blur" / f"{name}.png").exists() and (output / "sharp" / f"{name}.png").exists():
                continue
            try:
                blurry, sharp = make()
            except (ImageReadError, OSError) as err:
                print(f"skipped {name}: {err}", flush=True)
                continue
            with torch.no_grad():
                est = blind(blurry[None].float())
            # written sharp first, blur last: a photo counts as done only when both exist
            to_pil(sharp).save(output / "sharp" / f"{name}.png")
            to_pil(est.image[0].clamp(0, 1)).save(output / "blur" / f"{name}.png")
            record = {"name": name, "confidence": float(est.confidence[0]), "length": float(est.motion[0, 2])}
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(f"[{n + 1}/{len(todo)}] {name} confidence {record['confidence']:.2f}", flush=True)


if __name__ == "__main__":
    main()
