"""Image quality metrics for evaluation and training-time validation.

Two full-reference conventions, stated exactly because published numbers differ with them:

* GoPro convention (`psnr`, `ssim`): both images quantised to uint8 RGB (round half up), no border crop, PSNR with
  data_range 255 over all pixels and channels; SSIM is `skimage.metrics.structural_similarity(gt, out,
  channel_axis=-1, data_range=255)` with skimage's defaults (7x7 uniform window, sample covariance), averaged over
  the three channels.
* RealBlur convention (`realblur_psnr_ssim`), as in the RealBlur authors' `evaluation_RealBlur_ecc.py`: float images
  in [0, 1] (from uint8), the output intensity-matched to the GT by a least-squares scale, aligned to it with
  `cv2.findTransformECC` (homography, 100 iterations, Gaussian prefilter 5, on grayscale), warped with bicubic
  interpolation; the border the warp leaves undefined is masked out of PSNR and SSIM (SSIM with Gaussian weights,
  population covariance, data_range 1, the mask-weighted mean of the SSIM map with the 7-px border of the map cropped).
  One addition: where ECC from the identity does not converge (the reference script crashes there) it is restarted
  from the phase-correlation translation.

No-reference: `blur_effect` is scikit-image's blur metric (Crete et al. 2007) on the luminance, in [0, 1], lower =
sharper.

Inputs may be float tensors `[3, H, W]` / `[H, W, 3]` arrays in [0, 1], uint8 arrays, or PIL images.
"""
from __future__ import annotations

import math

import numpy as np


def to_uint8(image) -> np.ndarray:
    """Any supported image -> `[H, W, 3]` uint8 RGB (floats in [0, 1] are clipped and rounded half up)."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if hasattr(image, "detach"):  # torch.Tensor
        image = image.detach().float().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3:
        raise ValueError(f"expected an image [3,H,W] or [H,W,3], got shape {array.shape}")
    if array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    return (np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _pair(output, target) -> tuple[np.ndarray, np.ndarray]:
    out, gt = to_uint8(output), to_uint8(target)
    if out.shape != gt.shape:
        raise ValueError(f"output {out.shape} and target {gt.shape} differ in size")
    return out, gt


def psnr(output, target) -> float:
    """PSNR in dB on uint8 RGB, data_range 255, no crop (GoPro convention). Identical images give `inf`."""
    out, gt = _pair(output, target)
    mse = np.mean((out.astype(np.float64) - gt.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def ssim(output, target) -> float:
    """SSIM on uint8 RGB with skimage defaults, `channel_axis=-1, data_range=255`, no crop (GoPro convention)."""
    from skimage.metrics import structural_similarity

    out, gt = _pair(output, target)
    return float(structural_similarity(gt, out, channel_axis=-1, data_range=255))


def batch_psnr(output, target) -> list[float]:
    """Per-image GoPro-convention PSNR for batches `[B, 3, H, W]` (tensors or arrays), e.g. for validation loops."""
    return [psnr(o, t) for o, t in zip(output, target)]


def blur_effect(image) -> float:
    """scikit-image's no-reference blur metric on the luminance: 0 (sharp) .. 1 (very blurry)."""
    from skimage.measure import blur_effect as _blur_effect

    return float(_blur_effect(to_uint8(image).astype(np.float64) / 255.0, channel_axis=-1))


def realblur_align(output, target, iterations: int = 100):
    """Align `output` to `target` exactly as RealBlur's evaluation does (see module docstring).

    Returns `(aligned_output, masked_target, mask, warp)`: float32 `[H, W, 3]` arrays in [0, 1] with the invalid
    border zeroed in both, the validity mask (same shape, 0/1) and the 3x3 warp (output -> target, inverse map).
    """
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the RealBlur convention needs OpenCV's findTransformECC: pip install opencv-python-headless "
            "(listed in requirements-dev.txt)"
        ) from error
    out, gt = _pair(output, target)
    z = out.astype(np.float32) / 255.0
    x = gt.astype(np.float32) / 255.0
    # Least-squares intensity matching first, as in the reference code (from Koehler et al.'s benchmark).
    zs = (np.sum(x * z) / max(float(np.sum(z * z)), 1e-12)) * z
    gray_x, gray_zs = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), cv2.cvtColor(zs, cv2.COLOR_RGB2GRAY)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 0)
    warp = None
    for init in ("identity", "phase_correlation"):
        start = np.eye(3, dtype=np.float32)
        if init == "phase_correlation":
            # ECC is a local optimiser and raises when it does not converge (shifts beyond its capture range); the
            # reference script would crash there. Only then we start it again from the integer translation found by
            # phase correlation, so every image the reference can score gets exactly the reference's alignment.
            from skimage.registration import phase_cross_correlation

            (shift_y, shift_x), _, _ = phase_cross_correlation(gray_zs, gray_x)
            start[0, 2], start[1, 2] = shift_x, shift_y
        try:
            _, warp = cv2.findTransformECC(gray_x, gray_zs, start, cv2.MOTION_HOMOGRAPHY, criteria, None, 5)
            break
        except cv2.error:
            continue
    if warp is None:  # flat or uncorrelated images: scored unaligned
        warp = np.eye(3, dtype=np.float32)
    height, width = x.shape[:2]
    aligned = cv2.warpPerspective(
        zs, warp, (width, height), flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
    )
    mask = cv2.warpPerspective(
        np.ones_like(zs), warp, (width, height), flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    return aligned * mask, x * mask, mask, warp


def realblur_psnr_ssim(output, target) -> tuple[float, float]:
    """(PSNR, SSIM) under the RealBlur convention: ECC-aligned, border-masked, float [0, 1]."""
    from skimage.metrics import structural_similarity

    aligned, gt, mask, _ = realblur_align(output, target)
    mse = float(np.sum((gt.astype(np.float64) - aligned) ** 2) / max(float(np.sum(mask)), 1.0))
    value_psnr = math.inf if mse == 0 else float(10.0 * np.log10(1.0 / mse))
    _, ssim_map = structural_similarity(
        gt, aligned, channel_axis=-1, gaussian_weights=True, use_sample_covariance=False, data_range=1.0, full=True
    )
    pad = (2 * int(3.5 * 1.5 + 0.5) + 1 - 1) // 2  # the Gaussian window's radius (sigma 1.5, truncate 3.5)
    weighted = (ssim_map * mask)[pad:-pad, pad:-pad]
    valid = mask[pad:-pad, pad:-pad].sum(axis=(0, 1))
    value_ssim = float(np.mean(weighted.sum(axis=(0, 1)) / np.maximum(valid, 1.0)))
    return value_psnr, value_ssim
