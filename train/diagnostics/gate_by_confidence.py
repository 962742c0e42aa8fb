#!/usr/bin/env python
"""What fading the networks by the blur confidence would do (a diagnostic, not a pipeline option).

    python train/diagnostics/gate_by_confidence.py engine   # Kodak24 blurred by the engine (evaluate.py's synthetic)
    python train/diagnostics/gate_by_confidence.py frames   # the held-out GoPro-style frames (last 60)

Per image: PSNR of the blurry input, of the pipeline at its defaults, and of
``gated = deconvolved + confidence * (pipeline - deconvolved)``, where ``deconvolved`` is BlindDeconvolution's output
(the input itself at confidence 0): the networks would then leave alone every photo the kernel estimate finds no
reliable blur in, as they should a sharp photo (docs/deconvolution.md).
"""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from glow.metrics import psnr  # noqa: E402
from glow.pipeline_glowdeblur import GLOWDeblurPipeline  # noqa: E402


def main(which):
    spec = importlib.util.spec_from_file_location("glow_train_evaluate", ROOT / "train" / "evaluate.py")
    evaluate = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = evaluate
    spec.loader.exec_module(evaluate)
    data = ROOT.parent / "shared" / "data"
    source = (evaluate.synthetic_source(str(data / "val/sharp/kodak24"), 0, 0, 0) if which == "engine" else
              evaluate.frames_source(str(data / "train/frames/GOPR0477_11_00"), 60, 0, 0))
    torch.set_num_threads(2)
    pipe = GLOWDeblurPipeline.from_pretrained(ROOT / "glow" / "default_model")
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for i in range(source.count):
        sample = source.load(i)
        estimate = pipe.blind_deconvolution(sample.blurry[None])
        out = pipe(sample.blurry, output_type="pt", generator=torch.Generator().manual_seed(0)).images[0]
        confidence, deconvolved = float(estimate.confidence[0]), estimate.image[0].clamp(0, 1)
        gated = (deconvolved + confidence * (out - deconvolved)).clamp(0, 1)
        rows.append((psnr(sample.blurry, sample.sharp), psnr(out, sample.sharp), psnr(gated, sample.sharp), confidence))
    r = np.array(rows)
    print(f"{which}: n {len(r)}, input {r[:, 0].mean():.2f}, pipeline {r[:, 1].mean():.2f}, gated {r[:, 2].mean():.2f} "
          f"dB; mean confidence {r[:, 3].mean():.2f}, share at 0: {(r[:, 3] == 0).mean():.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "engine")
