# Self-contained like blind_deconvolution.py, which imports it relatively: copied beside it into its folder of a
# saved pipeline. Only torch, the standard library and, for labelling clipped regions, scipy.ndimage (with numpy).
"""The small pieces of blind deconvolution: colour and padding, the Fourier domain (OTFs, image gradients), the
noise estimate, the blur kernel's projection, centring, resizing and moments (its length and direction), clipped
lights modelled as light sources, and their trails as a check on a kernel."""

import math

import torch
import torch.nn.functional as F


def luminance(rgb, weights=(0.299, 0.587, 0.114)):
    """``[B,3,H,W]`` -> ``[B,1,H,W]`` (Rec. 601 weights by default)."""
    w = torch.as_tensor(weights, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (rgb * w).sum(dim=1, keepdim=True)


def srgb_to_linear(x):
    x = x.clamp(0, 1)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x):
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def periodic_pad(x, pad_h, pad_w):
    """Pad ``[..., H, W]`` by ``pad_h`` rows at the bottom and ``pad_w`` columns at the right so the result is smooth
    across its wrap-around edges: the padding ramps linearly from the last row/column back to the first. The FFT
    then sees no step at the image border (Liu & Jia's boundary wrapping in its simplest form)."""
    if pad_w > 0:
        t = torch.arange(1, pad_w + 1, device=x.device, dtype=x.dtype) / (pad_w + 1)
        last, first = x[..., :, -1:], x[..., :, :1]
        x = torch.cat([x, last + (first - last) * t.view(1, -1)], dim=-1)
    if pad_h > 0:
        t = torch.arange(1, pad_h + 1, device=x.device, dtype=x.dtype) / (pad_h + 1)
        last, first = x[..., -1:, :], x[..., :1, :]
        x = torch.cat([x, last + (first - last) * t.view(-1, 1)], dim=-2)
    return x


def dilate(mask, size):
    """Grey-level dilation of ``[H, W]`` by a ``size`` x ``size`` square (odd ``size``; the output keeps the shape).
    Done as a row pass then a column pass: the same result as one ``max_pool2d`` by the square (max is separable),
    at 2 size instead of size^2 comparisons per pixel (75 px on a 560x820 region: 0.06 s instead of 1.6 s)."""
    half = size // 2
    x = F.max_pool2d(mask[None, None], (1, size), stride=1, padding=(0, half))
    return F.max_pool2d(x, (size, 1), stride=1, padding=(half, 0))[0, 0]


# Copied from glow.data.kernels._fast_len (this file must not import glow)
def fast_size(n):
    """Smallest 2^a 3^b 5^c >= n: FFT sizes with small prime factors are several times faster."""
    best = 1 << max(n - 1, 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def psf2otf(kernel, shape):
    """Centred ``[..., k, k]`` PSF -> its rfft2 over ``shape`` with the centre moved to the origin."""
    k = kernel.shape[-1]
    padded = kernel.new_zeros(kernel.shape[:-2] + tuple(shape))
    # the kernel written straight into its wrapped place (what torch.roll of the padded array gives, without
    # copying the whole array: the search calls this hundreds of times per photo)
    index = (torch.arange(k, device=kernel.device) - k // 2) % torch.tensor(shape, device=kernel.device)[:, None]
    padded[..., index[0][:, None], index[1][None, :]] = kernel
    return torch.fft.rfft2(padded)


def otf2psf(otf, shape, k):
    """Inverse of ``psf2otf``: the centred ``k x k`` window of the spatial response."""
    spatial = torch.fft.irfft2(otf, s=shape)
    index = (torch.arange(k, device=otf.device) - k // 2) % torch.tensor(shape, device=otf.device)[:, None]
    return spatial[..., index[0][:, None], index[1][None, :]]


def gradient_otfs(shape, device, dtype):
    """rfft2 of the forward differences [-1, 1] in x and y (circular)."""
    dx = torch.zeros(shape, device=device, dtype=dtype)
    dx[0, 0], dx[0, -1] = -1.0, 1.0  # (D x)[i] = x[i] - x[i-1] ... as a circular filter with the origin at [0, 0]
    dy = torch.zeros(shape, device=device, dtype=dtype)
    dy[0, 0], dy[-1, 0] = -1.0, 1.0
    return torch.fft.rfft2(dx), torch.fft.rfft2(dy)


# Circular forward differences and their adjoints, written by slices into one output: the same values as
# ``x - torch.roll(x, 1)`` without the rolled copy (the kernel search runs them thousands of times per photo).
def grad_x(x):
    out = torch.empty_like(x)
    torch.sub(x[..., 1:], x[..., :-1], out=out[..., 1:])
    torch.sub(x[..., :1], x[..., -1:], out=out[..., :1])
    return out


def grad_y(x):
    out = torch.empty_like(x)
    torch.sub(x[..., 1:, :], x[..., :-1, :], out=out[..., 1:, :])
    torch.sub(x[..., :1, :], x[..., -1:, :], out=out[..., :1, :])
    return out


def grad_xt(g):
    """Adjoint of ``grad_x`` (circular): ``g - roll(g, -1)``."""
    out = torch.empty_like(g)
    torch.sub(g[..., :-1], g[..., 1:], out=out[..., :-1])
    torch.sub(g[..., -1:], g[..., :1], out=out[..., -1:])
    return out


def grad_yt(g):
    out = torch.empty_like(g)
    torch.sub(g[..., :-1, :], g[..., 1:, :], out=out[..., :-1, :])
    torch.sub(g[..., -1:, :], g[..., :1, :], out=out[..., -1:, :])
    return out


def noise_sigma(lum):
    """Standard deviation of white noise in ``[..., H, W]``: the median absolute diagonal Haar detail / 0.6745
    (Donoho's estimator; edges are sparse there, so the median sees mostly noise). JPEG and ISP denoising leave real
    photos with ~0 here; simulated 1% noise reads as ~0.006 on luminance."""
    h, w = lum.shape[-2:]
    x = lum[..., : h // 2 * 2, : w // 2 * 2]
    hh = (x[..., 0::2, 0::2] - x[..., 1::2, 0::2] - x[..., 0::2, 1::2] + x[..., 1::2, 1::2]) / 2
    return float(hh.abs().flatten().median()) / 0.6745


def disk_kernel(radius, size, device=None, dtype=torch.float32, supersample=4):
    """Out-of-focus PSF: a disk of ``radius`` px, area-sampled (``supersample``^2 points per pixel), centred in a
    ``[size, size]`` grid, sums to 1. (glow.data.kernels.defocus_kernel draws the training disks; this module travels
    alone in saved pipeline folders, where `glow` cannot be imported, hence its own.)"""
    c = (size - 1) / 2
    offsets = (torch.arange(supersample, device=device, dtype=dtype) + 0.5) / supersample - 0.5
    fine = ((torch.arange(size, device=device, dtype=dtype) - c).view(-1, 1) + offsets.view(1, -1)).reshape(-1)
    inside = ((fine.view(-1, 1) ** 2 + fine.view(1, -1) ** 2) <= radius**2).to(dtype)
    kernel = F.avg_pool2d(inside[None, None], supersample)[0, 0]
    return kernel / kernel.sum().clamp_min(1e-12)


def radial_power(region, step=0.005, f_max=0.35):
    """Mean power spectrum of ``[H, W]`` (Hann window, mean removed) in rings of width ``step`` cycles/px up to
    ``f_max`` -> (ring centre frequencies ``[n]``, mean power ``[n]``)."""
    h, w = region.shape
    win = torch.hann_window(h, periodic=False, device=region.device)[:, None] * torch.hann_window(
        w, periodic=False, device=region.device)[None, :]
    power = torch.fft.rfft2((region - (region * win).sum() / win.sum()) * win).abs() ** 2
    fy = torch.fft.fftfreq(h, device=region.device).view(-1, 1)
    fx = torch.fft.rfftfreq(w, device=region.device).view(1, -1)
    n = int(round(f_max / step))
    ring = (torch.sqrt(fx * fx + fy * fy) / step).long().clamp(max=n).flatten()
    total = torch.zeros(n + 1, device=region.device, dtype=power.dtype).index_add_(0, ring, power.flatten())
    count = torch.zeros_like(total).index_add_(0, ring, torch.ones_like(power.flatten()))
    freq = (torch.arange(n, device=region.device, dtype=power.dtype) + 0.5) * step
    return freq, (total / count.clamp_min(1))[:n]


def disk_gain(freq, radius):
    """``|OTF|^2`` of a disk PSF of ``radius`` px at radial frequency ``freq`` (cycles/px): ``(2 J1(x) / x)^2``,
    ``x = 2 pi radius freq``. ``radius`` may be ``[R, 1]`` for several radii at once."""
    x = (2 * math.pi * freq * radius).clamp_min(1e-6)
    return (2 * torch.special.bessel_j1(x) / x) ** 2


def largest_component(mask, weights):
    """Keep the 8-connected component of ``mask`` (``[k, k]`` bool) with the most ``weights`` mass. Labels spread by
    max-pooling (kernels are at most ~100 px, so this converges in about a kernel diameter of cheap steps)."""
    k = mask.shape[-1]
    labels = torch.arange(1, k * k + 1, device=mask.device, dtype=weights.dtype).view(k, k) * mask
    for _ in range(4 * k):
        grown = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    ids = labels.flatten().long()
    mass = torch.zeros(k * k + 1, device=mask.device, dtype=weights.dtype).index_add_(0, ids, weights.flatten())
    mass[0] = 0
    return labels == mass.argmax().to(labels.dtype)


def centre_kernel(kernel):
    """Shift ``[k, k]`` so its centroid lands on the centre pixel (integer shift; what falls off is dropped)."""
    k = kernel.shape[-1]
    total = kernel.sum().clamp_min(1e-12)
    idx = torch.arange(k, device=kernel.device, dtype=kernel.dtype)
    cy = int(round(float((kernel.sum(1) * idx).sum() / total)))
    cx = int(round(float((kernel.sum(0) * idx).sum() / total)))
    dy, dx = k // 2 - cy, k // 2 - cx
    if dy == 0 and dx == 0:
        return kernel
    out = torch.zeros_like(kernel)
    ys, yd = slice(max(0, -dy), min(k, k - dy)), slice(max(0, dy), min(k, k + dy))
    xs, xd = slice(max(0, -dx), min(k, k - dx)), slice(max(0, dx), min(k, k + dx))
    out[yd, xd] = kernel[ys, xs]
    return out


def resize_kernel(kernel, size):
    out = F.interpolate(kernel[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    out = out.clamp_min(0)
    return out / out.sum().clamp_min(1e-12)


def kernel_covariance(kernel):
    """Second moments ``(cxx, cyy, cxy)`` of a ``[k, k]`` PSF about its centroid (x right, y down)."""
    k = kernel.shape[-1]
    p = kernel / kernel.sum().clamp_min(1e-12)
    idx = torch.arange(k, device=kernel.device, dtype=kernel.dtype)
    ys, xs = idx.view(k, 1), idx.view(1, k)
    mx, my = (p * xs).sum(), (p * ys).sum()
    return (p * (xs - mx) ** 2).sum(), (p * (ys - my) ** 2).sum(), (p * (xs - mx) * (ys - my)).sum()


def kernel_moments(kernel):
    """``[k, k]`` -> (length along the main axis ``sqrt(12 λ1)``, across it ``sqrt(12 λ2)``, angle of the main axis
    in radians, x right / y down)."""
    cxx, cyy, cxy = kernel_covariance(kernel)
    root = torch.sqrt((cxx - cyy) ** 2 + 4 * cxy**2)
    lam1, lam2 = 0.5 * (cxx + cyy + root), 0.5 * (cxx + cyy - root)
    angle = 0.5 * torch.atan2(2 * cxy, cxx - cyy)
    return float(torch.sqrt(12 * lam1.clamp_min(0))), float(torch.sqrt(12 * lam2.clamp_min(0))), float(angle)


# Copied from glow.data.motion.covariance_to_motion, on kernel_covariance (this file must not import glow)
def kernel_motion(kernel):
    """``[k, k]`` PSF -> ``[3]`` motion encoding of DESIGN.md: ``d cos 2θ, d sin 2θ, length``."""
    cxx, cyy, cxy = kernel_covariance(kernel.float())
    trace = (cxx + cyy).clamp_min(1e-8)
    lam1 = 0.5 * (cxx + cyy + torch.sqrt((cxx - cyy) ** 2 + 4 * cxy * cxy))
    return torch.stack([(cxx - cyy) / trace, 2 * cxy / trace, torch.sqrt(12.0 * lam1.clamp_min(0))])


def _clipped_regions(clipped, group):
    """Label the clipped pixels of ``clipped [H, W]`` (bool) as regions, pixels within ``group`` px joined (a light's
    trail breaks where the kernel is faint). -> (labels ``[H, W]`` numpy int, pixel count per label, bounding box
    slices per label, ``None`` for an empty label). scipy.ndimage on the CPU: torch has no labelling, and spreading
    labels by max-pooling (as ``largest_component`` does on a kernel) costs a pass per pixel of extent over a photo."""
    import numpy as np
    from scipy import ndimage  # here: a photo without clipped pixels never pays its import

    mask = clipped.cpu().numpy()
    labels, _ = ndimage.label(ndimage.binary_dilation(mask, structure=[[1] * group] * group), structure=[[1] * 3] * 3)
    labels *= mask
    return labels, np.bincount(labels.ravel()), ndimage.find_objects(labels)


def find_light_sources(image, kernel, saturation, group=5, margin=4, tau=0.8):
    """Clipped regions of ``image [C, H, W]`` (any channel at or above ``saturation``) that a small bright light blurred
    by ``kernel`` (centred, cropped to its support) explains: no larger than the kernel's extent plus ``margin`` px
    and away from the photo's border. Clipped pixels within ``group`` px are one light (a light's trail breaks where
    the kernel is faint). For each: the source pixels (where the kernel, placed there, puts at least ``tau`` of the
    best placement's mass on the clipped region), the source blurred by the kernel, and a ring just outside its
    blur to read the background from. -> list of dicts (window slices and masks, all on the window)."""
    h, w = image.shape[-2:]
    clipped = image.amax(0) >= saturation
    if not bool(clipped.any()):
        return []
    support = kernel > 0
    nz = torch.nonzero(support)
    extent_y, extent_x = (int(v) + 1 for v in (nz.amax(0) - nz.amin(0)))
    r = kernel.shape[-1] // 2
    # every window below fits in side x side: one FFT size for all of them, so the kernel's three transforms are made
    # once and the FFT plans are reused (windows of their own sizes cost ~1 s more per photo in first-use plans)
    side = max(extent_y, extent_x) + margin + 4 * r
    shape = (fast_size(side + kernel.shape[-1]),) * 2
    kernel_otf, flipped_otf, support_otf = (psf2otf(k, shape) for k in (kernel, kernel.flip(-2, -1), support.float()))

    def conv(x, otf):  # zero outside the window: the FFT is larger than the window by the kernel, so no wrap-around
        return torch.fft.irfft2(torch.fft.rfft2(x, s=shape) * otf, s=shape)[: x.shape[0], : x.shape[1]]

    labels, counts, boxes = _clipped_regions(clipped, group)
    min_pixels = max(extent_y, extent_x)
    lights = []
    for i, box in enumerate(boxes):
        if box is None or counts[i + 1] < min_pixels:
            continue  # too few clipped pixels for any channel to pass light_source_start: skip its FFTs (glitter, snow)
        (top, bottom), (left, right) = (box[0].start, box[0].stop), (box[1].start, box[1].stop)
        if bottom - top > extent_y + margin or right - left > extent_x + margin:
            continue  # larger than a blurred point: a white wall or sky, not a light
        if top == 0 or left == 0 or bottom == h or right == w:
            continue  # its trail runs out of the photo: the source cannot be placed
        window = (slice(max(0, top - 2 * r), min(h, bottom + 2 * r)), slice(max(0, left - 2 * r), min(w, right + 2 * r)))
        region = torch.from_numpy(labels[window] == i + 1).to(image.device)
        # where the kernel, placed, lands most of its mass on the clipped region (a correlation: the flipped kernel)
        score = conv(region.float(), flipped_otf)
        source = score >= tau * score.max()
        source_blur = conv(source.float(), kernel_otf)
        source_support = conv(source.float(), support_otf) > 0.5
        ring = (dilate(source_support.float(), 7) > 0) & ~source_support & ~clipped[window]
        if int(ring.sum()) < 5:
            continue
        lights.append(dict(window=window, region=region, source=source, source_blur=source_blur, ring=ring,
                           min_pixels=min_pixels))
    return lights


def light_source_start(channel, lights, saturation, min_iou=0.5, min_excess=3.0):
    """A start for the missing-data deconvolution of one ``channel [H', W']`` (the photo at its top-left): each light
    of ``find_light_sources`` whose clipped shape in this channel the model reproduces (intersection over union of
    at least ``min_iou``) becomes its source pixels at the brightness that makes the blurred source reach the
    clipping level at the clipped region's edge, on the background read from the ring; its trail becomes that
    background. Started from the photo itself, the deconvolution explains a trail as a streak of exactly white and
    rings around it; started here, the re-blurred estimate exceeds white on the trail and the missing-data step
    keeps it (docs/deconvolution.md, "Clipped lights as light sources").

    Not a light, left as it was: a source less than ``min_excess`` times white above its background, or a channel
    with fewer clipped pixels than the kernel is long (sunlit skin and shirts clipped in one channel, on the street
    photo, got sources 1.2-2x white and a few cyan pixels without these two checks)."""
    start = channel.clone()
    for light in lights:
        view = start[light["window"]]
        values = channel[light["window"]]
        clipped = light["region"] & (values >= saturation)
        if int(clipped.sum()) < light["min_pixels"]:
            continue  # not (or barely) clipped in this channel: its data already say how bright it is
        background = float(values[light["ring"]].median())
        inner = -F.max_pool2d(-clipped.float()[None, None], 3, stride=1, padding=1)[0, 0] > 0.5
        edge = light["source_blur"][clipped & ~inner]
        edge = edge[edge > 1e-6]
        if edge.numel() == 0:
            continue
        amplitude = (saturation - background) / float(edge.median())
        if amplitude < min_excess:
            continue  # a white surface or a highlight a little over white, not a light
        predicted = amplitude * light["source_blur"] + background >= saturation
        iou = float((predicted & clipped).sum()) / max(1, int((predicted | clipped).sum()))
        if iou < min_iou:
            continue
        view[light["region"]] = background
        view[light["source"]] = view[light["source"]].clamp_min(amplitude + background)
    return start


def light_trails(lum, saturation, max_extent, group=5, margin=4, min_pixels=5, max_background=0.6, max_count=40):
    """Clipped regions of a luminance ``lum [H, W]`` that look like a small light's trail, whatever the kernel: at
    least ``min_pixels`` clipped pixels, no larger than ``max_extent`` + ``margin`` px, away from the border, on a
    background (the median of a 5 px ring around it) no brighter than ``max_background``. The ``max_count`` largest,
    as dicts of their box (top, left) and clipped mask on it and their background: what ``trail_fit`` tests a kernel on.
    The same list for every kernel, so kernels are compared on the same lights."""
    h, w = lum.shape[-2:]
    clipped = lum >= saturation
    if not bool(clipped.any()):
        return []
    labels, counts, boxes = _clipped_regions(clipped, group)
    trails = []
    for i, box in enumerate(boxes):
        if box is None or counts[i + 1] < min_pixels:
            continue
        (top, bottom), (left, right) = (box[0].start, box[0].stop), (box[1].start, box[1].stop)
        if bottom - top > max_extent + margin or right - left > max_extent + margin:
            continue  # a white wall or the sky, not a light
        if top == 0 or left == 0 or bottom == h or right == w:
            continue  # its trail runs out of the photo
        pad = 6
        window = (slice(max(0, top - pad), min(h, bottom + pad)), slice(max(0, left - pad), min(w, right + pad)))
        near = torch.from_numpy(labels[window] == i + 1).to(lum.device)
        ring = (dilate(near.float(), 2 * pad - 1) > 0) & ~near & ~clipped[window]
        if int(ring.sum()) < 5:
            continue
        background = float(lum[window][ring].median())
        if background > max_background:
            continue  # a bright surface clipped in places, not a light on a darker scene
        region = torch.from_numpy(labels[top:bottom, left:right] == i + 1).to(lum.device)
        trails.append(dict(top=top, left=left, region=region, background=background, pixels=int(counts[i + 1])))
    trails.sort(key=lambda t: -t["pixels"])
    return trails[:max_count]


def trail_fit(trails, kernel, saturation, tau=0.8, min_excess=3.0, min_iou=0.5):
    """How well ``kernel`` (centred, at the trails' scale) explains the ``light_trails`` as small lights. For each
    trail: the source is where the kernel, placed, lands at least ``tau`` of the best placement's mass on the trail
    (as ``find_light_sources``); its brightness is the one whose blur reaches ``saturation`` at the trail's edge; the
    shape is explained when the predicted clipped shape overlaps the trail by an intersection over union of
    ``min_iou`` or more, and it is a light when that brightness is also at least ``min_excess`` times white above
    its background. -> (share of trails whose shape it explains, share it explains as lights); ``nan`` without
    trails. A kernel of the wrong shape or length predicts the wrong trails; one that is a piece of the true kernel
    can still predict their shape, from a dim source spread along each, but not as lights. The true kernel explains
    the shape of dim, wide lights too (windows 13 px across at 1.5-3x white: every trail), not always as lights.
    Measured on Kodak shake with clipped lights (docs/deconvolution.md, "Light trails check the kernel")."""
    if not trails:
        return float("nan"), float("nan")
    nz = torch.nonzero(kernel > 0)
    c = kernel.shape[-1] // 2
    r = int((nz - c).abs().max()) if len(nz) else 0
    kernel = kernel[c - r : c + r + 1, c - r : c + r + 1].float()
    side = max(max(t["region"].shape) for t in trails) + 4 * r
    shape = (fast_size(side + kernel.shape[-1]),) * 2
    kernel_otf, flipped_otf = psf2otf(kernel, shape), psf2otf(kernel.flip(-2, -1), shape)

    def conv(x, otf):  # zero outside the window (the FFT is larger than it by the kernel: no wrap-around)
        return torch.fft.irfft2(torch.fft.rfft2(x, s=shape) * otf, s=shape)[: x.shape[0], : x.shape[1]]

    shapes = lights = 0
    for trail in trails:
        region = F.pad(trail["region"].float(), [2 * r] * 4) > 0.5  # room for the blur around the trail
        score = conv(region.float(), flipped_otf)
        source = score >= tau * score.max()
        blur = conv(source.float(), kernel_otf)
        inner = -F.max_pool2d(-region.float()[None, None], 3, stride=1, padding=1)[0, 0] > 0.5
        edge = blur[region & ~inner]
        edge = edge[edge > 1e-6]
        if edge.numel() == 0:
            continue
        amplitude = (saturation - trail["background"]) / float(edge.median())
        predicted = amplitude * blur + trail["background"] >= saturation
        iou = float((predicted & region).sum()) / max(1, int((predicted | region).sum()))
        shapes += iou >= min_iou
        lights += iou >= min_iou and amplitude >= min_excess
    return shapes / len(trails), lights / len(trails)
