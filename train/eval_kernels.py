#!/usr/bin/env python
"""Kernel benchmark: blind deconvolution on simulated camera shake with known kernels, and real photos.

    python train/eval_kernels.py --synthetic ../shared/data/val/sharp/kodak24 \
        --no_reference ../shared/data/real_blurry --output_dir results/kernels

Synthetic: every image (full size) is blurred with one of the engine's camera-shake kernels
(`glow.data.kernels.camera_shake_kernel`, extent drawn uniformly in --extent, seed `--seed + i`), with `--kind linear`
a straight streak (`glow.data.kernels.linear_kernel`, length drawn in --extent, any direction), or with `--kind
defocus` a disk (`glow.data.kernels.defocus_kernel`, radius drawn uniformly in --radius), plus Gaussian noise of
--noise and 8-bit quantisation; optionally saturated highlights (--lights, on a scene darkened by --scene_brightness)
and JPEG (--jpeg). Rows per image (PSNR,
uint8 RGB, no crop, `glow.metrics.psnr`):
  input        the blurry image
  estimated    BlindDeconvolution alone (its forward, as the pipeline calls it): estimated kernel, its non-blind
               deconvolution, faded where the confidence is low
  ungated      the same deconvolution with the estimated kernel everywhere, whatever its confidence
  true_kernel  the same non-blind deconvolution given the true kernel, everywhere (the ceiling of the estimate)
  pipeline     the whole pipeline at its defaults (blind deconvolution, then the networks)
  networks     the networks alone on the photo (deconvolve=False, networks=True: the previous shipped behaviour)
and the error ratio PSNR(true) - PSNR(estimated) in dB (Levin et al. 2009 report it as a ratio of errors; in dB it is
the same number on a log scale), the share of images made worse than the input, per kernel size bin.
Real photos (--no_reference): skimage blur_effect (lower = sharper) per photo for input / pipeline / networks.
Sharp photos (--sharp, e.g. ../shared/data/val/sharp/kodak24): each saved as JPEG q90 and given to the pipeline, which
should leave it alone; PSNR against the original for the JPEG (input), BlindDeconvolution alone (estimated), the
pipeline and the networks alone, and the confidence the component gave.
Writes results.md and results.json to --output_dir.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import glow  # noqa: E402
import glow.data.motion  # noqa: E402
from glow.data.kernels import camera_shake_kernel, convolve, defocus_kernel, linear_kernel  # noqa: E402
from glow.data.datasets import list_images  # noqa: E402
from glow.io import image_to_tensor  # noqa: E402
from glow.metrics import blur_effect, psnr  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=glow.DEFAULT_MODEL_PATH)
    p.add_argument("--synthetic", default=None, help="folder of sharp images")
    p.add_argument("--no_reference", default=None, help="folder of real blurry photos")
    p.add_argument("--sharp", default=None, help="folder of sharp photos (should come back unchanged)")
    p.add_argument("--kind", choices=["camera_shake", "linear", "defocus"], default="camera_shake",
                   help="synthetic blur kind")
    p.add_argument("--extent", default="15,45",
                   help="camera-shake extent, or --kind linear streak length, range in px (min,max)")
    p.add_argument("--radius", default="2,12", help="defocus disk radius range in px (min,max), --kind defocus")
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--jpeg", type=int, default=0, help="JPEG quality of the blurry image (0 = no JPEG)")
    p.add_argument("--lights", type=float, default=0.0,
                   help="clipped lights per MP: 5x5 px squares 10x brighter than white in the sharp photo before the "
                        "blur, so the blurry one has saturated highlights (the reference is the sharp photo clipped)")
    p.add_argument("--scene_brightness", type=float, default=1.0,
                   help="the sharp photo is scaled by this before the lights are added (0.3: a night scene, whose "
                        "lights' trails are compact: only the kernel's densest part clips)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_images", type=int, default=0)
    p.add_argument("--no_networks", action="store_true", help="skip the pipeline/networks rows (kernel rows only)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--blind_config", default=None,
                   help='JSON overriding settings of the model\'s blind_deconvolution, e.g. \'{"region_size": 768}\'')
    p.add_argument("--output_dir", required=True)
    return p.parse_args(argv)


def run_pipe(pipe, image, deconvolve):
    """The pipeline at its defaults, or (``deconvolve`` False) the networks alone on the photo as it is."""
    kwargs = {} if deconvolve else {"networks": True}
    out = pipe(image, output_type="pt", deconvolve=deconvolve, generator=torch.Generator().manual_seed(0), **kwargs)
    return out.images[0], out


def jpeg(image, quality):
    """``[3,H,W]`` in [0, 1] through a Pillow JPEG of ``quality`` (4:2:0, as cameras save)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buffer, "JPEG",
                                                                                        quality=quality)
    return image_to_tensor(Image.open(buffer)).float()


def synthetic_rows(pipe, args):
    lo, hi = (float(v) for v in (args.radius if args.kind == "defocus" else args.extent).split(","))
    files = list_images(args.synthetic)
    files = files[: args.max_images] if args.max_images else files
    bd = pipe.blind_deconvolution
    rows = []
    for i, path in enumerate(files):
        rng = np.random.default_rng(args.seed + i)
        sharp = image_to_tensor(path).float().clamp(0, 1) * args.scene_brightness
        extent = float(rng.uniform(lo, hi))  # the shake's extent, the streak's length or the disk's radius
        if args.kind == "camera_shake":
            kernel = camera_shake_kernel(rng, extent=extent)[0]
        elif args.kind == "linear":
            kernel = linear_kernel(extent, float(rng.uniform(0, math.pi)))
        else:
            kernel = defocus_kernel(extent)
        noise = torch.from_numpy(rng.standard_normal(sharp.shape)).float() * args.noise
        scene = sharp
        if args.lights:  # drawn after the noise, so the other options see the same draws with or without lights
            scene = sharp.clone()
            h, w = sharp.shape[-2:]
            count = int(args.lights * h * w / 1e6)
            for y, x in zip(rng.integers(0, h - 5, count), rng.integers(0, w - 5, count)):
                scene[:, y : y + 5, x : x + 5] = 10.0
            sharp = scene.clamp(0, 1)
        blurry = torch.round((convolve(scene, kernel) + noise).clamp(0, 1) * 255) / 255
        if args.jpeg:
            blurry = jpeg(blurry, args.jpeg)
        t0 = time.perf_counter()
        blind = bd(blurry[None])  # what the pipeline does: estimate, deconvolve, gate by confidence
        t_blind = time.perf_counter() - t0
        row = {
            "image": Path(path).name, "extent": round(extent, 1),
            "true_length": round(float(glow.data.motion.kernel_to_motion(kernel)[2]), 1),
            "estimated_length": round(float(blind.motion[0, 2]), 1), "confidence": round(float(blind.confidence[0]), 2),
            "input": psnr(blurry, sharp), "estimated": psnr(blind.image[0], sharp),
            "true_kernel": psnr(bd.deconvolve(blurry, kernel).clamp(0, 1), sharp),
            # the estimated kernel's deconvolution everywhere, whatever its confidence (what the gate chose from)
            "ungated": psnr(bd.deconvolve(blurry, blind.kernels[0]).clamp(0, 1), sharp),
            "blind_s": round(t_blind, 2),
        }
        if not args.no_networks:
            row["pipeline"] = psnr(run_pipe(pipe, blurry, True)[0], sharp)
            row["networks"] = psnr(run_pipe(pipe, blurry, False)[0], sharp)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def real_rows(pipe, args):
    rows = []
    for path in list_images(args.no_reference):
        image = image_to_tensor(path).float().clamp(0, 1)
        row = {"image": Path(path).name, "input": blur_effect(image)}
        t0 = time.perf_counter()
        out, result = run_pipe(pipe, image, True)
        row["pipeline_s"] = round(time.perf_counter() - t0, 2)
        row["pipeline"] = blur_effect(out)
        row["kernel_length"] = round(float(result.motion_fields[0][2].mean()), 1)
        row["confidence"] = round(result.blur_confidences[0], 2)
        row["networks"] = blur_effect(run_pipe(pipe, image, False)[0])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def sharp_rows(pipe, args):
    files = list_images(args.sharp)
    rows = []
    for path in files[: args.max_images] if args.max_images else files:
        sharp = image_to_tensor(path).float().clamp(0, 1)
        compressed = jpeg(sharp, 90)
        out, result = run_pipe(pipe, compressed, True)
        row = {"image": Path(path).name, "input": psnr(compressed, sharp),
               "estimated": psnr(pipe.blind_deconvolution(compressed[None]).image[0], sharp),
               "pipeline": psnr(out, sharp), "networks": psnr(run_pipe(pipe, compressed, False)[0], sharp),
               "confidence": round(result.blur_confidences[0], 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def summary(rows):
    """Mean per kernel-length bin and overall: PSNR of every row, gain, error ratio, share made worse."""
    bins = [(0, 20), (20, 30), (30, 45), (45, 60), (60, 1e9)]
    keys = [k for k in ("input", "estimated", "ungated", "true_kernel", "pipeline", "networks") if k in rows[0]]
    out = []
    for lo, hi in bins + [(None, None)]:
        sel = [r for r in rows if lo is None or lo <= r["true_length"] < hi]
        if not sel:
            continue
        line = {"bin": "all" if lo is None else f"{lo}-{int(hi) if hi < 1e9 else ''} px", "n": len(sel)}
        for k in keys:
            line[k] = float(np.mean([r[k] for r in sel]))
        line["error_ratio_db"] = float(np.mean([r["true_kernel"] - r["estimated"] for r in sel]))
        line["worse_than_input"] = float(np.mean([r["estimated"] < r["input"] for r in sel]))
        line["worst_gain"] = float(min(r["estimated"] - r["input"] for r in sel))
        if "pipeline" in keys:
            line["pipeline_worst_gain"] = float(min(r["pipeline"] - r["input"] for r in sel))
        out.append(line)
    return out


def markdown(summ, real, sharp=()):
    lines = []
    if sharp:
        keys = ("input", "estimated", "pipeline", "networks")
        lines += ["| sharp photo (JPEG q90) | " + " | ".join(keys) + " | confidence |", "|---" * 6 + "|"]
        for r in list(sharp) + [{"image": "**mean**", **{k: float(np.mean([r[k] for r in sharp])) for k in keys},
                                 "confidence": float(np.mean([r["confidence"] for r in sharp]))}]:
            lines.append(f"| {r['image']} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + f" | {r['confidence']:.2f} |")
        lines.append("")
    if summ:
        keys = [k for k in ("input", "estimated", "ungated", "true_kernel", "pipeline", "networks") if k in summ[0]]
        lines.append("| true kernel length | n | " + " | ".join(keys) + " | error ratio (dB) | worse than input | worst gain |")
        lines.append("|---" * (len(keys) + 5) + "|")
        for s in summ:
            lines.append(f"| {s['bin']} | {s['n']} | " + " | ".join(f"{s[k]:.2f}" for k in keys)
                         + f" | {s['error_ratio_db']:.2f} | {100 * s['worse_than_input']:.0f}% | {s['worst_gain']:+.2f} |")
    if real:
        lines += ["", "| photo | input blur_effect | pipeline | networks only | kernel length px | confidence | s |",
                  "|---|---|---|---|---|---|---|"]
        for r in real:
            lines.append(f"| {r['image']} | {r['input']:.3f} | {r['pipeline']:.3f} | {r['networks']:.3f} | "
                         f"{r['kernel_length']} | {r['confidence']} | {r['pipeline_s']} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from glow.pipeline_glowdeblur import GLOWDeblurPipeline

    pipe = GLOWDeblurPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    if pipe.blind_deconvolution is None:
        raise SystemExit(f"{args.model} has no blind_deconvolution component")
    if args.blind_config:  # one setting changed, the rest as saved (how docs/deconvolution.md tuned them)
        bd, override = pipe.blind_deconvolution, json.loads(args.blind_config)
        # from_config keeps unknown keys without using them: a setting the model folder's code lacks must not pass
        # silently as measured
        unknown = sorted(set(override) - set(inspect.signature(type(bd).__init__).parameters))
        if unknown:
            raise SystemExit(f"--blind_config: {unknown} are not settings of {args.model}'s BlindDeconvolution")
        # without the private keys: "_use_default_values" would reset a setting the saved config lacks
        saved = {k: v for k, v in bd.config.items() if not k.startswith("_")}
        pipe.blind_deconvolution = type(bd).from_config({**saved, **override})
        print("blind_deconvolution:", json.dumps({k: v for k, v in pipe.blind_deconvolution.config.items()
                                                  if k in override}), flush=True)
    rows = synthetic_rows(pipe, args) if args.synthetic else []
    real = real_rows(pipe, args) if args.no_reference else []
    sharp = sharp_rows(pipe, args) if args.sharp else []
    summ = summary(rows) if rows else []
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "summary": summ, "rows": rows, "real": real, "sharp": sharp},
                                                 indent=1))
    text = markdown(summ, real, sharp)
    (out / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
