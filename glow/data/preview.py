"""Contact sheet of simulator samples: blurry | sharp | motion field | centre PSF + description.

    python -m glow.data.preview --input ../shared/data/val/sharp --out sheet.png --n 8 --seed 0

The motion field is drawn as a colour wheel (hue = blur direction, saturation = directionality, brightness =
length, see `glow.data.motion.motion_to_color`) with a white streak per 32 px showing direction and length.
"""
from __future__ import annotations

import argparse
import math
import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..io import to_pil
from .datasets import SharpFolderDataset
from .motion import MOTION_PATCH, motion_to_color, motion_to_polar
from .simulator import BLUR_KINDS


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def motion_panel(motion: torch.Tensor, valid: torch.Tensor, size: tuple[int, int], max_length: float = 40.0
                 ) -> Image.Image:
    """Colour-wheel image of a `[3, h8, w8]` field at image `size` (h, w), with streaks every 4 patches."""
    h, w = size
    color = motion_to_color(motion, max_length) * valid.clamp(0, 1)
    up = F.interpolate(color.unsqueeze(0), size=(h, w), mode="nearest")[0]
    panel = to_pil(up)
    draw = ImageDraw.Draw(panel)
    theta, d, length = motion_to_polar(motion, dim=0)
    step = 4
    for i in range(step // 2, motion.shape[1], step):
        for j in range(step // 2, motion.shape[2], step):
            if valid[0, i, j] <= 0:
                continue
            cx, cy = (j + 0.5) * MOTION_PATCH, (i + 0.5) * MOTION_PATCH
            half = 0.5 * min(float(length[i, j]), step * MOTION_PATCH) * max(float(d[i, j]), 0.15)
            dx, dy = half * math.cos(float(theta[i, j])), half * math.sin(float(theta[i, j]))
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=(255, 255, 255), width=1)
    return panel


def kernel_panel(kernel: torch.Tensor, size: int) -> Image.Image:
    k = kernel / kernel.max().clamp_min(1e-12)
    k = k.clamp(0, 1) ** 0.5  # show faint tails
    return to_pil(k.unsqueeze(0)).resize((size, size), Image.NEAREST).convert("RGB")


def make_sheet(samples: list[dict], tile: int = 256, text_width: int = 300) -> Image.Image:
    rows = []
    font = _font(13)
    for s in samples:
        h, w = s["sharp"].shape[-2:]
        scale = tile / max(h, w)
        th, tw = max(1, round(h * scale)), max(1, round(w * scale))
        blurry = to_pil(s["blurry"]).resize((tw, th), Image.BILINEAR)
        sharp = to_pil(s["sharp"]).resize((tw, th), Image.BILINEAR)
        motion = motion_panel(s["motion"], s["motion_valid"], (h, w)).resize((tw, th), Image.NEAREST)
        kh, kw = s["kernel"].shape[:2]
        kernel = kernel_panel(s["kernel"][kh // 2, kw // 2], 96)
        row = Image.new("RGB", (3 * (tw + 4) + text_width, max(th, 96)), (24, 24, 24))
        for n, im in enumerate((blurry, sharp, motion)):
            row.paste(im, (n * (tw + 4), 0))
        x0 = 3 * (tw + 4)
        if s["kernel_valid"][kh // 2, kw // 2] > 0:
            row.paste(kernel, (x0 + 4, 0))
        draw = ImageDraw.Draw(row)
        lines = textwrap.wrap(s["text"] or "(no description)", 38)
        lines += textwrap.wrap("kinds: " + ", ".join(s["kinds"]), 38)
        if s["motion_valid"].mean() > 0:
            lines.append(f"mean length {float(s['motion'][2].mean()):.1f} px")
        draw.multiline_text((x0 + 4, 100), "\n".join(lines), fill=(230, 230, 230), font=font)
        rows.append(row)
    header_h = 22
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, header_h + sum(r.height + 4 for r in rows)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    tw = rows[0].width - text_width
    for n, label in enumerate(("blurry", "sharp (target)", "motion field")):
        draw.text((n * tw / 3 + 4, 4), label, fill=(255, 255, 255), font=_font(14))
    draw.text((tw + 4, 4), "centre PSF, description", fill=(255, 255, 255), font=_font(14))
    y = header_h
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 4
    return sheet


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="a sharp image or a folder of sharp images (recursive)")
    parser.add_argument("--out", default="sheet.png")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--tile", type=int, default=256, help="panel size in the sheet (px)")
    parser.add_argument("--colors", type=int, default=0, help="quantise the PNG to this many colours (smaller file)")
    parser.add_argument("--kinds", default=None, help=f"comma-separated blur kinds to cycle through {BLUR_KINDS}")
    args = parser.parse_args(argv)
    ds = SharpFolderDataset(args.input, resolution=args.resolution, seed=args.seed, length=max(args.n, 1))
    kinds = args.kinds.split(",") if args.kinds else None
    samples = []
    for i in range(args.n):
        if kinds:  # same crop pipeline, forced kind
            rng = np.random.default_rng([args.seed, i])
            crop = ds._crop(ds.sample_image(i), rng)
            samples.append(ds.simulator(crop, seed=int(rng.integers(1 << 62)), kind=kinds[i % len(kinds)]))
        else:
            samples.append(ds[i])
    sheet = make_sheet(samples, tile=args.tile)
    if args.colors:
        sheet = sheet.quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}, {len(samples)} samples)")


if __name__ == "__main__":
    main()
