"""Pattern statistics of the simulator's default mix (or a given config).

    python -m glow.data.stats --n 500 [--input ../shared/data/val/sharp] [--plot stats.png] [--resolution 128]

Prints the blur-kind frequencies, the global vs spatially varying share, the camera-step frequencies, the
orientation histogram (directional patches, d > 0.3) and the blur-length distribution (per-patch L). Without
`--input` the samples blur smooth random images (the statistics of the patterns barely depend on the content).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch
from PIL import Image, ImageDraw

from .motion import motion_to_polar
from .simulator import GLOBAL_KINDS, BlurSimulator, SimulatorConfig

LENGTH_BINS = [0, 2, 5, 10, 20, 40, 80, 1e9]
ORIENTATION_BINS = 12  # 15 degrees each


def _synthetic(rng: np.random.Generator, size: int) -> torch.Tensor:
    coarse = torch.from_numpy(rng.random((1, 3, size // 16 + 2, size // 16 + 2)).astype(np.float32))
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
    img = img + 0.15 * torch.from_numpy(rng.standard_normal((3, size, size)).astype(np.float32))
    return img.clamp(0, 1)


def collect(n: int, resolution: int = 128, seed: int = 0, config: SimulatorConfig | None = None,
            input_path: str | None = None) -> dict:
    """Simulate `n` samples and return the statistics as a JSON-able dict."""
    rng = np.random.default_rng(seed)
    if input_path:
        from .datasets import SharpFolderDataset

        source = SharpFolderDataset(input_path, resolution=resolution, simulator=config, seed=seed, length=n)
        draw = source.__getitem__
    else:
        sim = BlurSimulator(config, seed=seed)
        draw = lambda i: sim(_synthetic(rng, resolution))  # noqa: E731
    kinds, tags = Counter(), Counter()
    orient = np.zeros(ORIENTATION_BINS)
    length_hist = np.zeros(len(LENGTH_BINS) - 1)
    sample_lengths = []
    global_count = 0
    for i in range(n):
        s = draw(i)
        kind = s["kinds"][0]
        kinds[kind] += 1
        tags.update(s["kinds"][1:])
        global_count += kind in GLOBAL_KINDS or kind == "none"
        theta, d, length = motion_to_polar(s["motion"], dim=0)
        valid = s["motion_valid"][0] > 0
        directional = valid & (d > 0.3)
        orient += np.histogram(np.degrees(theta[directional].numpy()), bins=ORIENTATION_BINS, range=(0, 180))[0]
        length_hist += np.histogram(length[valid].numpy(), bins=LENGTH_BINS)[0]
        if valid.any():
            sample_lengths.append(float(length[valid].mean()))
    sl = np.array(sample_lengths) if sample_lengths else np.zeros(1)
    return {
        "n": n,
        "resolution": resolution,
        "kinds": {k: v / n for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "global_share": global_count / n,
        "spatially_varying_share": 1 - global_count / n,
        "camera_steps": {k: v / n for k, v in sorted(tags.items(), key=lambda kv: -kv[1])},
        "orientation_hist": {f"{int(a)}-{int(a + 180 / ORIENTATION_BINS)}": float(c / max(orient.sum(), 1))
                             for a, c in zip(np.arange(0, 180, 180 / ORIENTATION_BINS), orient)},
        "patch_length_hist": {(f"{LENGTH_BINS[i]:g}-{LENGTH_BINS[i + 1]:g}" if LENGTH_BINS[i + 1] < 1e8
                               else f">{LENGTH_BINS[i]:g}"): float(c / max(length_hist.sum(), 1))
                              for i, c in enumerate(length_hist)},
        "sample_mean_length_px": {"p10": float(np.percentile(sl, 10)), "median": float(np.median(sl)),
                                  "p90": float(np.percentile(sl, 90)), "max": float(sl.max())},
    }


def format_stats(st: dict) -> str:
    lines = [f"{st['n']} samples at {st['resolution']}x{st['resolution']}",
             f"global {st['global_share']:.1%} / spatially varying {st['spatially_varying_share']:.1%}", "kinds:"]
    lines += [f"  {k:<16s} {v:6.1%}" for k, v in st["kinds"].items()]
    lines.append("camera steps:")
    lines += [f"  {k:<22s} {v:6.1%}" for k, v in st["camera_steps"].items()]
    lines.append("orientation (directional patches, degrees from +x towards +y):")
    lines += [f"  {k:>8s} {'#' * int(round(v * 200)):s} {v:.1%}" for k, v in st["orientation_hist"].items()]
    lines.append("patch blur length L (px):")
    lines += [f"  {k:>8s} {'#' * int(round(v * 100)):s} {v:.1%}" for k, v in st["patch_length_hist"].items()]
    m = st["sample_mean_length_px"]
    lines.append(f"per-sample mean length: p10 {m['p10']:.1f}, median {m['median']:.1f}, p90 {m['p90']:.1f}, "
                 f"max {m['max']:.1f} px")
    return "\n".join(lines)


def plot(st: dict, path: str) -> None:
    """Four bar charts (kinds, camera steps, orientation, length) drawn with Pillow (no matplotlib dependency)."""
    panels = [("blur kinds", st["kinds"]), ("camera steps", st["camera_steps"]),
              ("orientation (deg)", st["orientation_hist"]), ("patch length L (px)", st["patch_length_hist"])]
    w, h = 520, 300
    sheet = Image.new("RGB", (2 * w, 2 * h), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (title, data) in enumerate(panels):
        x0, y0 = (n % 2) * w, (n // 2) * h
        draw.text((x0 + 10, y0 + 6), title, fill="black")
        items = list(data.items())
        if not items:
            continue
        top = max(v for _, v in items) or 1
        bw = (w - 40) / len(items)
        for i, (label, v) in enumerate(items):
            bh = (h - 110) * v / top
            bx = x0 + 20 + i * bw
            draw.rectangle([bx + 2, y0 + h - 80 - bh, bx + bw - 2, y0 + h - 80], fill=(70, 110, 200))
            draw.text((bx + 2, y0 + h - 95 - bh), f"{v:.0%}", fill="black")
            for j, chunk in enumerate([label[k:k + 8] for k in range(0, len(label), 8)][:3]):
                draw.text((bx + 2, y0 + h - 75 + 12 * j), chunk, fill="black")
    sheet.save(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input", default=None, help="optional folder of sharp images (default: synthetic)")
    parser.add_argument("--config", default=None, help="JSON SimulatorConfig overrides, e.g. '{\"p_jpeg\": 0}'")
    parser.add_argument("--plot", default=None, help="write bar charts to this PNG")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = SimulatorConfig.from_dict(json.loads(args.config)) if args.config else None
    st = collect(args.n, args.resolution, args.seed, config, args.input)
    print(json.dumps(st, indent=1) if args.json else format_stats(st))
    if args.plot:
        plot(st, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
