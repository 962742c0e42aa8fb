"""Validation during training: a fixed sample set, PSNR/SSIM of the pre-reconstruction and of the pipeline, a grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .losses import GLOWTrainingModule


def load_validation_set(folder: str, count: int, resolution: int, seed: int) -> list[dict]:
    """Fixed validation samples (centre crops of `resolution`): a paired folder in any layout the data engine knows
    (blur/ + sharp/, GoPro, RealBlur, RSBlur, BSD), or sharp images blurred by the simulator with a fixed seed
    (sample i uses seed + i), so the set never changes between steps or runs."""
    from glow.data import BlurSimulator, PairedFolderDataset, detect_layout
    from glow.data.datasets import list_images
    from glow.io import center_crop, image_to_tensor

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--validation_data_dir {folder} is not a folder")
    try:
        pairs = PairedFolderDataset(folder, layout=detect_layout(folder), resolution=None, augment=False,
                                    split="test").pairs
    except ValueError:
        pairs = []
    samples = []
    if pairs:
        for blur_path, sharp_path in pairs[:count]:
            blurry = center_crop(image_to_tensor(blur_path), resolution, pad=True)
            sharp = center_crop(image_to_tensor(sharp_path), resolution, pad=True)
            samples.append({"blurry": blurry, "sharp": sharp, "name": Path(sharp_path).stem, "text": ""})
        return samples
    files = list_images(folder, recursive=True)
    if not files:
        raise FileNotFoundError(f"--validation_data_dir {folder}: no images found")
    simulator = BlurSimulator(seed=seed)
    for i, path in enumerate(files[:count]):
        sample = simulator(center_crop(image_to_tensor(path), resolution, pad=True), seed=seed + i)
        samples.append({"blurry": sample["blurry"], "sharp": sample["sharp"], "name": path.stem,
                        "text": sample.get("text", "")})
    return samples


def make_grid(rows: list[list[torch.Tensor]], pad: int = 4):
    """Rows of equally sized [3,H,W] images -> one PIL image (white gutters)."""
    from glow.io import to_pil

    h, w = rows[0][0].shape[-2:]
    ncol = max(len(r) for r in rows)
    canvas = torch.ones(3, len(rows) * (h + pad) + pad, ncol * (w + pad) + pad)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[:, y : y + h, x : x + w] = img.clamp(0, 1)
    return to_pil(canvas)


@torch.no_grad()
def run_validation(pipeline, module: GLOWTrainingModule, samples: list[dict], device, seed: int,
                   deconvolve: bool = False) -> tuple[dict, object]:
    """PSNR/SSIM of the pre-reconstruction alone and of the full pipeline at its default settings, and a grid
    (rows: blurry | pre-reconstruction | pipeline | sharp)."""
    from glow.metrics import psnr, ssim

    was_training = module.training
    module.eval()
    scores = {k: [] for k in ("blurry_psnr", "prerecon_psnr", "prerecon_ssim", "pipeline_psnr", "pipeline_ssim")}
    rows = []
    for i, s in enumerate(samples):
        blurry = s["blurry"][None].to(device)
        est = module.motion_estimator(blurry)
        prerecon = module.prereconstruction(blurry, est.kernels, est.motion).image.clamp(0, 1)[0].cpu()
        generator = torch.Generator().manual_seed(seed + i)
        restored = pipeline_restore(pipeline, s["blurry"], generator, deconvolve)
        scores["blurry_psnr"].append(psnr(s["blurry"], s["sharp"]))
        scores["prerecon_psnr"].append(psnr(prerecon, s["sharp"]))
        scores["prerecon_ssim"].append(ssim(prerecon, s["sharp"]))
        scores["pipeline_psnr"].append(psnr(restored, s["sharp"]))
        scores["pipeline_ssim"].append(ssim(restored, s["sharp"]))
        rows.append([s["blurry"], prerecon, restored, s["sharp"]])
    if was_training:
        module.train()
    metrics = {f"val/{k}": float(np.mean(v)) for k, v in scores.items()}
    return metrics, make_grid(rows)


def pipeline_restore(pipeline, blurry: torch.Tensor, generator, deconvolve: bool = False) -> torch.Tensor:
    """Runs the pipeline at its default settings (no prompt, as a user would) on one [3,H,W] image, with the networks
    on every image (networks=True: the default "auto" would leave some alone, and validation measures the networks).
    Without the blind deconvolution unless `deconvolve` (--deconvolved_inputs runs): it has no weights, so training
    cannot change it, and networks trained on blurry inputs keep curves comparable with the runs before it existed."""
    out = pipeline(image=blurry, generator=generator, output_type="pt", deconvolve=deconvolve, networks=True)
    return out.images[0][:3].float().cpu().clamp(0, 1)
