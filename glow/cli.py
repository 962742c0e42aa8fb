"""glow-deblur: deblur photos and whole folders from the command line.

    glow-deblur photo.jpg holiday/ "scans/*.tif" -o deblurred/            # files, folders, globs
    glow-deblur phone_dump/ -o out/ --recursive --format same --report out/report.jsonl
    accelerate launch -m glow.cli phone_dump/ -o out/ --recursive          # several processes / GPUs

A UI layer like app.py: it reads files, calls `GLOWDeblurPipeline` once per photo with one pipeline per process,
and writes files; no model logic here. Outputs keep each file's path relative to the folder it was found in, and its
name; PNG by default (`--format same`: the input's format). EXIF is kept with the orientation applied and reset, the
ICC profile is kept. An existing output is skipped (`--overwrite` redoes it), so an interrupted run resumes; each
output is written to a temporary file and renamed, so a crash or a second process never leaves half an image; an
input is never overwritten. An unreadable file gets one line and the run goes on; the exit status is 1 when any
file failed. Under `accelerate launch` the files are split between the processes (`split_between_processes`).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "collect_inputs", "plan_outputs"]

NETWORKS_MODES = {"auto": "auto", "always": True, "never": False}  # --networks -> the pipeline's `networks`
_SAME_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
                ".bmp": "BMP"}  # other inputs (GIF, PPM, ...) are written as PNG
_EXIF_FORMATS = {"JPEG", "PNG", "WEBP"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glow-deblur", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", help="Image files, folders or glob patterns (quote them).")
    p.add_argument("-o", "--output_dir", "--output-dir", required=True, help="Where the deblurred images go.")
    p.add_argument("-r", "--recursive", action="store_true", help="Also look inside sub-folders of folders.")
    p.add_argument("--format", choices=["png", "same"], default="png", help="Output format.")
    p.add_argument("--overwrite", action="store_true", help="Redo outputs that already exist.")
    p.add_argument("--model", default=None, help="Pipeline folder or Hub id (default: the shipped model).")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: the process's accelerator).")
    p.add_argument("--fidelity", type=float, default=0.0, help="0: full restoration, 1: pre-reconstruction only.")
    p.add_argument("--steps", type=int, default=1, help="Diffusion steps (1-4).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default=None, help="Text describing the scene (semantic guidance).")
    p.add_argument("--tile-size", "--tile_size", dest="tile_size", type=int, default=512,
                   help="Tile size in px (multiple of 64); 0 = the whole image at once.")
    p.add_argument("--no-deconvolve", dest="deconvolve", action="store_false",
                   help="Skip the per-photo blur estimation and deconvolution (networks only).")
    p.add_argument("--networks", choices=("auto", "always", "never"), default="auto",
                   help="auto: the networks clean up photos that are blurred or noisy and leave sharp, clean ones "
                        "as they are (they would soften them); always; never: the deconvolution alone "
                        "(docs/pipeline.md).")
    p.add_argument("--no-networks", "--deconvolution-only", dest="networks", action="store_const", const="never",
                   help="The same as --networks never: the per-photo deconvolution alone, faster, but noise and "
                        "ringing stay (docs/deconvolution.md).")
    p.add_argument("--save-kernel", "--save_kernel", dest="save_kernel", action="store_true",
                   help="Also write the estimated blur kernel as <name>_kernel.png beside each output.")
    p.add_argument("--save-motion", "--save_motion", dest="save_motion", action="store_true",
                   help="Also write the estimated motion field as <name>_motion.png beside each output.")
    p.add_argument("--report", default=None, help="Append one JSON line per image to this file.")
    return p


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def collect_inputs(inputs: list[str], recursive: bool) -> tuple[list[tuple[Path, Path]], list[str]]:
    """-> ([(file, path relative to where it was found)], [problems]) in a fixed order, without duplicates."""
    from .io import IMAGE_EXTENSIONS

    found, problems, seen = [], [], set()

    def add(path: Path, rel: Path):
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append((path, rel))

    for text in inputs:
        path = Path(text)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                problems.append(f"{text}: no images in this folder" + ("" if recursive else " (try --recursive)"))
            for f in files:
                add(f, f.relative_to(path))
        elif path.is_file():
            add(path, Path(path.name))
        elif _is_pattern(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
            if not matches:
                problems.append(f"{text}: no file matches this pattern")
            for m in matches:
                add(m, Path(m.name))
        else:
            problems.append(f"{text}: no such file or folder")
    return found, problems


def plan_outputs(found, output_dir: Path, fmt: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    """-> ([(input, output)], [problems]): an output that would replace an input or another output is refused."""
    inputs = {src.resolve() for src, _ in found}
    plan, problems, taken = [], [], {}
    for src, rel in found:
        suffix = src.suffix.lower() if fmt == "same" and src.suffix.lower() in _SAME_FORMAT else ".png"
        dst = output_dir / rel.with_suffix(suffix)
        key = dst.resolve()
        if key in inputs:
            problems.append(f"{src}: its output {dst} would overwrite an input; choose another --output_dir")
        elif key in taken:
            problems.append(f"{src}: same output {dst} as {taken[key]}; give the folders one at a time")
        else:
            taken[key] = src
            plan.append((src, dst))
    return plan, problems


def _metadata(src: Path) -> tuple[bytes | None, bytes | None]:
    """(EXIF with the orientation reset to 1, ICC profile) of the input file, where it has them."""
    from PIL import Image

    with Image.open(src) as im:
        icc = im.info.get("icc_profile")
        exif = im.getexif()
        if not exif:
            return None, icc
        exif[0x0112] = 1  # the pixels are written upright: the orientation was applied on reading
        return exif.tobytes(), icc


def _save_atomic(image, dst: Path, fmt: str, exif: bytes | None = None, icc: bytes | None = None) -> None:
    """Write to a hidden temporary file beside `dst`, then rename: readers never see half an image."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha
    if exif and fmt in _EXIF_FORMATS:
        options["exif"] = exif
    if icc:
        options["icc_profile"] = icc
    try:
        image.save(tmp, format=fmt, **options)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _to_pil(array):
    """float HxWxC in [0, 1] (C = 1, 3, 4) -> 8-bit PIL image."""
    import numpy as np
    from PIL import Image

    arr = (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (None where the platform has no `resource` module)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def deblur_file(pipe, src: Path, dst: Path, args, tile_progress=None) -> dict:
    """Deblur one file into `dst` (+ kernel / motion pictures); -> its report record."""
    import torch

    from .io import load_image_array
    from .visualize import describe_motion_field, draw_motion_field, kernel_picture

    started = time.perf_counter()
    array, _ = load_image_array(src)  # EXIF orientation applied; 16-bit kept; raises ImageReadError
    exif, icc = _metadata(src)
    output = pipe(array, prompt=args.prompt, num_inference_steps=args.steps, fidelity=args.fidelity,
                  generator=torch.Generator().manual_seed(args.seed), tile_size=args.tile_size or None,
                  deconvolve=args.deconvolve, networks=NETWORKS_MODES[args.networks], output_type="np",
                  callback_on_tile_end=tile_progress)
    fmt = _SAME_FORMAT.get(dst.suffix.lower(), "PNG")
    restored = _to_pil(output.images[0])
    _save_atomic(restored, dst, fmt, exif, icc)
    kernel = output.kernels[0] if output.kernels else None
    if args.save_kernel and kernel is not None:
        picture = kernel_picture(kernel, 256)
        if picture is not None:
            _save_atomic(picture, dst.with_name(dst.stem + "_kernel.png"), "PNG")
    if args.save_motion:
        _save_atomic(draw_motion_field(restored.convert("RGB"), output.motion_fields[0], kernel=kernel),
                     dst.with_name(dst.stem + "_motion.png"), "PNG")
    confidence = output.blur_confidences[0] if output.blur_confidences else None
    weight = output.networks_weights[0] if getattr(output, "networks_weights", None) else None  # older folders: none
    return {"input": str(src), "output": str(dst), "width": int(array.shape[1]), "height": int(array.shape[0]),
            "seconds": round(time.perf_counter() - started, 3),
            "blur": describe_motion_field(output.motion_fields[0]),
            "blur_confidence": None if confidence is None else round(float(confidence), 4),
            "networks_weight": None if weight is None else round(float(weight), 4),
            "peak_rss_mb": _peak_rss_mb(),
            "settings": {k: getattr(args, k) for k in ("fidelity", "steps", "seed", "prompt", "tile_size",
                                                       "deconvolve", "networks")}}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.steps <= 4:
        print("error: --steps must be between 1 and 4", file=sys.stderr)
        return 2
    if args.networks == "never" and not args.deconvolve:
        print("error: --networks never (--no-networks) returns the deconvolution alone; it cannot be combined "
              "with --no-deconvolve",
              file=sys.stderr)
        return 2
    if args.tile_size and args.tile_size % 64:
        print(f"error: --tile-size must be a multiple of 64 (got {args.tile_size})", file=sys.stderr)
        return 2
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    import glow

    from .io import ImageReadError
    from .pipeline_glowdeblur import GLOWDeblurPipeline

    import torch

    # as in training: on a machine without an accelerator, `accelerate launch --multi_gpu` runs CPU processes over gloo
    state = PartialState(cpu=not torch.accelerator.is_available())
    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    found, problems = collect_inputs(args.inputs, args.recursive)
    plan, refused = plan_outputs(found, output_dir, args.format)
    problems += refused
    todo = [(s, d) for s, d in plan if args.overwrite or not d.exists()]
    skipped = len(plan) - len(todo)
    if state.is_main_process:
        for line in problems:
            print(f"failed: {line}", file=sys.stderr)
    done, failed = 0, 0
    with state.split_between_processes(todo) as mine:
        if mine:
            pipe = GLOWDeblurPipeline.from_pretrained(args.model or glow.DEFAULT_MODEL_PATH)
            pipe.to(args.device or state.device)
            pipe.set_progress_bar_config(disable=True)
            # one bar, on the main process (None: tqdm's own choice, off when stderr is not a terminal)
            bar = tqdm(mine, desc="deblurring", unit="photo", disable=None if state.is_main_process else True)

            def tile_progress(pipe, tile_index, num_tiles, callback_kwargs):  # tiles x passes of this photo
                if num_tiles > 1:
                    bar.set_postfix_str(f"part {tile_index + 1}/{num_tiles}")

            for src, dst in bar:
                try:
                    record = deblur_file(pipe, src, dst, args, tile_progress)
                except (ImageReadError, OSError, ValueError, MemoryError, RuntimeError) as err:
                    # one line per bad file, and on to the next: nothing already written is touched
                    tqdm.write(f"failed: {src}: {err}", file=sys.stderr)
                    failed += 1
                    continue
                done += 1
                if args.report:
                    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
                    with open(args.report, "a", encoding="utf-8") as f:  # one short line per write: no interleaving
                        f.write(json.dumps(record) + "\n")
    counts = gather_object([(done, failed)]) if state.num_processes > 1 else [(done, failed)]
    done, failed = sum(c[0] for c in counts), sum(c[1] for c in counts) + len(problems)
    if state.is_main_process:
        print(f"done {done}, skipped {skipped}, failed {failed} in {time.perf_counter() - started:.1f} s -> "
              f"{output_dir}" + (" (skipped: the output is already there; --overwrite redoes it)" if skipped else ""))
    # torch asks for it before exit; without it one two-process CI run of 10 aborted at exit ("terminate called
    # without an active exception", 2026-12-06 night)
    state.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
