#!/usr/bin/env python
"""Where the networks help and where they only soften a photo: the measurements behind ``networks="auto"``.

    python train/diagnostics/networks_gate.py --output_dir results/gate \
        --sets sharp_kodak24,sharp_set14,sharp_set5,engine0,engine1000,frames,real \
        --gates 0.0025,0.005,0.5,0.6,0.25 0.002,0.004,0.5,0.6,0.25 0.003,0.006,0.5,0.6,0.25

Per photo, once (cached in --output_dir): the blind deconvolution, the networks on its result (``networks=True``), the
photo's noise floor and blur measure (``glow.image_processing_glowdeblur``). Then for each gate (noise range, blur
range, confidence scale: the pipeline's ``networks_noise_range``, ``networks_blur_range``, ``networks_confidence``)
what blending the networks' result in by that gate's weight scores: mean PSNR (blur_effect where there is no
reference), its difference from the networks on every photo, the worst photo's difference and the mean weight.

Sets: ``sharp_<folder>`` (``val/sharp/<folder>``, each photo saved as JPEG q90, scored against the original),
``engine<seed>`` (evaluate.py's Kodak24 crops blurred by the simulator), ``frames`` (the held-out 60 GoPro-style
frames), ``real`` (``real_blurry``, blur_effect).
"""
import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from glow.image_processing_glowdeblur import blur_measure, noise_floor  # noqa: E402
from glow.metrics import blur_effect, psnr  # noqa: E402
from glow.pipeline_glowdeblur import GLOWDeblurPipeline  # noqa: E402


def _script(name):
    spec = importlib.util.spec_from_file_location(f"glow_train_{name}", ROOT / "train" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def photos(name, data):
    """-> list of (photo name, input [3,H,W], reference or None)."""
    evaluate = _script("evaluate")
    if name.startswith("sharp_"):
        jpeg = _script("eval_kernels").jpeg
        source = evaluate.no_reference_source(str(data / "val" / "sharp" / name[len("sharp_"):]), 0)
        return [(s.name, jpeg(s.blurry, 90), s.blurry) for s in map(source.load, range(source.count))]
    if name.startswith("engine"):
        source = evaluate.synthetic_source(str(data / "val/sharp/kodak24"), 512, int(name[len("engine"):] or 0), 0)
    elif name == "frames":
        source = evaluate.frames_source(str(data / "train/frames/GOPR0477_11_00"), 60, 0, 0)
    elif name == "real":
        source = evaluate.no_reference_source(str(data / "real_blurry"), 0)
    else:
        raise SystemExit(f"unknown set {name!r}")
    return [(s.name, s.blurry, s.sharp) for s in map(source.load, range(source.count))]


def measure(pipe, name, data, cache):
    """Per photo: features, and the deconvolution and the networks' result on it (float16). Cached as safetensors
    (the images) beside a JSON file (the rest), so a rerun with other gates costs seconds. The confidence is the
    search's even where the pipeline skips the search (a plainly sharp photo: it finds no blur there either)."""
    from safetensors.torch import load_file, save_file

    images, table = cache.with_suffix(".safetensors"), cache.with_suffix(".json")
    if images.exists() and table.exists():
        tensors, rows = load_file(images), json.loads(table.read_text())
        for i, row in enumerate(rows):
            row.update({k: tensors.get(f"{i}/{k}") for k in ("deconvolved", "networks", "reference")})
        return rows
    rows = []
    for photo, blurry, sharp in photos(name, data):
        estimate = pipe.blind_deconvolution(blurry[None].float())
        deconvolved = estimate.image[0].clamp(0, 1)
        networks = pipe(deconvolved, deconvolve=False, networks=True, output_type="pt",
                        generator=torch.Generator().manual_seed(0)).images[0]
        rows.append(dict(photo=photo, confidence=float(estimate.confidence[0]), noise=noise_floor(blurry),
                         blur=blur_measure(blurry), deconvolved=deconvolved.half(), networks=networks.half(),
                         reference=None if sharp is None else sharp.half()))
        print(name, photo, {k: round(v, 4) for k, v in rows[-1].items() if isinstance(v, float)}, flush=True)
    save_file({f"{i}/{k}": row[k].contiguous() for i, row in enumerate(rows)
               for k in ("deconvolved", "networks", "reference") if row[k] is not None}, str(images))
    table.write_text(json.dumps([{k: v for k, v in row.items() if not isinstance(v, torch.Tensor) and v is not None}
                                 for row in rows]))
    return rows


def score(pipe, rows, gate):
    """-> (mean score, mean score of the networks on every photo, worst difference, mean weight) with the pipeline's
    ``networks_weight`` at the gate's settings."""
    pipe.register_to_config(networks_noise_range=list(gate[0:2]), networks_blur_range=list(gate[2:4]),
                            networks_confidence=gate[4])
    gated, always, weights = [], [], []
    for row in rows:
        weight = pipe.networks_weight(row["confidence"], row["noise"], row["blur"])
        d, n = row["deconvolved"].float(), row["networks"].float()
        out = (d + weight * (n - d)).clamp(0, 1)
        ref = row["reference"]
        gated.append(blur_effect(out) if ref is None else psnr(out, ref.float()))
        always.append(blur_effect(n) if ref is None else psnr(n, ref.float()))
        weights.append(weight)
    diff = np.array(gated) - np.array(always)
    worst = diff.max() if rows[0]["reference"] is None else diff.min()  # blur_effect: lower is better
    return float(np.mean(gated)), float(np.mean(always)), float(worst), float(np.mean(weights))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "glow" / "default_model"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--sets", default="sharp_kodak24,sharp_set14,sharp_set5,engine0,engine1000,frames,real")
    parser.add_argument("--gates", nargs="+", default=["0.0025,0.005,0.5,0.6,0.25"],
                        help="noise_lo,noise_hi,blur_lo,blur_hi,confidence_scale")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output_dir", default="results/gate")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe = GLOWDeblurPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    sets = {name: measure(pipe, name, Path(args.data), out / name) for name in args.sets.split(",")}
    report = []
    for text in args.gates:
        gate = tuple(float(v) for v in text.split(","))
        for name, rows in sets.items():
            mean, always, worst, weight = score(pipe, rows, gate)
            report.append(dict(gate=text, set=name, n=len(rows), gated=mean, networks_always=always,
                               difference=mean - always, worst=worst, mean_weight=weight))
            print(f"gate {text} | {name} ({len(rows)}): {mean:.3f} against {always:.3f} with the networks on every "
                  f"photo ({mean - always:+.3f}; worst photo {worst:+.2f}); mean weight {weight:.2f}")
    (out / "gates.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
