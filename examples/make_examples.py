"""Make the simulated examples of the app from Kodak photos with the BPP blur engine (fixed seeds: reproducible).

    python examples/make_examples.py [--kodak ../shared/data/val/sharp/kodak24] [--out examples]

Each example is one Kodak image blurred by `glow.data.BlurSimulator` with a chosen blur kind and saved as a JPEG
(quality 88, 4:4:4) named `sim_<image>_<kind>.jpg`; the simulator's own description of the blur is printed (and
copied into examples/README.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from glow.data import BlurSimulator, SimulatorConfig
from glow.io import load_image, to_pil

ROOT = Path(__file__).resolve().parents[1]

# (Kodak image, blur kind, seed): chosen to show different blur patterns the model is trained on.
EXAMPLES = [
    ("kodim23", "camera_shake", 1),
    ("kodim08", "linear_motion", 1),
    ("kodim03", "defocus", 4),
    ("kodim05", "object_motion", 2),
    ("kodim20", "rotation", 1),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "val" / "sharp" / "kodak24")
    parser.add_argument("--out", type=Path, default=ROOT / "examples")
    args = parser.parse_args()

    # No low-light exposure: its strong noise makes big JPEGs, and the examples should stay small (< 2 MB in all).
    simulator = BlurSimulator(SimulatorConfig(p_low_light=0.0), seed=0)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, kind, seed in EXAMPLES:
        sharp = load_image(args.kodak / f"{name}.png").convert("RGB")
        sample = simulator(sharp, seed=seed, kind=kind)
        path = args.out / f"sim_{name}_{kind}.jpg"
        to_pil(sample["blurry"]).save(path, quality=88, subsampling=0)
        print(f"{path.name}: {sample['text']} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
