#!/usr/bin/env python
"""Before/after crops of real blurry photos (no ground truth) for the README: one row per photo.

    python train/figure_real.py --model glow/default_model --input ../shared/data/real_blurry \
        --out docs/real_photos.png

Each row: the blurry crop, the networks alone (`deconvolve=False`, the pipeline before blind deconvolution), the full
pipeline at each of `--steps` (default: its 1-step default), the deconvolution alone (`networks=False`), and the blur
kernel estimated for the photo (with the share of its deconvolution that was applied), with scikit-image's
no-reference `blur_effect` of each crop (lower = sharper). The crop is the `--crop` px window with the most gradient
energy in the blurry photo (deterministic, chosen before deblurring), so the figure shows detail, not sky. The whole photo is deblurred (tiles and all), then cropped.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import glow  # noqa: E402
from glow import metrics  # noqa: E402
from glow.data.datasets import list_images  # noqa: E402
from glow.io import load_image  # noqa: E402
from glow.visualize import kernel_picture  # noqa: E402

LABEL_H = 18


def busiest_window(gray: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the size x size window with the largest summed gradient magnitude (integral image)."""
    h, w = gray.shape
    size_y, size_x = min(size, h), min(size, w)
    gy, gx = np.gradient(gray.astype(np.float64))
    energy = np.pad(np.hypot(gx, gy).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (energy[size_y:, size_x:] - energy[:-size_y, size_x:] - energy[size_y:, :-size_x]
            + energy[:-size_y, :-size_x])
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y), int(x)


def labelled(tile: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (tile.width, tile.height + LABEL_H), "white")
    out.paste(tile, (0, LABEL_H))
    ImageDraw.Draw(out).text((3, 3), text, fill="black")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=glow.DEFAULT_MODEL_PATH, help="pipeline folder or Hub id")
    parser.add_argument("--input", required=True, help="folder of blurry photos")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--steps", default="1", help="comma list of step counts, one full-pipeline column each")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from glow.pipeline_glowdeblur import GLOWDeblurPipeline

    pipe = GLOWDeblurPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    files = list_images(args.input, recursive=False)
    if not files:
        parser.error(f"no images in {args.input}")
    rows = []
    for path in files:
        blurry = load_image(path).convert("RGB")
        y, x = busiest_window(np.asarray(blurry.convert("L")), args.crop)
        box = (x, y, x + min(args.crop, blurry.width), y + min(args.crop, blurry.height))
        networks = pipe(blurry, deconvolve=False, networks=True, generator=torch.Generator().manual_seed(args.seed))
        columns = [("blurry", blurry), ("networks only", networks.images[0])]
        for steps in (int(s) for s in args.steps.split(",")):
            out = pipe(blurry, num_inference_steps=steps, generator=torch.Generator().manual_seed(args.seed))
            columns.append((f"GLOWDeblur {steps} step{'s' if steps > 1 else ''}", out.images[0]))
        if pipe.blind_deconvolution is not None:
            columns.append(("deconvolution only", pipe(blurry, networks=False).images[0]))
        tiles = []
        for name, image in columns:
            crop = image.crop(box)
            tiles.append(labelled(crop, f"{name}  blur {metrics.blur_effect(np.asarray(crop)):.3f}"))
        if out.kernels:
            side = box[3] - box[1]
            tiles.append(labelled(kernel_picture(out.kernels[0], side) or Image.new("RGB", (side, side)),
                                  f"kernel, applied {out.blur_confidences[0]:.0%}"))
        row = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), max(t.height for t in tiles)),
                        "white")
        left = 0
        for tile in tiles:
            row.paste(tile, (left, 0))
            left += tile.width + 4
        rows.append(labelled(row, f"{path.name} ({blurry.width}x{blurry.height}), crop at x={x}, y={y}"))
        print(f"{path.name}: crop {box}", flush=True)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 6 for r in rows)), "white")
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height + 6
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
