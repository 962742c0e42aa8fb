#!/usr/bin/env python
"""PSNR gain over the blurry input as a function of blur size: where does a model stop deblurring?

    python train/eval_blur_size.py --sharp ../shared/data/val/sharp/kodak24 --max_images 8 --threads 2 \
        --output_dir results/blur_size [--model glow/default_model --model other/pipeline ...]

For every blur kind (linear motion: length in px; defocus: disk radius in px) and size, image i of --sharp
(sorted, centre crop --crop) is blurred by glow.data.BlurSimulator restricted to that kind and size, with seed
`--seed + i`. The seed is the same for every size, so the direction, the camera pipeline (noise, Bayer, JPEG) and
everything else but the size are the same along a curve. Writes results.md, results.json and (with matplotlib)
blur_size.png under --output_dir.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import glow
from glow import metrics


def _load_evaluate():
    """train/evaluate.py (its loaders and pipeline call), imported by path (a pip package `evaluate` may exist)."""
    import importlib.util

    path = Path(__file__).resolve().parent / "evaluate.py"
    spec = importlib.util.spec_from_file_location("glow_train_evaluate", path)
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


evaluate = _load_evaluate()

KINDS = {"linear_motion": "linear_length", "defocus": "defocus_radius"}


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="pipeline folder or Hub id (repeatable)")
    parser.add_argument("--sharp", required=True, help="folder of sharp images")
    parser.add_argument("--crop", type=int, default=384, help="centre crop before blurring (0 = full image)")
    parser.add_argument("--max_images", type=int, default=8)
    parser.add_argument("--lengths", type=_floats, default=_floats("3,6,10,15,20,30,40,60"),
                        help="linear motion lengths, px")
    parser.add_argument("--radii", type=_floats, default=_floats("1,2,3,5,8,12"), help="defocus radii, px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_camera", action="store_true",
                        help="blur only: no sensor noise, low light, Bayer, highlights or JPEG (isolates deblurring)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    args.model = args.model or [glow.DEFAULT_MODEL_PATH]
    if not args.lengths and not args.radii:
        parser.error("give at least one --lengths or --radii value")
    return args


NO_CAMERA = {"p_highlights": 0.0, "p_low_light": 0.0, "p_noise": 0.0, "p_bayer": 0.0, "p_jpeg": 0.0}


def blurred_pairs(sharps, kind: str, size: float, seed: int, no_camera: bool = False):
    from glow.data import BlurSimulator

    # only this kind (no "none"), no second kernel (p_combine 0): exactly one kernel of exactly this size
    config = {"kind_weights": {kind: 1.0}, "p_combine": 0.0, KINDS[kind]: (size, size)}
    if no_camera:
        config.update(NO_CAMERA)
    for index, sharp in enumerate(sharps):
        sample = BlurSimulator(config, seed=seed + index)(sharp)
        yield sample["blurry"].clamp(0, 1), sample["sharp"].clamp(0, 1)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from glow.io import center_crop, image_to_tensor

    files = evaluate._image_files(args.sharp, "--sharp")[: args.max_images or None]
    sharps = [center_crop(image_to_tensor(path)[:3], args.crop) for path in files]  # read once, not per size
    pipes = {model: evaluate.load_pipeline(model) for model in args.model}
    curves = [("linear_motion", s) for s in args.lengths] + [("defocus", s) for s in args.radii]
    results = []
    with torch.inference_mode():
        for kind, size in curves:
            row = {"kind": kind, "size": size, "input": [], **{m: [] for m in pipes}}
            for blurry, sharp in blurred_pairs(sharps, kind, size, args.seed, args.no_camera):
                row["input"].append(metrics.psnr(blurry, sharp))
                for model, pipe in pipes.items():
                    output = evaluate.run_pipeline(pipe, blurry, {}, True, args.seed)
                    row[model].append(metrics.psnr(output, sharp))
            summary = {"kind": kind, "size": size, "input_psnr": float(np.mean(row["input"])),
                       "gain": {m: float(np.mean(np.subtract(row[m], row["input"]))) for m in pipes}}
            results.append(summary)
            gains = "  ".join(f"{g:+.2f}" for g in summary["gain"].values())
            print(f"{kind} {size:g} px: input {summary['input_psnr']:.2f} dB, gain {gains}", flush=True)

    header = "| blur | size (px) | input PSNR | " + " | ".join(f"gain `{m}`" for m in pipes) + " |"
    lines = [header, "|" + "---|" * (3 + len(pipes))]
    for r in results:
        lines.append(f"| {r['kind']} | {r['size']:g} | {r['input_psnr']:.2f} | "
                     + " | ".join(f"{r['gain'][m]:+.2f}" for m in pipes) + " |")
    markdown = "\n".join(lines)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join(["eval_blur_size.py"] + (argv if argv is not None else sys.argv[1:])),
              "images": [f.name for f in files], "crop": args.crop, "seed": args.seed,
              "no_camera": args.no_camera, "results": results}
    (output_dir / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (output_dir / "results.md").write_text(markdown + "\n")
    print(markdown)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return report
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, kind, label in zip(axes, KINDS, ("linear motion length (px)", "defocus radius (px)")):
        rows = [r for r in results if r["kind"] == kind]
        for model in pipes:
            ax.plot([r["size"] for r in rows], [r["gain"][model] for r in rows], marker="o", label=model)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR gain over input (dB)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output_dir / "blur_size.png", dpi=110)
    return report


if __name__ == "__main__":
    main()
