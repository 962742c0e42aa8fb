#!/usr/bin/env python
"""Evaluate a GLOWDeblur pipeline on test folders, synthetic and frame-averaged pairs, and real photos without GT.

    python train/evaluate.py --model glow/default_model --data path/to/GoPro/test --output_dir results/eval
    python train/evaluate.py --synthetic ../shared/data/val/sharp/kodak24 \
        --frames ../shared/data/train/frames/GOPR0477_11_00 --frames_last 60 \
        --no_reference ../shared/data/real_blurry --ablations all --output_dir results/eval

Sources (each flag may be repeated):
  --data DIR          paired test folders read through the SAME layout adapters as training
                      (glow.data.PairedFolderDataset, split "test", full images, no augmentation): plain blur/+sharp/
                      (also input/+target/ as Restormer/MPRNet ship GoPro/HIDE/RealBlur), GoPro, HIDE, REDS (val),
                      RealBlur-J/R (list files), BSD, RSBlur.
  --synthetic DIR     sharp images blurred by glow.data.BlurSimulator: files sorted by name, image i gets a centre
                      crop of --synthetic_crop px (0 = full image) and then the simulator with seed `--seed + i`,
                      so the pairs are identical on every run and machine.
  --frames DIR        a high-frame-rate sequence: FrameFolderDataset.val_split pairs from the last --frames_last
                      frames (fixed k = 9 frames averaged in linear light, non-overlapping windows, full frames);
                      these frames are never used for training.
  --no_reference DIR  blurry photos without GT: only the no-reference blur metric is reported.

Metrics (exact definitions in glow/metrics.py): PSNR and SSIM on uint8 RGB, no crop (GoPro convention); with
--realblur_align also the RealBlur convention (ECC homography alignment to the GT, invalid border masked; every row,
the blurry input included, is aligned the same way); skimage blur_effect (lower = sharper); seconds per megapixel of
input (wall clock of the pipeline call, batch 1, model loaded and warmed up) and CPU seconds per megapixel (process
time summed over all threads: on a shared, loaded machine it stays close to the uncontended cost while the wall clock
does not); peak resident memory of the process during the row's calls (the kernel's high-water mark is reset before
every call on Linux).

Rows (--ablations all|none|comma list; "input" and "full" are always included):
  input          the blurry input itself: the floor every row should beat
  full           the pipeline at its default settings (1 step, fidelity 0, empty prompt)
  prerecon       pre-reconstruction alone (fidelity=1: the diffusion refinement is skipped)
  no_motion      without motion guidance: the estimated motion field is replaced by zeros (the simulator's encoding of
                 "no blur") and the Wiener branch receives the blurry input unchanged instead of its deconvolution.
                 The pipeline has no switch for this, so evaluate.py patches the two component calls for this row.
  no_deconv      the networks on the blurry photo, without the per-photo blind deconvolution (deconvolve=False,
                 networks=True: the model before the blind deconvolution)
  deconv_only    the blind deconvolution alone, no networks (networks=False)
  networks_always  the networks on every photo (networks=True), also on those the default "auto" leaves alone
  semantic       with semantic guidance: a degradation prompt instead of the default empty prompt (the prompt
                 dropout mode of training). The prompt is the source's own description when it has one (synthetic:
                 the simulator's description of the blur it applied — an oracle; frames: the dataset's text), else
                 --prompt. So `full` vs `semantic` is the semantic-guidance ablation.
  steps1/2/4     1, 2 and 4 flow-matching steps
  fidelity0/0.5  fidelity 0 and 0.5 (fidelity 1 is `prerecon`)
A row whose call is identical to another row's (e.g. steps1 and fidelity0 are the defaults) is not run twice: it
reuses that row's numbers and says so in its label.

Writes results.md and results.json to --output_dir (the markdown is also printed).
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

import glow  # noqa: E402
from glow import metrics  # noqa: E402

SOURCE_PROMPT = object()  # marker: use the sample's own degradation description (or --prompt)

# name -> (label, pipeline keyword overrides; None = no pipeline call)
ROWS = {
    "input": ("blurry input (floor)", None),
    "full": ("full model (defaults)", {}),
    "prerecon": ("pre-reconstruction only (fidelity=1)", {"fidelity": 1.0}),
    "no_motion": ("without motion guidance", {"motion_guidance": False}),
    "no_deconv": ("the networks alone (deconvolve=False)", {"deconvolve": False, "networks": True}),
    "deconv_only": ("blind deconvolution alone (no networks)", {"networks": False}),
    "networks_always": ("the networks on every photo (networks=True)", {"networks": True}),
    "semantic": ("with semantic guidance (degradation prompt)", {"prompt": SOURCE_PROMPT}),
    "steps1": ("1 step", {"num_inference_steps": 1}),
    "steps2": ("2 steps", {"num_inference_steps": 2}),
    "steps4": ("4 steps", {"num_inference_steps": 4}),
    "fidelity0": ("fidelity 0", {"fidelity": 0.0}),
    "fidelity0.5": ("fidelity 0.5", {"fidelity": 0.5}),
}
ALWAYS = ["input", "full"]
DEFAULT_PROMPT = "moderate camera shake"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate a GLOWDeblur pipeline (see the module docstring).")
    parser.add_argument("--model", default=glow.DEFAULT_MODEL_PATH, help="pipeline folder or Hub id")
    parser.add_argument("--data", action="append", default=[], help="paired test folder (any supported layout)")
    parser.add_argument("--layout", default="auto", help="layout of the --data folders (default: detected)")
    parser.add_argument("--synthetic", action="append", default=[], help="sharp folder blurred by the simulator")
    parser.add_argument("--synthetic_crop", type=int, default=512, help="centre crop before blurring; 0 = full")
    parser.add_argument("--frames", action="append", default=[], help="frame folder (frame-averaged pairs)")
    parser.add_argument("--frames_last", type=int, default=60, help="validation pairs come from the last N frames")
    parser.add_argument("--no_reference", action="append", default=[], help="blurry photos without ground truth")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--ablations", default="none", help="all | none | comma list of: " + ", ".join(ROWS))
    parser.add_argument("--max_images", type=int, default=0, help="first N images of every source (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic blur and of the diffusion noise")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt of the `semantic` row where none is known")
    parser.add_argument("--realblur_align", action="store_true", help="also report the RealBlur convention")
    parser.add_argument("--save_images", action="store_true", help="write every output PNG under output_dir/images")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if not (args.data or args.synthetic or args.frames or args.no_reference):
        parser.error("give at least one source: --data, --synthetic, --frames or --no_reference")
    try:
        args.rows = select_rows(args.ablations)
    except ValueError as error:
        parser.error(str(error))
    return args


def select_rows(spec: str) -> list[str]:
    spec = spec.strip().lower()
    if spec == "all":
        return list(ROWS)
    if spec in ("", "none"):
        return list(ALWAYS)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; choose from {list(ROWS)}")
    return ALWAYS + [name for name in ROWS if name in names and name not in ALWAYS]


# ----------------------------------------------------------------------------------------------------------- sources
@dataclass
class Sample:
    name: str
    blurry: torch.Tensor  # [3, H, W] float in [0, 1]
    sharp: torch.Tensor | None
    text: str = ""  # the degradation description when the source knows it


@dataclass
class Source:
    """Images are loaded one at a time (`load(i)`), so a 1000-image test set never sits in memory."""

    name: str
    kind: str  # "paired" | "synthetic" | "frames" | "no_reference"
    path: str
    count: int
    load: Callable[[int], Sample]
    note: str = ""


def _limit(count: int, max_images: int) -> int:
    return min(count, max_images) if max_images and max_images > 0 else count


def _image_files(folder: str, flag: str) -> list[Path]:
    from glow.data.datasets import list_images

    files = list_images(folder, recursive=False)
    if not files:
        raise ValueError(f"{flag} {folder}: no images found")
    return files


def paired_source(folder: str, layout: str, max_images: int) -> Source:
    from glow.data import PairedFolderDataset
    from glow.io import image_to_tensor

    dataset = PairedFolderDataset(folder, layout=layout, resolution=None, augment=False, split="test")
    root = Path(folder)

    def load(index: int) -> Sample:
        # The pair list comes from the training adapter; the files are read here rather than through
        # `dataset[index]`, which replaces an unreadable pair by another one (right for training, wrong for scoring).
        blur_path, sharp_path = (Path(p) for p in dataset.pairs[index])
        name = str(blur_path.relative_to(root)) if blur_path.is_relative_to(root) else blur_path.name
        blurry, sharp = image_to_tensor(blur_path).clamp(0, 1), image_to_tensor(sharp_path).clamp(0, 1)
        if blurry.shape != sharp.shape:
            raise ValueError(f"{name}: blurry {tuple(blurry.shape)} and sharp {tuple(sharp.shape)} differ in size")
        return Sample(name, blurry, sharp)

    return Source(root.name or folder, "paired", folder, _limit(len(dataset), max_images), load,
                  note=f"layout {dataset.layout}")


def synthetic_source(folder: str, crop: int, seed: int, max_images: int) -> Source:
    from glow.data import BlurSimulator
    from glow.io import center_crop, image_to_tensor

    files = _image_files(folder, "--synthetic")

    def load(index: int) -> Sample:
        sharp = center_crop(image_to_tensor(files[index])[:3], crop)
        # One simulator per image, seeded by its index: each pair is reproducible on its own.
        sample = BlurSimulator(seed=seed + index)(sharp)
        return Sample(files[index].name, sample["blurry"].clamp(0, 1), sample["sharp"].clamp(0, 1), sample["text"])

    return Source(f"{Path(folder).name} (synthetic)", "synthetic", folder, _limit(len(files), max_images), load,
                  note=f"BlurSimulator seed {seed}+i, centre crop {crop or 'none'}")


def frames_source(folder: str, last: int, seed: int, max_images: int) -> Source:
    from glow.data import FrameFolderDataset

    dataset = FrameFolderDataset.val_split(folder, holdout=last, resolution=None, seed=seed)
    k = dataset.k_fixed

    def load(index: int) -> Sample:
        item = dataset[index]
        middle = dataset.files[(index * k) % max(1, len(dataset.files) - k + 1) + k // 2]
        return Sample(middle.name, item["blurry"], item["sharp"], item["text"])

    return Source(f"{Path(folder).name} (frames)", "frames", folder, _limit(len(dataset), max_images), load,
                  note=f"last {last} frames, {k} averaged per pair")


def no_reference_source(folder: str, max_images: int) -> Source:
    from glow.io import image_to_tensor

    files = _image_files(folder, "--no_reference")

    def load(index: int) -> Sample:
        return Sample(files[index].name, image_to_tensor(files[index])[:3].clamp(0, 1), None)

    return Source(f"{Path(folder).name} (no reference)", "no_reference", folder, _limit(len(files), max_images), load)


def build_sources(args) -> list[Source]:
    sources = [paired_source(folder, args.layout, args.max_images) for folder in args.data]
    sources += [synthetic_source(f, args.synthetic_crop, args.seed, args.max_images) for f in args.synthetic]
    sources += [frames_source(f, args.frames_last, args.seed, args.max_images) for f in args.frames]
    sources += [no_reference_source(folder, args.max_images) for folder in args.no_reference]
    return sources


# ------------------------------------------------------------------------------------------------ running the model
def _reset_peak_rss() -> None:
    """Reset this process's high-water mark (Linux `clear_refs` 5) so each call's peak is its own."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")


def _peak_rss_mib() -> float:
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    # elsewhere: the process-lifetime peak (never reset); ru_maxrss is bytes on macOS, KiB on Linux
    scale = 1024.0 * 1024.0 if platform.system() == "Darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def load_pipeline(model: str):
    from glow.pipeline_glowdeblur import GLOWDeblurPipeline

    pipe = GLOWDeblurPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def without_motion_guidance(pipe):
    """Zero motion field + no Wiener deconvolution + no blind deconvolution, by patching the component calls for
    the duration.

    GLOWDeblurPipeline has no switch for this ablation; the patch is on the instances only and always undone.
    """
    estimator, prerecon, blind = pipe.motion_estimator, pipe.prereconstruction, pipe.blind_deconvolution
    estimate = estimator.forward

    def zero_motion(blurry, return_dict=True):
        output = estimate(blurry, return_dict=True)
        output.motion = torch.zeros_like(output.motion)
        return output if return_dict else output.to_tuple()

    estimator.forward = zero_motion
    if hasattr(prerecon, "wiener"):
        prerecon.wiener = lambda blurry, kernels, noise_sigma=None: blurry
    if blind is not None:  # no estimated kernel either: the photo reaches the networks as it is
        pipe.blind_deconvolution = None
    try:
        yield
    finally:
        pipe.blind_deconvolution = blind
        del estimator.forward
        if "wiener" in vars(prerecon):
            del prerecon.wiener


def call_kwargs(overrides: dict, sample: Sample, args) -> dict:
    kwargs = dict(overrides)
    kwargs.pop("motion_guidance", None)
    if kwargs.get("prompt") is SOURCE_PROMPT:
        kwargs["prompt"] = sample.text or args.prompt
    return kwargs


def run_pipeline(pipe, blurry: torch.Tensor, kwargs: dict, motion_guidance: bool, seed: int) -> torch.Tensor:
    """One pipeline call on one image -> `[3, H, W]` float in [0, 1]."""
    if kwargs.get("networks") is False and pipe.blind_deconvolution is None:  # nothing but the networks to switch off
        return blurry.float().clamp(0, 1)
    generator = torch.Generator().manual_seed(seed)
    with without_motion_guidance(pipe) if not motion_guidance else contextlib.nullcontext():
        output = pipe(blurry, generator=generator, output_type="pt", **kwargs)
    return output.images[0].float().clamp(0, 1)


def _pipeline_defaults(pipe) -> dict:
    return {name: p.default for name, p in inspect.signature(pipe.__call__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _call_key(overrides: dict, defaults: dict) -> tuple:
    """Rows with the same key make the same pipeline call."""
    effective = {**defaults, **{k: v for k, v in overrides.items() if k != "motion_guidance"}}
    effective["prompt"] = "<source>" if effective.get("prompt") is SOURCE_PROMPT else (effective.get("prompt") or "")
    effective["motion_guidance"] = overrides.get("motion_guidance", True)
    return tuple(sorted((k, repr(v)) for k, v in effective.items()))


# ----------------------------------------------------------------------------------------------------------- scoring
def score(output: torch.Tensor, sample: Sample, realblur: bool) -> dict:
    result = {"blur_effect": metrics.blur_effect(output)}
    if sample.sharp is not None:
        result["psnr"] = metrics.psnr(output, sample.sharp)
        result["ssim"] = metrics.ssim(output, sample.sharp)
        if realblur:
            result["psnr_realblur"], result["ssim_realblur"] = metrics.realblur_psnr_ssim(output, sample.sharp)
    return result


def _mean(values: list[float]) -> float | None:
    # PSNR is inf for a perfect image; the mean is then inf too, which is the honest summary
    return float(np.mean(values)) if values else None


def evaluate_source(pipe, source: Source, rows: list[str], args) -> dict:
    defaults = _pipeline_defaults(pipe) if pipe is not None else {}
    first_with_key, same_as = {}, {}
    for row in rows:
        overrides = ROWS[row][1]
        if overrides is None:
            continue
        key = _call_key(overrides, defaults)
        if key in first_with_key:
            same_as[row] = first_with_key[key]
        else:
            first_with_key[key] = row
    run_rows = [row for row in rows if row not in same_as]
    skipped = []
    stats = {row: {"per_image": [], "seconds": 0.0, "cpu_seconds": 0.0, "megapixels": 0.0, "peak": 0.0}
             for row in run_rows}

    for index in range(source.count):
        try:
            sample = source.load(index)
        except (ValueError, OSError) as error:  # glow.io.ImageReadError is a ValueError
            # scored images are never silently replaced: the file is reported as skipped
            print(f"  [{index + 1}/{source.count}] SKIPPED: {error}", flush=True)
            skipped.append(str(error))
            continue
        for row in run_rows:
            overrides = ROWS[row][1]
            if overrides is None:
                output = sample.blurry
            else:
                _reset_peak_rss()
                start, cpu_start = time.perf_counter(), time.process_time()
                output = run_pipeline(pipe, sample.blurry, call_kwargs(overrides, sample, args),
                                      overrides.get("motion_guidance", True), args.seed + index)
                stats[row]["seconds"] += time.perf_counter() - start
                stats[row]["cpu_seconds"] += time.process_time() - cpu_start
                stats[row]["peak"] = max(stats[row]["peak"], _peak_rss_mib())
                stats[row]["megapixels"] += sample.blurry.shape[-1] * sample.blurry.shape[-2] / 1e6
                if output.shape != sample.blurry.shape:
                    raise RuntimeError(f"{row}: output {tuple(output.shape)} != input {tuple(sample.blurry.shape)}")
            if args.save_images:
                save_image(output, Path(args.output_dir) / "images" / _slug(source.name) / row / _slug(sample.name))
            stats[row]["per_image"].append({"name": sample.name, **score(output, sample, args.realblur_align)})
        print(f"  [{index + 1}/{source.count}] {sample.name}", flush=True)

    results = {}
    for row in rows:
        ran = same_as.get(row, row)
        stat, label = stats[ran], ROWS[row][0]
        if row in same_as:
            label += f" (= {ROWS[ran][0]})"
        summary = {"label": label, "images": len(stat["per_image"])}
        if row in same_as:
            summary["same_call_as"] = ran
        for key in ("psnr", "ssim", "psnr_realblur", "ssim_realblur", "blur_effect"):
            if stat["per_image"] and key in stat["per_image"][0]:
                summary[key] = _mean([item[key] for item in stat["per_image"]])
        is_model = ROWS[ran][1] is not None
        per_mp = is_model and stat["megapixels"] > 0
        summary["seconds_per_megapixel"] = stat["seconds"] / stat["megapixels"] if per_mp else None
        summary["cpu_seconds_per_megapixel"] = stat["cpu_seconds"] / stat["megapixels"] if per_mp else None
        summary["peak_rss_mib"] = stat["peak"] if is_model else None
        summary["per_image"] = stat["per_image"]
        results[row] = summary
    return results, skipped


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def save_image(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(metrics.to_uint8(image)).save(path)


# ----------------------------------------------------------------------------------------------------------- reports
def _fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:.{digits}f}"
    return str(value)


def markdown_table(report: dict) -> str:
    lines = [f"Model `{report['model']}`, seed {report['seed']}, {report['torch_threads']} torch threads, "
             f"load average at start {report['load_average']}. Command: `{report['command']}`", ""]
    for source in report["sources"]:
        has_gt = source["kind"] != "no_reference"
        realblur = report["realblur_align"] and has_gt
        note = f"; {source['note']}" if source["note"] else ""
        note += f"; {len(source['skipped'])} unreadable files skipped" if source["skipped"] else ""
        lines += [f"**{source['name']}** ({source['kind']}, {source['images']} images{note})", ""]
        header = ["row"] + (["PSNR", "SSIM"] if has_gt else [])
        header += (["PSNR (RealBlur)", "SSIM (RealBlur)"] if realblur else [])
        header += ["blur_effect ↓", "s / MP", "CPU s / MP", "peak RSS MiB"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in source["rows"].values():
            cells = [row["label"]]
            if has_gt:
                cells += [_fmt(row.get("psnr"), 2), _fmt(row.get("ssim"), 4)]
            if realblur:
                cells += [_fmt(row.get("psnr_realblur"), 2), _fmt(row.get("ssim_realblur"), 4)]
            cells += [_fmt(row.get("blur_effect"), 4), _fmt(row.get("seconds_per_megapixel"), 2),
                      _fmt(row.get("cpu_seconds_per_megapixel"), 2), _fmt(row.get("peak_rss_mib"), 0)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    sources = build_sources(args)
    pipe = None
    if any(ROWS[row][1] is not None for row in args.rows):
        pipe = load_pipeline(args.model)
        # warm-up: the text encoder is loaded lazily on the first call; keep that out of the timings
        run_pipeline(pipe, torch.full((3, 64, 64), 0.5), {}, True, 0)

    command = [Path(sys.argv[0]).name] + (list(argv) if argv is not None else sys.argv[1:])
    report = {
        "model": args.model, "seed": args.seed, "rows": args.rows, "realblur_align": args.realblur_align,
        "torch_threads": torch.get_num_threads(), "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "command": " ".join(command), "sources": [],
    }
    with torch.inference_mode():
        for source in sources:
            print(f"{source.name}: {source.count} images", flush=True)
            rows, skipped = evaluate_source(pipe, source, args.rows, args)
            report["sources"].append({"name": source.name, "kind": source.kind, "path": source.path,
                                      "note": source.note, "images": source.count - len(skipped),
                                      "skipped": skipped, "rows": rows})
    markdown = markdown_table(report)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.md").write_text(markdown + "\n")
    (output_dir / "results.json").write_text(json.dumps(_json_safe(report), indent=1, allow_nan=False) + "\n")
    print(markdown)
    return report


if __name__ == "__main__":
    main()
