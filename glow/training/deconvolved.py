"""Training inputs as the pipeline makes them: the blurry photo deconvolved with an *estimated* kernel.

At test time the pipeline deconvolves each photo with the kernel `BlindDeconvolution` estimated, faded by its
confidence, before the networks see it; so the networks must learn to remove what that leaves (ringing, amplified
noise, a kernel slightly wrong). `--deconvolved_inputs P` trains on that: for a share P of the simulated samples whose
kernel is known (the deferred global kinds, `--render_on_device`), the rendered blurry crop is deconvolved with the
pipeline's own `BlindDeconvolution.deconvolve_photo` and a perturbed copy of the true kernel, then blended with the
blurry crop by a random confidence. The perturbation reproduces the estimator's measured habits (docs/deconvolution.md):
kernels a little too thick, a little too long or short, a few degrees off.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from glow.data.batched import RECIPE_FIELDS


def perturb_kernel(kernel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`[K, K]` PSF -> a plausible estimate of it: thickened (Gaussian, sigma up to 1.2 px), scaled by 0.85-1.15,
    rotated by up to 8 degrees, non-negative, sums to 1. Random numbers come from `generator` (CPU)."""
    sigma, scale, angle = torch.rand(3, generator=generator).tolist()
    sigma, scale, angle = 1.2 * sigma, 0.85 + 0.3 * scale, math.radians(16 * angle - 8)
    k = kernel.float()[None, None]
    if sigma > 0.05:
        r = max(1, math.ceil(3 * sigma))
        x = torch.arange(-r, r + 1, dtype=k.dtype, device=k.device)
        g = torch.exp(-0.5 * (x / sigma) ** 2)
        g = g / g.sum()
        k = F.conv2d(F.conv2d(k, g.view(1, 1, 1, -1), padding=(0, r)), g.view(1, 1, -1, 1), padding=(r, 0))
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale  # the sampling grid shrinks when the kernel grows
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=k.dtype, device=k.device)[None]
    k = F.grid_sample(k, F.affine_grid(theta, list(k.shape), align_corners=False), align_corners=False)[0, 0]
    k = k.clamp_min(0)
    return k / k.sum().clamp_min(1e-12)


@torch.no_grad()
def deconvolve_inputs(batch: dict, blind_deconvolution, share: float, generator: torch.Generator) -> int:
    """Replace, in place, `share` of the batch's known-kernel rows by their deconvolution (see the module). Needs the
    batch's recipes (`--render_on_device`). -> how many rows were replaced."""
    recipe = batch.get("recipe")
    if recipe is None or share <= 0:
        return 0
    rows = recipe.detach().cpu()
    pending = rows[:, RECIPE_FIELDS.index("pending")] > 0
    affine = rows[:, RECIPE_FIELDS.index("affine")] > 0
    chosen = torch.rand(len(rows), generator=generator) < share
    index = (pending & ~affine & chosen).nonzero().flatten().tolist()
    for i in index:
        kernel = perturb_kernel(batch["recipe_kernel"][i], generator)
        blurry = batch["blurry"][i].float()
        sharp = blind_deconvolution.deconvolve_photo(blurry, kernel).clamp(0, 1)
        # the pipeline fades the deconvolution by its confidence: often all of it, sometimes part
        confidence = 1.0 if float(torch.rand(1, generator=generator)) < 0.5 else float(torch.rand(1, generator=generator))
        batch["blurry"][i] = (confidence * sharp + (1 - confidence) * blurry).to(batch["blurry"].dtype)
    return len(index)
