"""Pictures of the estimated motion field for the app (PIL + numpy only).

The motion field follows DESIGN.md: one vector per 8-px patch, ``[3, ceil(H/8), ceil(W/8)]`` with channels
``d*cos(2θ)``, ``d*sin(2θ)`` (θ the blur direction, doubled because a streak has no sign; d the directionality)
and the blur length in pixels. It is drawn as:

- a colour tint over a dimmed copy of the photo: hue = direction, saturation = directionality;
- one mark per cell: a line through the cell centre along the blur, at true length (a streak of L px is drawn L px
  long, capped to the cell), or a circle of diameter L where the blur is isotropic (defocus-like);
- a small colour ring in the corner as the legend for the hue.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

MOTION_PATCH = 8  # DESIGN.md: one motion vector per 8x8 pixel patch
ISOTROPIC_BELOW = 0.25  # directionality under which a blur is drawn as a circle, not a streak


def _as_numpy(motion) -> np.ndarray:
    if hasattr(motion, "detach"):  # torch tensor, without importing torch here
        motion = motion.detach().float().cpu().numpy()
    motion = np.asarray(motion, dtype=np.float32)
    if motion.ndim == 4:
        if motion.shape[0] != 1:
            raise ValueError(f"expected one motion field, got a batch of {motion.shape[0]}")
        motion = motion[0]
    if motion.ndim != 3 or motion.shape[0] != 3:
        raise ValueError(f"motion field must have shape [3, h, w], got {tuple(motion.shape)}")
    return np.nan_to_num(motion)


def motion_to_color(motion) -> np.ndarray:
    """Colour-code a motion field: [3, h, w] -> uint8 [h, w, 3] (hue = direction, saturation = directionality;
    glow.data.motion.motion_to_color at full brightness)."""
    import torch

    from .data.motion import motion_to_color as color_wheel

    rgb = color_wheel(torch.from_numpy(_as_numpy(motion)), max_length=None).permute(1, 2, 0).numpy()
    return (rgb * 255 + 0.5).astype(np.uint8)


def _cell_average(m: np.ndarray, cell: int) -> np.ndarray:
    """Average a [3, h, w] field over cell x cell blocks (doubled-angle vectors average correctly)."""
    _, h, w = m.shape
    hc, wc = math.ceil(h / cell), math.ceil(w / cell)
    padded = np.zeros((3, hc * cell, wc * cell), np.float32)
    weight = np.zeros((hc * cell, wc * cell), np.float32)
    padded[:, :h, :w] = m
    weight[:h, :w] = 1.0
    sums = padded.reshape(3, hc, cell, wc, cell).sum(axis=(2, 4))
    counts = weight.reshape(hc, cell, wc, cell).sum(axis=(1, 3))
    return sums / np.maximum(counts, 1.0)


def _draw_legend(canvas: Image.Image) -> None:
    """A colour ring in the top-right corner: the hue of a streak at angle θ sits at angle θ on the ring."""
    size = max(24, min(96, min(canvas.size) // 6))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0
    dx, dy = xx - c, yy - c
    r = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)  # image axes: y down, θ from +x towards +y
    ring_field = np.stack([np.cos(2 * theta), np.sin(2 * theta), np.ones_like(theta)])  # fully directional
    ring = (r <= c) & (r >= c * 0.45)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = motion_to_color(ring_field)
    rgba[..., 3] = np.where(ring, 255, 0).astype(np.uint8)
    margin = max(4, size // 8)  # bottom-right: viewers put their buttons top-right
    position = (canvas.width - size - margin, canvas.height - size - margin)
    canvas.paste(Image.fromarray(rgba, "RGBA"), position, Image.fromarray(rgba[..., 3]))


def draw_motion_field(
    image: Image.Image,
    motion,
    *,
    source_size: tuple[int, int] | None = None,
    max_marks: int = 24,
    tint: float = 0.45,
    legend: bool = True,
    kernel=None,
) -> Image.Image:
    """Draw ``motion`` ([3, ceil(H/8), ceil(W/8)], DESIGN.md encoding) over ``image``.

    ``source_size`` is the (W, H) the field was estimated at, when ``image`` is a resized preview of it: positions and
    lengths are scaled to the preview. ``max_marks`` is the number of marks along the longer side. ``kernel``
    (``[K, K]``, the estimated PSF) is drawn small in the bottom-left corner, white on black.
    """
    m = _as_numpy(motion)
    image = image.convert("RGB")
    src_w, src_h = source_size or image.size
    scale = image.width / src_w

    # Background: the photo, greyed and dimmed, tinted by the colour-coded field (upsampled smoothly).
    grey = np.asarray(image.convert("L"), np.float32)[..., None] / 255.0
    colour = Image.fromarray(motion_to_color(m)).resize(
        (max(1, round(m.shape[2] * MOTION_PATCH * scale)), max(1, round(m.shape[1] * MOTION_PATCH * scale))),
        Image.BILINEAR,
    ).crop((0, 0, image.width, image.height))
    colour = np.asarray(colour, np.float32) / 255.0
    base = (1 - tint) * (0.25 + 0.6 * grey) + tint * colour * (0.35 + 0.65 * grey)
    canvas = Image.fromarray(np.clip(base * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")

    # Marks: one per cell of `cell` motion patches.
    longest = max(m.shape[1], m.shape[2])
    cell = max(1, math.ceil(longest / max_marks))
    cells = _cell_average(m, cell)
    cell_px = cell * MOTION_PATCH * scale
    line_width = max(2, round(cell_px / 10))  # stays visible when the picture is shown scaled down
    draw = ImageDraw.Draw(canvas)
    for row in range(cells.shape[1]):
        for col in range(cells.shape[2]):
            c2, s2, length = cells[:, row, col]
            cx = (col * cell * MOTION_PATCH + min(cell * MOTION_PATCH, src_w - col * cell * MOTION_PATCH) / 2) * scale
            cy = (row * cell * MOTION_PATCH + min(cell * MOTION_PATCH, src_h - row * cell * MOTION_PATCH) / 2) * scale
            if cx >= image.width or cy >= image.height:
                continue
            directionality = min(1.0, math.hypot(c2, s2))
            drawn = min(max(length, 0.0) * scale, 0.9 * cell_px)  # true length, capped to the cell
            if drawn < 1.5:
                draw.point((cx, cy), fill=(255, 255, 255))
                continue
            if directionality < ISOTROPIC_BELOW:
                r = drawn / 2
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(0, 0, 0), width=line_width + 2)
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(255, 255, 255), width=line_width)
                continue
            theta = 0.5 * math.atan2(s2, c2)
            dx, dy = 0.5 * drawn * math.cos(theta), 0.5 * drawn * math.sin(theta)
            segment = (cx - dx, cy - dy, cx + dx, cy + dy)
            draw.line(segment, fill=(0, 0, 0), width=line_width + 2)
            draw.line(segment, fill=(255, 255, 255), width=line_width)
    if legend:
        _draw_legend(canvas)
    if kernel is not None:
        _draw_kernel(canvas, kernel)
    return canvas


def kernel_picture(kernel, side: int) -> Image.Image | None:
    """An estimated PSF ``[K, K]`` as a ``side`` px RGB picture: cropped to its support, square-root scaled so
    faint tails show, enlarged without smoothing. None for an empty kernel."""
    if hasattr(kernel, "detach"):  # torch tensor, without importing torch here
        kernel = kernel.detach().float().cpu().numpy()
    k = np.nan_to_num(np.asarray(kernel, np.float32))
    if k.ndim != 2 or k.max() <= 0:
        return None
    ys, xs = np.nonzero(k > 0)
    c = k.shape[0] // 2
    r = max(2, int(max(np.abs(ys - c).max(), np.abs(xs - c).max())) + 1)
    k = k[max(0, c - r) : c + r + 1, max(0, c - r) : c + r + 1]
    picture = Image.fromarray((np.sqrt(k / k.max()) * 255 + 0.5).astype(np.uint8), "L")
    return picture.resize((side, side), Image.NEAREST).convert("RGB")


def _draw_kernel(canvas: Image.Image, kernel) -> None:
    """The kernel as a framed inset in the bottom-left corner, about a fifth of the shorter side."""
    side = max(24, min(canvas.width, canvas.height) // 5)
    picture = kernel_picture(kernel, side)
    if picture is None:
        return
    margin = max(4, side // 12)
    box = (margin, canvas.height - side - margin)
    ImageDraw.Draw(canvas).rectangle((box[0] - 2, box[1] - 2, box[0] + side + 1, box[1] + side + 1),
                                     outline=(255, 255, 255), width=2)
    canvas.paste(picture, box)


def describe_motion_field(motion) -> str:
    """One line for people: typical blur length, how directional the blur is and along which direction."""
    m = _as_numpy(motion)
    length = m[2].ravel()
    weights = np.maximum(length, 1e-6)
    local_directionality = float(np.average(np.hypot(m[0], m[1]).ravel(), weights=weights))
    c2 = float(np.average(m[0].ravel(), weights=weights))
    s2 = float(np.average(m[1].ravel(), weights=weights))
    coherence = math.hypot(c2, s2) / max(local_directionality, 1e-6)  # 1 = the same direction everywhere
    median_len, p90_len = float(np.median(length)), float(np.percentile(length, 90))
    text = f"blur length ≈ {median_len:.1f} px (90th percentile {p90_len:.1f} px), "
    if local_directionality < ISOTROPIC_BELOW:
        return text + f"mostly isotropic, defocus-like (directionality {local_directionality:.2f})"
    text += f"directional, motion-like (directionality {local_directionality:.2f}), "
    if coherence < 0.5:
        return text + "direction varies across the image (rotation, zoom or moving objects)"
    angle = (math.degrees(0.5 * math.atan2(s2, c2)) + 180.0) % 180.0
    return text + f"mostly along {angle:.0f}° (0° = horizontal, 90° = vertical)"
