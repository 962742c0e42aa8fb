# Self-contained: imported by diffusers with trust_remote_code from a saved pipeline folder (deconvolution_utils.py
# beside it), where `glow` is not importable. Only torch, diffusers and the standard library.
"""BlindDeconvolution: estimate the blur kernel of *this* photo by optimisation, then deconvolve it.

No learned weights: the settings live in ``config.json``. A network that must *learn* deconvolution needs far more
samples than a CPU can show it; a photo can afford seconds of optimisation instead.

1. **Where**: the luminance of the most edge-rich region(s) (``region_size`` px, stretched along the long side up to
   ``region_long_side``, at most ``num_regions``),
   never the whole photo, so the cost is bounded at any image size.
2. **Kernel** (coarse to fine, kernels up to ``max_kernel_size``): at each pyramid level alternate
   - a latent-image step under an L0 gradient prior (half-quadratic splitting solved in the Fourier domain, as in
     Xu, Zheng & Jia 2013 and Pan et al. 2014), and
   - a kernel step in the gradient domain (least squares with a small Tikhonov term, solved by conjugate gradients on
     the kernel support), then projected: non-negative, small values cut, the one connected support with most mass
     kept, sums to 1, re-centred on its centroid.
   Low frequencies are weighted up in the kernel step (``kernel_lowpass``): at 1% noise the unweighted step gave
   noise-filled kernels. Clipped pixels are left out of the kernel step.
   Several kernel sizes are tried; the one the photo's spectrum follows best (``spectral_ratio``) wins.
3. **Confidence**: a kernel that is (near) a delta, or a photo with detail at frequencies the kernel would have
   removed (``spectral_ratio``: a sharp photo), fades the deconvolution out, so a sharp photo passes unchanged.
   With ``num_regions > 1`` the regions' kernels are averaged (no consistency check between regions yet).
   **Defocus**: a disk has no direction, so the free-form kernel of a defocused photo is never trusted. When it is
   not, the radial power spectrum is fitted with a disk's (``fit_defocus``): its first ring of zeros gives the
   radius, and how deep that ring is gives the confidence; a defocus kernel is applied to the whole photo.
4. **Deconvolution** of the whole photo (all channels) with a hyper-Laplacian-like prior (HQS with an iteratively
   reweighted L1 shrinkage), on a smoothly periodic padding (no ringing from the borders), with clipped highlights
   treated as missing data (the EM trick: their observed value is replaced by the current re-blurred estimate),
   started from a model of each clipped light as a small source far brighter than white (``deconv_light_sources``).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from .deconvolution_utils import (
    centre_kernel,
    dilate,
    disk_gain,
    disk_kernel,
    fast_size,
    find_light_sources,
    grad_x,
    grad_xt,
    grad_y,
    grad_yt,
    gradient_otfs,
    kernel_moments,
    kernel_motion,
    largest_component,
    light_source_start,
    light_trails,
    linear_to_srgb,
    luminance,
    noise_sigma,
    otf2psf,
    periodic_pad,
    psf2otf,
    radial_power,
    resize_kernel,
    srgb_to_linear,
    trail_fit,
)


def _real_view_power(*spectra):
    """Summed power ``|X|^2`` of complex spectra ``[..., H, W']``, laid out like their real view (``[..., H, W', 2]``,
    each value twice), so a spectrum is divided by it as a plain same-shape operation on
    ``torch.view_as_real``: a ``[..., 1]`` divisor broadcast, or one promoted to complex by torch, is several times
    slower on CPU for the same values."""
    power = spectra[0].real ** 2 + spectra[0].imag ** 2
    for x in spectra[1:]:  # summed term by term, left to right (the rounding of a + b + c + d)
        power = power + x.real**2 + x.imag**2
    return power[..., None].expand(*power.shape, 2).contiguous()


@dataclass
class BlindDeconvolutionOutput(BaseOutput):
    """``image`` ``[B,3,H,W]`` deconvolved (blended with the input by ``confidence``); ``kernels`` ``[B,K,K]`` the
    estimated PSF of each image (centred, sums to 1); ``confidence`` ``[B]`` in [0, 1] (0 = left as it was);
    ``motion`` ``[B, 3]`` each kernel's motion encoding (DESIGN.md: ``d cos 2θ, d sin 2θ, length``)."""

    image: torch.Tensor
    kernels: torch.Tensor
    confidence: torch.Tensor
    motion: torch.Tensor


# ---------------------------------------------------------------------------------------------------------------
class BlindDeconvolution(ModelMixin, ConfigMixin):
    r"""Blind deconvolution by optimisation (no weights). ``forward(image [B,3,H,W] in [0,1], sRGB)`` ->
    ``BlindDeconvolutionOutput``; ``estimate_kernel`` and ``deconvolve`` run the two halves alone.

    Config:
        max_kernel_size: the largest kernel considered (odd, px at full resolution).
        kernel_sizes: the kernel-size hypotheses tried (each <= max_kernel_size); the lowest ``spectral_ratio``
            wins.
        unanimous_blur: every size hypothesis must find a blur (a kernel spreading at least ``min_blur_length`` px,
            with rings ``spectral_ratio`` can test), or the motion kernel gets no confidence: a sharp photo's texture
            can lead one search to a kernel whose zeros fall where the photo itself has little detail (Kodak's
            kodim01 as a JPEG: a 13 px kernel, ratio 0.255, where the other hypothesis found no blur). Not seen on
            the two Kodak shake draws, the held-out frames or the real photos; one engine-blur crop of 24 lost a
            confidence of 0.27 (docs/deconvolution.md).
        long_blur_lambda / long_blur_length / long_blur_margin: when the smaller hypotheses' best is at least
            ``long_blur_length`` px long (estimation scale) and fully trusted (``spectral_ratio`` below the first
            value of ``spectral_ratio_range``), the largest size is searched with the L0 weight ``long_blur_lambda``
            instead of ``lambda_grad`` (the latent image keeps only the strongest edges, which long kernels need);
            it wins only with a ``spectral_ratio`` lower by the fraction ``long_blur_margin``. ``long_blur_lambda``
            None: never. Measured on two draws of Kodak shake: the 54 and 47 px blurs that came out worse than their
            input gained 5 and 4.3 dB; alone, the weight made short kernels too long. Searched instead of the usual
            largest size, not beside it, a long blur costs no more than a short one (docs/deconvolution.md).
        region_size: the estimation region's short side (px); ``num_regions`` regions at most.
        region_long_side: the region is stretched along the photo's long side up to this (px; ``None``: a square).
            Measured with ``kernel_sizes`` (51, 75): the larger area and no 31 px hypothesis gave +0.54 dB on one draw
            of Kodak shake, +0.03 on another, +0.42 dB on the held-out frames, at the cost of three squares'
            search (docs/deconvolution.md).
        estimation_scale: the photo is downscaled so its long side is at most ``estimation_max_side`` before
            estimating (the kernel is scaled back up); bounds the cost on 12 MP photos.
        lambda_grad / lambda_min / iterations: L0 weight at the start of each level, its floor, and the number of
            latent/kernel alternations per level.
        kernel_tikhonov: weight of ``||k||^2`` in the kernel step (relative to the gradient energy).
        kernel_threshold: kernel values below this fraction of the maximum are cut.
        kernel_lowpass: the kernel step weights frequency f by ``exp(-(2 pi kernel_lowpass f)^2)`` (px): at 1% noise
            the unweighted step gave noise-filled kernels (docs/deconvolution.md).
        edge_pixels: per kernel pixel, how many salient latent edges per orientation the kernel step keeps.
        spectral_ratio_range: ``spectral_ratio`` below the first value keeps full confidence, above the second none.
        gate_tile: tile size (px, estimation scale) of ``confidence_map``; 0 = deconvolve the whole photo alike.
        tile_ratio_length: a tile's ``spectral_ratio_range`` is widened by ``length / tile_ratio_length`` (at most 2x)
            for kernels longer than this (px, estimation scale): a 192 px tile reads the ratio of a long kernel less
            surely than the estimation region (tiles of uniform 40 px shake read up to 2.7 with the true kernel);
            ``None``: never. Measured: +0.08 dB on one Kodak shake draw, the frames unchanged (docs/deconvolution.md).
        noise_aware_tiles: ``confidence_map`` subtracts white noise's power (``noise_sigma``) before comparing, and a
            tile left with no evidence keeps the photo's confidence (without it, flat tiles at 1% noise were switched
            off: -0.6 dB on uniform shake, docs/deconvolution.md).
        linear_light: estimate on linear-light luminance instead of sRGB.
        deconv_linear_light: deconvolve in linear light (sRGB curve undone, then redone), where a camera's blur
            happens. Off: on real photos it left darker rims around lights, and it loses 2 dB on blur made in sRGB
            (docs/deconvolution.md, "Linear light").
        deconv_nonnegative: on photos with clipped pixels, keep the deconvolution's latent image non-negative at each
            step. Its missing-data step explains a clipped light's trail as a streak of exactly white and rings around
            it; light cannot be negative. Kodak shake with clipped lights (``eval_kernels.py --lights 40``): +0.31 dB
            (+0.43 with the true kernel), worst photo -3.00 -> -1.98 dB; no change on the project's other sets
            (docs/deconvolution.md, "Kernel benchmark: linear motion, ...").
        deconv_light_sources: start that deconvolution from a model of each clipped light (``find_light_sources``:
            a clipped region no larger than the kernel becomes a small source bright enough to clip that trail,
            on the background around it). Started from the photo, the missing-data step keeps each trail a streak
            of exactly white with echoes around it (docs/deconvolution.md, "Clipped lights as light sources").
        deconv_weight / deconv_iterations: prior weight and HQS iterations of the final non-blind deconvolution;
            the weight grows with the kernel size (``deconv_weight * (1 + length / deconv_length_scale)``). 5e-4
            rather than 1e-3: the networks after it do better on the sharper, noisier result (Kodak shake pipeline
            +3.72 against +3.44 dB; held-out frames 0.13 dB lower; docs/deconvolution.md, "A weaker non-blind prior").
        min_blur_length / full_blur_length: kernels shorter than the first are "no blur" (confidence 0); the
            confidence ramps to 1 at the second.
        saturation: luminance above this is treated as clipped.
        defocus_radii: the disk radii (px, estimation scale, ``(first, last)`` in 0.5 px steps) tried when the
            free-form kernel is not trusted; ``None`` switches the defocus search off. A best fit within 1 px of
            ``last`` gets no confidence (the edge of the search, not a disk found).
        defocus_dip_range: ``defocus_dip`` (see ``fit_defocus``) below the first value gives the disk no confidence,
            above the second full confidence.
        trail_min_count / trail_fit_range / trail_trust: a photo with at least ``trail_min_count`` clipped lights'
            trails (``light_trails``) has its motion kernel checked against them (``trail_fit``). The share of trails
            whose shape the kernel explains scales its confidence: none below the first value of ``trail_fit_range``,
            full above the second. ``trail_min_count`` None: never. ``trail_trust`` (None: off, the default): where
            the kernel explains that share of the trails or more as small bright lights, ``spectral_ratio`` no longer
            lowers its confidence. It helped on Kodak shake with clipped lights but made night versions of the same
            photos worse (many wrong kernels explain a dark scene's compact trails); docs/deconvolution.md, "Light
            trails check the kernel".
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        max_kernel_size: int = 75,
        kernel_sizes: tuple = (51, 75),
        unanimous_blur: bool = True,
        long_blur_lambda: float = 4e-3,
        long_blur_length: float = 25.0,
        long_blur_margin: float = 0.1,
        region_size: int = 512,
        region_long_side: int = 768,
        num_regions: int = 1,
        estimation_max_side: int = 1600,
        lambda_grad: float = 1e-3,
        lambda_min: float = 1e-4,
        iterations: int = 10,
        hqs_beta_max: float = 1e5,
        hqs_kappa: float = 3.0,
        kernel_tikhonov: float = 2.0,
        kernel_cg_iterations: int = 10,
        kernel_lowpass: float = 0.75,
        edge_pixels: float = 20.0,
        kernel_threshold: float = 0.05,
        linear_light: bool = False,
        deconv_linear_light: bool = False,
        deconv_nonnegative: bool = True,
        deconv_light_sources: bool = True,
        deconv_weight: float = 5e-4,
        deconv_iterations: int = 6,
        deconv_length_scale: float = 60.0,
        min_blur_length: float = 5.0,
        full_blur_length: float = 10.0,
        saturation: float = 0.97,
        spectral_ratio_range: tuple = (0.25, 0.5),
        gate_tile: int = 192,
        tile_ratio_length: float = 20.0,
        noise_aware_tiles: bool = True,
        defocus_radii: tuple = (1.5, 20.0),
        defocus_dip_range: tuple = (0.9, 1.4),
        trail_min_count: int = 3,
        trail_fit_range: tuple = (0.2, 0.5),
        trail_trust: float = None,
    ):
        super().__init__()
        # the channel weights of the luminance the kernel is estimated on; the component's only tensor (diffusers
        # saves and loads a model folder through its weights file, so an optimiser with no weights keeps this one)
        self.register_buffer("luma_weights", torch.tensor([0.299, 0.587, 0.114]))

    # ------------------------------------------------------------------ estimation
    def _regions(self, lum):
        """Top-left corners of the most edge-rich regions of ``lum [1,1,H,W]`` (non-overlapping by more than half),
        best first, and the regions' size ``(h, w)``: ``region_size`` square, stretched along the photo's long side up
        to ``region_long_side``."""
        h, w = lum.shape[-2:]
        short, long_side = self.config.region_size, self.config.region_long_side
        if long_side is None:  # a square
            size = (min(short, h, w),) * 2
        else:
            long_side = max(short, long_side)
            size = (min(short, h), min(long_side, w)) if w >= h else (min(long_side, h), min(short, w))
        if size == (h, w):
            return size, [(0, 0)]
        step = max(8, min(size) // 8)
        # edge content on a coarse grid: mean gradient magnitude per step x step cell, summed over windows
        gx, gy = lum[..., :-1, 1:] - lum[..., :-1, :-1], lum[..., 1:, :-1] - lum[..., :-1, :-1]
        g = torch.sqrt(gx * gx + gy * gy)
        cells = F.avg_pool2d(g, step, stride=step, ceil_mode=True)
        n = (max(1, min(size[0] // step, cells.shape[-2])), max(1, min(size[1] // step, cells.shape[-1])))
        score = F.avg_pool2d(cells, n, stride=1)[0, 0]
        picks = []
        score = score.clone()
        for _ in range(self.config.num_regions):
            flat = int(score.argmax())
            cy, cx = divmod(flat, score.shape[1])
            y0, x0 = min(cy * step, h - size[0]), min(cx * step, w - size[1])
            picks.append((y0, x0))
            score[max(0, cy - n[0] // 2) : cy + n[0] // 2 + 1, max(0, cx - n[1] // 2) : cx + n[1] // 2 + 1] = -1
            if float(score.max()) < 0:
                break
        return size, picks

    def _l0_latent(self, blurry_f, blurry, kernel_otf, den_g, shape, lam):
        """min_S ||k*S - B||^2 + lam ||grad S||_0 by half-quadratic splitting (beta doubling): each step thresholds
        the gradients (L0 proximal map) and solves the quadratic in the Fourier domain. Clipped pixels are not
        treated as missing data here (the kernel step leaves them out): doing so (EM, as the final deconvolution does)
        cost three FFTs more per step and changed nothing beyond the search's run-to-run instability
        (docs/deconvolution.md, "Clipped lights"). ``blurry`` (``irfft2(blurry_f)``, the start) and ``den_g`` (the
        gradients' power, see ``_real_view_power``) are fixed per pyramid level, so the caller computes them once."""
        cfg = self.config
        num = torch.conj(kernel_otf) * blurry_f
        den_k = _real_view_power(kernel_otf)
        latent = blurry
        beta = 2 * lam
        while beta < cfg.hqs_beta_max:
            gx, gy = grad_x(latent), grad_y(latent)
            # the L0 proximal map keeps a gradient where |g|^2 >= lam / beta; the mask is made as float 0/1 in place
            # (a bool mask costs about ten times more to make and to multiply by, on CPU)
            keep = (gx * gx + gy * gy).ge_(lam / beta)
            gx.mul_(keep)
            gy.mul_(keep)
            div = grad_xt(gx)
            div += grad_yt(gy)
            latent_f = torch.fft.rfft2(div).mul_(beta).add_(num)
            torch.view_as_real(latent_f).mul_((den_g * beta).add_(den_k).reciprocal_())
            latent = torch.fft.irfft2(latent_f, s=shape)
            beta *= cfg.hqs_kappa
        return latent

    @staticmethod
    def _edge_threshold(latent, count):
        """Gradient magnitude above which at least ``count`` pixels remain in each of four orientation bins (Cho &
        Lee's rule: enough edges in every direction to constrain the kernel in every direction)."""
        gx, gy = grad_x(latent), grad_y(latent)
        mag = torch.sqrt(gx * gx + gy * gy).flatten()
        angle = torch.remainder(torch.atan2(gy, gx).flatten(), math.pi)
        bins = (angle / (math.pi / 4)).long().clamp_max(3)
        thr = float("inf")
        for b in range(4):
            m = mag[bins == b]
            m = m[m > 0]
            if m.numel() == 0:
                continue
            kth = m.topk(min(int(count), m.numel())).values[-1]
            thr = min(thr, float(kth))
        return 0.0 if thr == float("inf") else thr

    def _kernel_step(self, latent, blurry_grad_f, mask, weight, kernel, threshold=0.0):
        """Least-squares kernel in the gradient domain, ``min_k sum_d ||w (m d S * k - m d B)||^2 + t ||k||^2`` by
        conjugate gradients on the k x k support. ``blurry_grad_f``: the rfft2 of the masked gradients of B (fixed
        per pyramid level); m the mask (clipped pixels and the padding out); ``weight`` the frequency weighting
        (low frequencies up: noise lives at high ones; applied to both sides, so it does not bias the kernel)."""
        cfg = self.config
        k = kernel.shape[-1]
        shape = latent.shape[-2:]
        sx, sy = grad_x(latent) * mask, grad_y(latent) * mask
        if threshold > 0:  # only the salient edges of the latent image (weak ones carry mostly noise)
            strong = (sx * sx + sy * sy) >= threshold**2
            sx, sy = sx * strong, sy * strong
        sxf, syf = torch.fft.rfft2(sx), torch.fft.rfft2(sy)
        gram = (sxf.real**2 + sxf.imag**2 + syf.real**2 + syf.imag**2) * weight
        cross = (torch.conj(sxf) * blurry_grad_f[0] + torch.conj(syf) * blurry_grad_f[1]) * weight
        rhs = otf2psf(cross, shape, k)
        gram, shape = self._lag_window(gram, shape, k)
        tik = cfg.kernel_tikhonov

        def apply(v):
            return otf2psf(gram * psf2otf(v, shape), shape, k) + tik * v

        x = kernel.clone()
        r = rhs - apply(x)
        p = r.clone()
        rs = (r * r).sum()
        for _ in range(cfg.kernel_cg_iterations):
            ap = apply(p)
            alpha = rs / (p * ap).sum().clamp_min(1e-20)
            x = x + alpha * p
            r = r - alpha * ap
            rs_new = (r * r).sum()
            if float(rs_new) < 1e-12:
                break
            p = r + (rs_new / rs.clamp_min(1e-20)) * p
            rs = rs_new
        return self._project_kernel(x)

    @staticmethod
    def _lag_window(gram, shape, k):
        """The kernel step's normal operator ``v -> crop_k(R * v)`` only reads the gradients' autocorrelation ``R``
        at lags below ``k``: the same operator on an FFT of about ``3k`` instead of the whole region (the same
        result, and the conjugate-gradient loop several times cheaper). -> (gram on the small grid, its shape)."""
        n = fast_size(3 * k - 2)
        if min(shape) < 2 * k - 1 or n * n >= shape[0] * shape[1]:
            return gram, shape
        auto = torch.fft.irfft2(gram, s=shape)
        lags = torch.arange(-(k - 1), k, device=gram.device)
        small = auto.new_zeros(n, n)
        small[(lags % n)[:, None], (lags % n)[None, :]] = auto[(lags % shape[0])[:, None], (lags % shape[1])[None, :]]
        return torch.fft.rfft2(small), (n, n)

    def _project_kernel(self, kernel):
        k = kernel.clamp_min(0)
        if float(k.max()) <= 0:
            k = torch.zeros_like(kernel)
            k[kernel.shape[-1] // 2, kernel.shape[-1] // 2] = 1
            return k
        k = torch.where(k >= self.config.kernel_threshold * k.max(), k, torch.zeros_like(k))
        k = k * largest_component(k > 0, k)
        k = centre_kernel(k / k.sum())
        return k / k.sum().clamp_min(1e-12)

    def _estimate_region(self, blurry, saturated, kernel_size, lambda_grad=None):
        """Coarse-to-fine kernel of size ``kernel_size`` for one luminance region ``[H, W]``, with the L0 weight
        ``lambda_grad`` at the start of each level (``None``: the config's). Returns the kernel."""
        cfg = self.config
        ratio = math.sqrt(0.5)
        levels = max(0, int(math.floor(math.log(5.0 / kernel_size) / math.log(ratio))))
        kernel = None
        for level in range(levels, -1, -1):
            scale = ratio**level
            ks = max(3, int(round(kernel_size * scale)) | 1)
            if level == 0:
                b, sat = blurry, saturated
            else:
                size = (max(8, round(blurry.shape[-2] * scale)), max(8, round(blurry.shape[-1] * scale)))
                b = F.interpolate(blurry[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0]
                sat = F.interpolate(saturated[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
            if kernel is None:
                kernel = torch.zeros(ks, ks, device=b.device, dtype=b.dtype)
                kernel[ks // 2, ks // 2 - 1 : ks // 2 + 1] = 0.5
            else:
                kernel = resize_kernel(kernel, ks)
            # periodic padding by the kernel size so neither step sees a wrap-around step at the border
            shape = (fast_size(b.shape[-2] + ks), fast_size(b.shape[-1] + ks))
            bp = periodic_pad(b, shape[0] - b.shape[-2], shape[1] - b.shape[-1])
            # pixels whose blur involves clipped light (dilated by the kernel) and the padding are left out of the
            # kernel step
            mask = torch.zeros(shape, device=b.device, dtype=b.dtype)
            mask[ks : b.shape[-2] - ks, ks : b.shape[-1] - ks] = 1
            if float(sat.max()) > 0:
                near = dilate(sat, 2 * (ks // 2) + 1) > 0.01
                mask[: b.shape[-2], : b.shape[-1]] *= (~near).to(b.dtype)
            bf = torch.fft.rfft2(bp)
            b_spatial = torch.fft.irfft2(bf, s=shape)  # the latent step's start (not bp: FFT rounding differs)
            dx_otf, dy_otf = gradient_otfs(shape, b.device, b.dtype)
            den_g = _real_view_power(dx_otf, dy_otf)
            blurry_grad_f = (torch.fft.rfft2(grad_x(bp) * mask), torch.fft.rfft2(grad_y(bp) * mask))
            fy = torch.fft.fftfreq(shape[0], device=b.device, dtype=b.dtype).view(-1, 1)
            fx = torch.fft.rfftfreq(shape[1], device=b.device, dtype=b.dtype).view(1, -1)
            weight = torch.exp(-((2 * math.pi * cfg.kernel_lowpass) ** 2) * (fx * fx + fy * fy))
            lam = cfg.lambda_grad if lambda_grad is None else lambda_grad
            threshold = None
            for _ in range(cfg.iterations):
                latent = self._l0_latent(bf, b_spatial, psf2otf(kernel, shape), den_g, shape, lam)
                if threshold is None:
                    threshold = self._edge_threshold(latent * mask, cfg.edge_pixels * ks) if cfg.edge_pixels > 0 else 0
                kernel = self._kernel_step(latent, blurry_grad_f, mask, weight, kernel, threshold)
                lam = max(lam / 1.1, cfg.lambda_min)
                threshold /= 1.1
        return kernel

    @staticmethod
    def spectral_ratio(region, kernel, saturated=None, noise=0.0):
        """Does the photo's spectrum follow the kernel? In each ring of frequencies (same radius, so a natural
        photo's own 1/f fall-off cancels), the power where the kernel passes least (its lowest-gain quarter) over
        the power where it passes most (highest quarter), over the rings where the kernel's gains differ by 4x or
        more; the median. Ranks the kernel-size hypotheses and gates the deconvolution. A photo blurred by this kernel gives a small ratio (measured <= 0.22 on simulated shake,
        <= 0.15 on the real motion-blurred photos); a sharp photo, whose detail the kernel says cannot exist, gives
        ~0.3-1. ``inf`` when fewer than 3 rings can be tested (a compact, isotropic kernel: no evidence). ``noise``
        (its standard deviation) is subtracted as a flat power floor; a ring with no power above it is not tested."""
        h, w = region.shape[-2:]
        win = torch.hann_window(h, periodic=False, device=region.device)[:, None] * torch.hann_window(
            w, periodic=False, device=region.device)[None, :]
        if saturated is not None and float(saturated.max()) > 0:  # clipped lights keep sharp edges: leave them out
            k = kernel.shape[-1] | 1
            near = dilate(saturated, k)
            win = win * (1 - F.avg_pool2d(near[None, None], 9, stride=1, padding=4, count_include_pad=False)[0, 0])
        centred = (region - (region * win).sum() / win.sum().clamp_min(1e-6)) * win
        power = torch.fft.rfft2(centred).abs() ** 2
        floor = noise**2 * float((win * win).sum())  # white noise's expected power per frequency
        gain = psf2otf(kernel, (h, w)).abs() ** 2
        fy = torch.fft.fftfreq(h, device=region.device).view(-1, 1)
        fx = torch.fft.rfftfreq(w, device=region.device).view(1, -1)
        radius = torch.sqrt(fx * fx + fy * fy)
        ratios = []
        for lo in torch.arange(0.04, 0.35, 0.02).tolist():
            ring = (radius >= lo) & (radius < lo + 0.02)
            g = gain[ring]
            low, high = ring & (gain <= torch.quantile(g, 0.25)), ring & (gain >= torch.quantile(g, 0.75))
            if float(gain[high].mean()) > 4 * float(gain[low].mean()):
                p_low, p_high = float(power[low].mean()) - floor, float(power[high].mean()) - floor
                if p_high > floor:  # a ring with signal above the noise
                    ratios.append(max(p_low, 0.0) / p_high)
        return float(torch.tensor(ratios).median()) if len(ratios) >= 3 else float("inf")

    def fit_defocus(self, region):
        """Is ``region [H, W]`` out of focus, and by how much? A disk's spectrum has rings of zeros (the first at
        ``0.61 / radius`` cycles/px) that the free-form kernel step cannot find (a compact, isotropic estimate has
        no ring ``spectral_ratio`` can test). The log radial power spectrum is fitted, for each radius of
        ``defocus_radii``, as a smooth curve (a power law bent by a quadratic in log f) plus the disk's log gain
        over a noise/JPEG floor; the best fit gives the radius. The evidence is the first ring of zeros itself:
        ``defocus_dip``: how much deeper the power is at the first zero than both at the first side lobe and just
        before the zero, beyond the smooth curve (natural log units). Measured on JPEG q90 photos: <= 0.68 on 43 sharp
        ones (Kodak24, Set5, Set14) on the square region; on the longer one <= 0.49, but for Set14 img_001's 0.94 at
        the end of the radii searched (no longer trusted, see ``estimate_kernel``); 1.46-3.4 on simulated defocus,
        1.82 on the real defocused text; a disk can also fit the knee of a sharp photo's smooth spectrum, so the fit
        alone is no evidence. -> (radius in px, defocus_dip)."""
        first, last = self.config.defocus_radii
        freq, power = radial_power(region.float())
        keep = (freq >= 0.02) & (freq < 0.3)  # below: the scene's layout; above: JPEG and demosaicing
        freq, log_power = freq[keep], torch.log(power[keep].clamp_min(1e-20))
        design = torch.stack([torch.ones_like(freq), torch.log(freq), torch.log(freq) ** 2], 1)
        project = design @ torch.linalg.pinv(design)

        def residual(model):  # [n, M] log-gain models -> [n, M] what the best smooth curve leaves
            y = log_power - model
            return y - y @ project.T

        radii = torch.arange(first, last + 1e-6, 0.5, device=freq.device, dtype=freq.dtype)
        gain = disk_gain(freq, radii[:, None])  # [R, M]
        floors = torch.tensor([1e-3, 3e-3, 1e-2, 3e-2, 0.1], device=freq.device, dtype=freq.dtype)
        errors = (residual(torch.log(gain[:, None, :] + floors[None, :, None]).flatten(0, 1)) ** 2).mean(-1)
        radius = float(radii[int(errors.view(len(radii), -1).min(1).values.argmin())])
        smooth = residual(torch.zeros_like(freq)[None])[0]  # the spectrum's wiggles around its smooth curve
        zero, lobe = 0.610 / radius, 0.817 / radius  # J1's first zero and the first side lobe's peak
        bands = [(freq > a) & (freq < b) for a, b in ((0.92 * zero, 1.08 * zero), (0.92 * lobe, 1.08 * lobe),
                                                       (0.65 * zero, 0.8 * zero))]
        if not all(bool(band.any()) for band in bands):
            return radius, 0.0
        at_zero, at_lobe, before = (float(smooth[band].mean()) for band in bands)
        # a dip on both sides: one peak of a periodic texture (Set14's barbara) only rises on one side of it
        return radius, min(at_lobe - at_zero, before - at_zero)

    @torch.no_grad()
    def estimate_kernel(self, image):
        """``[3,H,W]`` sRGB in [0, 1] -> (kernel ``[K,K]`` with K = max_kernel_size, confidence in [0, 1], info
        dict). The kernel is at full resolution, centred, sums to 1."""
        cfg = self.config
        image = image.float()
        lum = luminance(image[None], self.luma_weights.to(image.device))
        h, w = lum.shape[-2:]
        down = min(1.0, cfg.estimation_max_side / max(h, w))
        if down < 1.0:
            lum = F.interpolate(lum, scale_factor=down, mode="bilinear", antialias=True, align_corners=False)
        if min(lum.shape[-2:]) < 32:  # too small to hold any blur estimate
            delta = torch.zeros(cfg.max_kernel_size, cfg.max_kernel_size, device=lum.device)
            delta[cfg.max_kernel_size // 2, cfg.max_kernel_size // 2] = 1
            return delta, 0.0, {"length": 0.0, "width": 0.0, "angle": 0.0, "regions": [], "scale": down}
        saturated = (lum >= cfg.saturation).to(lum.dtype)
        trails = []
        if cfg.trail_min_count is not None and float(saturated.max()) > 0:
            trails = light_trails(lum[0, 0], cfg.saturation, max(3, int(round(cfg.max_kernel_size * down))))
        if cfg.linear_light:
            lum = srgb_to_linear(lum)
        size, corners = self._regions(lum)
        sizes = sorted({min(int(s) | 1, cfg.max_kernel_size) for s in cfg.kernel_sizes})
        # at the estimation scale, and at most half the region (a kernel must be smaller than what it blurs)
        sizes = sorted({min(max(3, int(round(s * down)) | 1), (min(size) // 2) | 1) for s in sizes})
        region_kernels, region_ratios, chosen_ratios, unanimous, sparse_searches = [], [], [], [], []
        for y0, x0 in corners:
            region = lum[0, 0, y0 : y0 + size[0], x0 : x0 + size[1]]
            sat = saturated[0, 0, y0 : y0 + size[0], x0 : x0 + size[1]]
            candidates, ratios, moments, sparse = [], [], [], False
            for ks in sizes:
                lam = None
                if candidates and ks == max(sizes) and cfg.long_blur_lambda is not None:
                    b = min(range(len(ratios)), key=lambda i: ratios[i])
                    # the smaller search already found a long, trusted blur: the largest one uses a sparser latent
                    # image (only the strongest edges, which long kernels need) instead of the usual one
                    if moments[b][0] >= cfg.long_blur_length and ratios[b] <= cfg.spectral_ratio_range[0]:
                        lam, sparse = cfg.long_blur_lambda, True
                candidates.append(self._estimate_region(region, sat, ks, lam))
                ratios.append(self.spectral_ratio(region, candidates[-1], sat))
                moments.append(kernel_moments(candidates[-1]))  # (length, width, angle) at the estimation scale
            best = min(range(len(ratios)), key=lambda i: ratios[i])
            if sparse:  # the sparse search is kept only where clearly better
                shorter = min(range(len(ratios) - 1), key=lambda i: ratios[i])
                best = len(ratios) - 1 if ratios[-1] < (1 - cfg.long_blur_margin) * ratios[shorter] else shorter
            unanimous.append(all(math.isfinite(r) and math.hypot(m[0], m[1]) / down >= cfg.min_blur_length
                                 for m, r in zip(moments, ratios)))
            sparse_searches.append(sparse)
            region_kernels.append(candidates[best])
            region_ratios.append(ratios)
            chosen_ratios.append(ratios[best])
        kmax = max(sizes)
        kernels = torch.stack([F.pad(kk, [(kmax - kk.shape[-1]) // 2] * 4) for kk in region_kernels])
        kernel = kernels.mean(0)
        if down < 1.0:  # back to full resolution
            full = max(3, min(cfg.max_kernel_size, int(round(kmax / down)) | 1))
            kernel = resize_kernel(kernel, full)
        out = torch.zeros(cfg.max_kernel_size, cfg.max_kernel_size, device=kernel.device, dtype=kernel.dtype)
        k, m = kernel.shape[-1], cfg.max_kernel_size
        if k <= m:
            out[(m - k) // 2 : (m - k) // 2 + k, (m - k) // 2 : (m - k) // 2 + k] = kernel
        else:
            out = kernel[(k - m) // 2 : (k - m) // 2 + m, (k - m) // 2 : (k - m) // 2 + m]
        out = centre_kernel(out / out.sum())
        length, width, angle = kernel_moments(out)
        spread = math.hypot(length, width)
        confidence = min(1.0, max(0.0, (spread - cfg.min_blur_length) / (cfg.full_blur_length - cfg.min_blur_length)))
        # consistency: the best region must not hold detail the kernel would have removed
        ratio = chosen_ratios[0]
        lo, hi = cfg.spectral_ratio_range
        ratio_confidence = min(1.0, max(0.0, (hi - ratio) / (hi - lo)))
        fit = as_lights = float("nan")
        if cfg.trail_min_count is not None and len(trails) >= cfg.trail_min_count:
            # clipped lights' trails are pictures of the kernel: one that explains few of their shapes is wrong
            fit, as_lights = trail_fit(trails, kernels.mean(0), cfg.saturation)
            lo, hi = cfg.trail_fit_range
            confidence *= min(1.0, max(0.0, (fit - lo) / max(hi - lo, 1e-9)))
            if cfg.trail_trust is not None and as_lights >= cfg.trail_trust:
                ratio_confidence = 1.0
        confidence *= ratio_confidence
        if cfg.unanimous_blur and not unanimous[0]:  # one hypothesis found no blur: a sharp photo's texture, not blur
            confidence = 0.0
        info = {"length": length, "width": width, "angle": angle, "regions": corners, "region_size": list(size),
                "spectral_ratios": region_ratios, "spectral_ratio": ratio, "unanimous": unanimous[0], "kernel_sizes": sizes,
                "scale": down, "long_blur_search": sparse_searches[0], "light_trails": len(trails), "trail_fit": fit,
                "trail_lights": as_lights}
        if cfg.defocus_radii is not None and confidence < 1.0:  # not a trusted motion kernel: is it defocus?
            y0, x0 = corners[0]
            radius, dip = self.fit_defocus(lum[0, 0, y0 : y0 + size[0], x0 : x0 + size[1]])
            # a best fit at the end of the radii tried is the edge of the search, not a disk found: its first ring
            # lies at the bottom of the fitted band, where the scene's layout dominates (sharp Set14 img_001: a
            # 19.5 px disk, dip 0.94, applied at 7%, cost 6.9 dB; docs/deconvolution.md)
            at_edge = radius >= cfg.defocus_radii[1] - 1.0
            radius = min(radius / down, (cfg.max_kernel_size - 1) / 2)
            disk = disk_kernel(radius, cfg.max_kernel_size, device=out.device, dtype=out.dtype)
            d_length, d_width, _ = kernel_moments(disk)
            d_spread = math.hypot(d_length, d_width)
            lo, hi = cfg.defocus_dip_range
            d_conf = min(1.0, max(0.0, (d_spread - cfg.min_blur_length) / (cfg.full_blur_length - cfg.min_blur_length)))
            d_conf *= min(1.0, max(0.0, (dip - lo) / (hi - lo))) * (not at_edge)
            info.update(defocus_radius=radius, defocus_dip=dip)
            if d_conf > confidence:
                out, confidence = disk, d_conf
                info.update(length=d_length, width=d_width, angle=0.0, defocus=True)
        return out, confidence, info

    # ------------------------------------------------------------------ non-blind deconvolution
    @torch.no_grad()
    def deconvolve_photo(self, image, kernel):
        """``[3,H,W]`` sRGB photo deconvolved with ``kernel``: in sRGB, or with ``deconv_linear_light`` in linear
        light (the sRGB curve undone, then redone; the clipping level converted with it)."""
        if not self.config.deconv_linear_light:
            return self.deconvolve(image, kernel)
        saturation = float(srgb_to_linear(torch.tensor(float(self.config.saturation))))
        return linear_to_srgb(self.deconvolve(srgb_to_linear(image), kernel, saturation=saturation))

    @torch.no_grad()
    def deconvolve(self, image, kernel, weight=None, saturation=None):
        """``[C,H,W]`` (any C) deconvolved with ``kernel [K,K]``: min ||k*x - y||^2 + w sum |grad x|^p by HQS with an
        iteratively reweighted shrinkage (p ~ 0.8), on a smoothly periodic padding; clipped pixels (at or above
        ``saturation``, default the config's) are missing data (replaced each iteration by the re-blurred estimate)."""
        cfg = self.config
        c, h, w = image.shape
        length, width, _ = kernel_moments(kernel)
        if weight is None:
            weight = cfg.deconv_weight * (1 + math.hypot(length, width) / cfg.deconv_length_scale)
        # crop the kernel to its support: the padding only needs to cover it
        nz = torch.nonzero(kernel > 0)
        r = int((nz - kernel.shape[-1] // 2).abs().max()) if len(nz) else 0
        c0 = kernel.shape[-1] // 2
        kernel = kernel[c0 - r : c0 + r + 1, c0 - r : c0 + r + 1]
        shape = (fast_size(h + 2 * r + 2), fast_size(w + 2 * r + 2))
        k_otf = psf2otf(kernel.float(), shape)
        dx_otf, dy_otf = gradient_otfs(shape, image.device, torch.float32)
        den_k, den_g = _real_view_power(k_otf), _real_view_power(dx_otf, dy_otf)
        del dx_otf, dy_otf
        # one channel at a time: a 12 MP photo's spectra are ~100 MB each, and each step holds several
        saturation = cfg.saturation if saturation is None else saturation
        image = image.float()
        lights = find_light_sources(image, kernel.float(), saturation) if cfg.deconv_light_sources else []
        return torch.stack([self._deconvolve_channel(channel, k_otf, den_k, den_g, shape, weight, saturation, lights)
                            for channel in image])

    def _deconvolve_channel(self, image, k_otf, den_k, den_g, shape, weight, saturation, lights=()):
        cfg = self.config
        h, w = image.shape
        y = periodic_pad(image, shape[0] - h, shape[1] - w)
        clipped = y >= saturation
        has_clipped = bool(clipped[:h, :w].any())
        y_f = torch.fft.rfft2(y)
        x = light_source_start(y, lights, saturation) if has_clipped and lights else y.clone()
        beta = weight * 4
        for _ in range(cfg.deconv_iterations):
            if has_clipped:  # missing data: a clipped pixel only says "at least this bright"
                reblur = torch.fft.irfft2(torch.fft.rfft2(x) * k_otf, s=shape)
                y_f = torch.fft.rfft2(torch.where(clipped, torch.maximum(reblur, y), y))
                del reblur
            gx, gy = grad_x(x), grad_y(x)
            # shrinkage of a sparse (p < 1) prior, linearised around the current gradients (IRLS weight |g|^(p-1))
            for g in (gx, gy):
                thr = (weight / beta) / (g.abs() + 0.01) ** 0.2
                g.copy_(torch.sign(g) * (g.abs() - thr).clamp_min(0))
                del thr
            num = torch.conj(k_otf) * y_f + beta * torch.fft.rfft2(grad_xt(gx) + grad_yt(gy))
            del gx, gy
            # a complex spectrum divided by a real one on its real view (see _real_view_power)
            torch.view_as_real(num).div_(den_k + beta * den_g)
            x = torch.fft.irfft2(num, s=shape)
            del num
            if has_clipped and cfg.deconv_nonnegative:  # a projection after each step (see deconv_nonnegative)
                x.clamp_(min=0.0)
            beta *= 2.5
        return x[:h, :w]

    @torch.no_grad()
    def confidence_map(self, image, kernel):
        """Where does the one kernel hold? ``[3,H,W]`` -> ``[H,W]`` in [0, 1]: ``spectral_ratio`` of the kernel on
        ``gate_tile`` px tiles of the luminance (at the estimation scale), mapped through ``spectral_ratio_range``
        (widened for long kernels, ``tile_ratio_length``) and interpolated smoothly. Static background beside a
        moving subject, or a rotation, gives tiles the kernel does not explain; they keep the photo as it was."""
        cfg = self.config
        lum = luminance(image[None].float(), self.luma_weights.to(image.device))
        h, w = lum.shape[-2:]
        down = min(1.0, cfg.estimation_max_side / max(h, w))
        if down < 1.0:
            lum = F.interpolate(lum, scale_factor=down, mode="bilinear", antialias=True, align_corners=False)
            kernel = resize_kernel(kernel, max(3, int(round(kernel.shape[-1] * down)) | 1))
        saturated = (lum >= cfg.saturation).to(lum.dtype)
        noise = noise_sigma(lum) if cfg.noise_aware_tiles else 0.0
        tile = cfg.gate_tile
        nz = torch.nonzero(kernel > 0)
        r = int((nz - kernel.shape[-1] // 2).abs().max()) if len(nz) else 0
        c = kernel.shape[-1] // 2
        kernel = kernel[c - r : c + r + 1, c - r : c + r + 1]  # its support: must fit in half a tile
        lh, lw = lum.shape[-2:]
        if min(lh, lw) < tile or 2 * r + 1 > tile // 2:
            return torch.ones(h, w, device=image.device)
        ys = torch.linspace(0, lh - tile, max(1, round(lh / tile))).round().long().tolist()
        xs = torch.linspace(0, lw - tile, max(1, round(lw / tile))).round().long().tolist()
        lo, hi = cfg.spectral_ratio_range
        if cfg.tile_ratio_length:
            widen = min(2.0, max(1.0, kernel_moments(kernel)[0] / cfg.tile_ratio_length))
            lo, hi = lo * widen, hi * widen
        grid = torch.zeros(len(ys), len(xs), device=image.device)
        for i, y0 in enumerate(ys):
            for j, x0 in enumerate(xs):
                ratio = self.spectral_ratio(lum[0, 0, y0 : y0 + tile, x0 : x0 + tile], kernel,
                                            saturated[0, 0, y0 : y0 + tile, x0 : x0 + tile], noise)
                # a tile without evidence either way (flat, or its detail below the noise) keeps the photo's confidence
                grid[i, j] = 1.0 if ratio == float("inf") else min(1.0, max(0.0, (hi - ratio) / (hi - lo)))
        return F.interpolate(grid[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]

    # ------------------------------------------------------------------ both
    @torch.no_grad()
    def unblurred(self, image, return_dict=True):
        """What ``forward`` returns for photos that hold no blur to remove, without the search: each photo as it is,
        a delta kernel, confidence 0 (the pipeline calls it for a photo it measures as plainly sharp and clean)."""
        k = self.config.max_kernel_size
        delta = torch.zeros(k, k, device=image.device)
        delta[k // 2, k // 2] = 1.0
        kernels = delta.expand(len(image), k, k).clone()
        result = (image, kernels, image.new_zeros(len(image)), torch.stack([kernel_motion(kk) for kk in kernels]))
        if not return_dict:
            return result
        return BlindDeconvolutionOutput(*result)

    @torch.no_grad()
    def forward(self, image, return_dict=True):
        """``[B,3,H,W]`` sRGB in [0, 1] -> deconvolved images, kernels, confidences (one uniform kernel per image;
        with ``gate_tile`` > 0 applied only where it explains the photo, see ``confidence_map``)."""
        outs, kernels, confs = [], [], []
        for img in image:
            kernel, conf, info = self.estimate_kernel(img)
            if conf > 0:
                sharp = self.deconvolve_photo(img, kernel)
                # a disk's rings of zeros make every tile's spectral_ratio fail: defocus is applied uniformly
                if self.config.gate_tile > 0 and not info.get("defocus"):
                    conf_map = conf * self.confidence_map(img, kernel)
                    conf = float(conf_map.mean())
                else:
                    conf_map = conf
                outs.append((conf_map * sharp + (1 - conf_map) * img.float()).clamp(0, 1).to(image.dtype))
            else:
                outs.append(img)
            kernels.append(kernel)
            confs.append(conf)
        kernels = torch.stack(kernels)
        motion = torch.stack([kernel_motion(k) for k in kernels])
        result = (torch.stack(outs), kernels, image.new_tensor(confs), motion)
        if not return_dict:
            return result
        return BlindDeconvolutionOutput(*result)
