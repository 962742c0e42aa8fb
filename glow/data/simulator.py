"""BlurSimulator: a sharp sRGB image in, a realistic blurry image plus its full ground truth out.

Order of operations (one sample):
1. sRGB -> linear light with the exact sRGB curve or a random gamma (cameras' tone curves differ);
2. optionally boost highlights beyond the sensor's range (they clip after the blur -> saturated streaks);
3. blur in linear light with one blur kind (global kernel, spatially varying field or moving objects);
4. clip, optional low-light exposure (signal scaled down, noise added, gain back up), optional white balance +
   Bayer mosaic, Poisson-Gaussian sensor noise, demosaic;
5. back to sRGB with the same curve, optional JPEG.

The target (`"sharp"`) is the clean input image: what a user wants to see. It gets no noise, no JPEG and no exposure
change, so the model learns to deblur, denoise and undo compression at once, but never to alter the exposure.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import camera
from .kernels import (camera_shake_kernel, convolve, defocus_kernel, delta_kernel, gaussian_kernel, linear_kernel,
                      kernel_support_radius, normalize_kernel)
from .motion import KERNEL_PATCH, KERNEL_SIZE, MOTION_PATCH, kernel_to_motion, motion_to_polar
from .spatial import depth_defocus, moving_objects, rotation_blur, zoom_blur

__all__ = ["SimulatorConfig", "BlurSimulator", "BLUR_KINDS", "GLOBAL_KINDS", "describe_motion"]

GLOBAL_KINDS = ("camera_shake", "linear_motion", "defocus", "gaussian")
SPATIAL_KINDS = ("rotation", "zoom", "depth_defocus", "object_motion")
BLUR_KINDS = GLOBAL_KINDS + SPATIAL_KINDS + ("none",)
DEFERRABLE_KINDS = GLOBAL_KINDS + ("none", "rotation", "zoom")  # defer=True renders these on the training device


@dataclass
class SimulatorConfig:
    """Probabilities of the default mix (documented in the README). Kind weights need not sum to 1."""

    kind_weights: dict = field(default_factory=lambda: {
        "camera_shake": 0.34, "linear_motion": 0.14, "defocus": 0.10, "gaussian": 0.06,
        "rotation": 0.08, "zoom": 0.07, "depth_defocus": 0.07, "object_motion": 0.10, "none": 0.04,
    })
    p_combine: float = 0.15          # global kinds: convolve with a second, mild kernel (shake + defocus, ...)
    p_srgb_curve: float = 0.5        # exact sRGB curve; otherwise a random gamma in gamma_range
    gamma_range: tuple = (1.8, 2.6)
    p_highlights: float = 0.25       # saturated highlights (boost before blur, clip after)
    highlight_gain: tuple = (1.5, 5.0)
    p_low_light: float = 0.2         # exposure scaled down to low_light_range, gain applied after the noise
    low_light_range: tuple = (0.05, 0.4)
    p_noise: float = 0.75            # Poisson-Gaussian sensor noise
    shot_range: tuple = (1e-4, 8e-3)  # variance per unit signal (log-uniform)
    read_range: tuple = (5e-4, 8e-3)  # read-noise standard deviation (log-uniform)
    p_bayer: float = 0.3             # white balance + RGGB mosaic + bilinear demosaic
    p_jpeg: float = 0.5
    jpeg_quality: tuple = (40, 95)
    max_shake_extent: float = 72.0   # camera shake: larger bounding-box side, px (log-uniform from 4)
    linear_length: tuple = (3.0, 60.0)
    defocus_radius: tuple = (1.0, 12.0)
    gaussian_sigma: tuple = (0.6, 8.0)
    max_objects: int = 2

    @classmethod
    def from_dict(cls, d: dict | None) -> "SimulatorConfig":
        return cls(**(d or {}))

    def to_dict(self) -> dict:
        return asdict(self)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))


def _strength(length: float) -> str:
    return "slight" if length < 6 else "moderate" if length < 15 else "strong" if length < 35 else "severe"


def _direction(theta: float) -> str:
    deg = math.degrees(theta) % 180
    if deg < 22.5 or deg >= 157.5:
        return "horizontal"
    if 67.5 <= deg < 112.5:
        return "vertical"
    return "diagonal"


def describe_motion(motion_vec: torch.Tensor) -> tuple[str, str]:
    """`[3]` encoding -> (strength word, direction word)."""
    theta, d, length = motion_to_polar(motion_vec)
    return _strength(float(length)), _direction(float(theta)) if float(d) > 0.3 else ""


class BlurSimulator:
    """`BlurSimulator(seed=0)(sharp [C, H, W] in [0, 1]) -> dict` (keys and shapes in DESIGN.md).

    Grayscale (C=1) is repeated to RGB, alpha (C=4) dropped. Every call draws from the simulator's own stream;
    pass `seed=` to a call to make that one sample a pure function of (seed, image) (datasets do this).
    """

    def __init__(self, config: SimulatorConfig | dict | None = None, seed: int = 0):
        self.config = config if isinstance(config, SimulatorConfig) else SimulatorConfig.from_dict(config)
        self.seed = seed
        self._stream = np.random.default_rng(seed)
        names = list(self.config.kind_weights)
        weights = np.array([self.config.kind_weights[n] for n in names], dtype=np.float64)
        unknown = set(names) - set(BLUR_KINDS)
        if unknown:
            raise ValueError(f"Unknown blur kinds {sorted(unknown)}; choose from {BLUR_KINDS}")
        if weights.sum() <= 0:
            raise ValueError("kind_weights must contain a positive weight")
        self._kinds = names
        self._weights = weights / weights.sum()

    # ---------------------------------------------------------------- blur kinds
    def _global_kernel(self, kind: str, rng: np.random.Generator):
        c = self.config
        if kind == "camera_shake":
            extent = _loguniform(rng, 4.0, c.max_shake_extent)
            k, _ = camera_shake_kernel(rng, extent=extent)
            return k, "camera shake"
        if kind == "linear_motion":
            k = linear_kernel(_loguniform(rng, *c.linear_length), rng.uniform(0, math.pi))
            return k, "linear motion blur"
        if kind == "defocus":
            blades = int(rng.choice([0, 0, 5, 6, 7, 8]))
            ring = rng.uniform(0, 1) if rng.random() < 0.3 else 0.0
            k = defocus_kernel(_loguniform(rng, *c.defocus_radius), blades=blades, rotation=rng.uniform(0, math.pi),
                               ring=ring)
            return k, "defocus blur" + (" with bright bokeh rims" if ring > 0.3 else "")
        if kind == "gaussian":
            sx = _loguniform(rng, *c.gaussian_sigma)
            sy = sx * rng.uniform(0.15, 1.0)
            return gaussian_kernel(sx, sy, rng.uniform(0, math.pi)), "soft lens blur"
        raise ValueError(kind)

    def _mild_kernel(self, rng: np.random.Generator) -> torch.Tensor:
        """A small second blur (lens softness / slight defocus / small shake) to combine with the main one."""
        choice = rng.integers(3)
        if choice == 0:
            return defocus_kernel(rng.uniform(0.8, 2.5))
        if choice == 1:
            return gaussian_kernel(rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5), 0.0)
        return camera_shake_kernel(rng, extent=rng.uniform(2, 8))[0]

    def _draw_uniform(self, kind: str, rng: np.random.Generator, h: int, w: int):
        """A global kind's (or "none"'s) kernel and its ground truth, without applying it:
        -> (kernel [K,K], motion [3,h8,w8], kernels [h64,w64,K,K], description, extra kinds)."""
        h8, w8 = math.ceil(h / MOTION_PATCH), math.ceil(w / MOTION_PATCH)
        h64, w64 = math.ceil(h / KERNEL_PATCH), math.ceil(w / KERNEL_PATCH)
        extra = []
        if kind == "none":
            kernel, text = delta_kernel(), "no blur"
        else:
            kernel, text = self._global_kernel(kind, rng)
            if rng.random() < self.config.p_combine:
                mild = self._mild_kernel(rng)
                # combine only when the result fits the 75 px kernel (no cut tail, so the centroid stays exact)
                if kernel_support_radius(kernel) + kernel_support_radius(mild) <= KERNEL_SIZE // 2 - 1:
                    kernel = _compose(kernel, mild)
                    extra.append("combined")
        vec = kernel_to_motion(kernel)
        if kind != "none":
            strength, direction = describe_motion(vec)
            if kind in ("defocus", "gaussian"):
                direction = "" if kind == "defocus" else direction
            text = " ".join(x for x in (strength, direction, text) if x)
        motion = vec.view(3, 1, 1).expand(3, h8, w8).contiguous()
        kernels = kernel.expand(h64, w64, KERNEL_SIZE, KERNEL_SIZE).contiguous()
        return kernel, motion, kernels, text, extra

    @staticmethod
    def _draw_affine(kind: str, rng: np.random.Generator, linear: torch.Tensor | None, h: int, w: int):
        """Rotation or zoom; `linear=None`: drawn with its ground truth, the sub-frames not rendered."""
        path_blur = rotation_blur if kind == "rotation" else zoom_blur
        blurred, motion, kernels, info = path_blur(linear, rng, size=(h, w))
        info["text"] = f"{_strength(info['max_disp'])} {'rotational' if kind == 'rotation' else 'zoom'} blur"
        return blurred, motion, kernels, info

    def _blur(self, kind: str, linear: torch.Tensor, rng: np.random.Generator):
        """-> (blurred linear, motion [3,h8,w8], kernels [h64,w64,K,K], description, extra kinds)."""
        _, h, w = linear.shape
        extra = []
        if kind in GLOBAL_KINDS or kind == "none":
            kernel, motion, kernels, text, extra = self._draw_uniform(kind, rng, h, w)
            return convolve(linear, kernel), motion, kernels, text, extra
        if kind in ("rotation", "zoom"):
            blurred, motion, kernels, info = self._draw_affine(kind, rng, linear, h, w)
            return blurred, motion, kernels, info["text"], extra
        if kind == "depth_defocus":
            blurred, motion, kernels, info = depth_defocus(linear, rng, max_radius=rng.uniform(2.0, 10.0))
            text = f"{_strength(math.sqrt(3) * info['max_radius'])} depth-dependent defocus"
            return blurred, motion, kernels, text, extra
        if kind == "object_motion":
            n_obj = int(rng.integers(1, self.config.max_objects + 1))
            objects = []
            for _ in range(n_obj):
                if rng.random() < 0.5:
                    objects.append(linear_kernel(_loguniform(rng, 5.0, 45.0), rng.uniform(0, math.pi)))
                else:
                    objects.append(camera_shake_kernel(rng, extent=_loguniform(rng, 5.0, 45.0))[0])
            static = rng.random() < 0.5
            if static:
                background = delta_kernel()
            elif rng.random() < 0.6:  # a mostly steady camera: mild shake
                background = camera_shake_kernel(rng, extent=_loguniform(rng, 2.0, 15.0))[0]
            else:  # the object is in focus, the background is not
                background = defocus_kernel(rng.uniform(1.0, 5.0))
            blurred, motion, kernels, info = moving_objects(linear, rng, background, objects)
            strength, direction = describe_motion(kernel_to_motion(objects[0]))
            bg = "over a static background" if static else "over a blurred background"
            name = "moving object" if n_obj == 1 else "moving objects"
            return blurred, motion, kernels, " ".join(x for x in (strength, direction, name, bg) if x), extra
        raise ValueError(f"unknown blur kind {kind!r}")

    # ---------------------------------------------------------------- camera
    def _draw_tone(self, rng: np.random.Generator) -> dict:
        c = self.config
        tone = {"srgb": rng.random() < c.p_srgb_curve, "gamma": rng.uniform(*c.gamma_range), "highlights": None}
        if rng.random() < c.p_highlights:
            tone["highlights"] = (rng.uniform(0.7, 0.95), rng.uniform(*c.highlight_gain))
        return tone

    def _draw_sensor(self, rng: np.random.Generator) -> dict:
        c = self.config
        exposure = rng.uniform(*c.low_light_range) if rng.random() < c.p_low_light else 1.0
        bayer = rng.random() < c.p_bayer
        noise = rng.random() < c.p_noise or exposure < 1.0
        shot, read = _loguniform(rng, *c.shot_range), _loguniform(rng, *c.read_range)
        gains = (rng.uniform(1.5, 2.6), 1.0, rng.uniform(1.2, 2.2)) if bayer else (1.0, 1.0, 1.0)
        return {"exposure": exposure, "bayer": bayer, "noise": noise, "shot": shot, "read": read, "gains": gains}

    @staticmethod
    def _tags(tone: dict, sensor: dict, jpeg_quality: int) -> list[str]:
        tags = ["saturated_highlights"] if tone["highlights"] else []
        tags += ["low_light"] if sensor["exposure"] < 1.0 else []
        tags += ["bayer"] if sensor["bayer"] else []
        tags += ["noise"] if sensor["noise"] else []
        return tags + (["jpeg"] if jpeg_quality else [])

    # ---------------------------------------------------------------- public
    def __call__(self, sharp, seed: int | None = None, kind: str | None = None, defer: bool = False) -> dict:
        """`defer=True`: for `DEFERRABLE_KINDS` draw everything but render nothing: the sample then has
        `"blurry"` = the sharp image, a `"recipe"` and a `"recipe_kernel"` (`glow.data.batched.pack_recipe`) that
        `glow.data.batched.render_batch` turns into the blurry image on any device, a whole batch at once.
        Depth defocus and moving objects are rendered here either way."""
        rng = self._stream if seed is None else np.random.default_rng(seed)
        sharp = _as_rgb(sharp)
        kind = kind or str(rng.choice(self._kinds, p=self._weights))
        if kind not in BLUR_KINDS:
            raise ValueError(f"unknown blur kind {kind!r}; choose from {BLUR_KINDS}")
        noise_seed = int(rng.integers(2**62))
        c = self.config
        tone = self._draw_tone(rng)
        deferred = defer and kind in DEFERRABLE_KINDS
        affine = None
        if deferred and kind in ("rotation", "zoom"):
            _, motion, kernels, affine = self._draw_affine(kind, rng, None, *sharp.shape[-2:])
            kernel, text, extra = None, affine["text"], []
        elif deferred:
            kernel, motion, kernels, text, extra = self._draw_uniform(kind, rng, *sharp.shape[-2:])
        else:
            linear = camera.srgb_to_linear(sharp) if tone["srgb"] else camera.gamma_to_linear(sharp, tone["gamma"])
            if tone["highlights"]:
                linear = camera.boost_highlights(linear, *tone["highlights"])
            blurred, motion, kernels, text, extra = self._blur(kind, linear, rng)
        sensor = self._draw_sensor(rng)
        jpeg_quality = int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1)) if rng.random() < c.p_jpeg else 0
        tags = self._tags(tone, sensor, jpeg_quality)
        if deferred:
            from .batched import pack_recipe

            blurry, recipe = sharp, pack_recipe(kernel, tone, sensor, jpeg_quality, noise_seed, affine)
        else:
            generator = torch.Generator().manual_seed(noise_seed)
            signal = blurred.clamp(0, 1)
            exposure, gains = sensor["exposure"], torch.tensor(sensor["gains"]).view(3, 1, 1)
            if sensor["bayer"]:
                raw = camera.mosaic_bayer(signal / gains) * exposure
                if sensor["noise"]:
                    raw = camera.add_poisson_gaussian_noise(raw, sensor["shot"], sensor["read"], generator)
                signal = camera.demosaic_bilinear(raw.clamp(0, 1)) / exposure * gains
            elif sensor["noise"]:
                signal = camera.add_poisson_gaussian_noise(signal * exposure, sensor["shot"], sensor["read"],
                                                           generator).clamp(0, 1) / exposure
            signal = signal.clamp(0, 1)
            blurry = camera.linear_to_srgb(signal) if tone["srgb"] else camera.linear_to_gamma(signal, tone["gamma"])
            if jpeg_quality:
                blurry = camera.jpeg_compress(blurry, jpeg_quality)
            recipe = None

        words = {"saturated_highlights": "saturated highlights", "low_light": "low light", "noise": "sensor noise",
                 "bayer": None, "jpeg": "JPEG"}
        description = ", ".join([text] + [words[t] for t in tags if words[t]])
        out = {
            "blurry": blurry.clamp(0, 1).contiguous(),
            "sharp": sharp.contiguous(),
            "motion": motion.float(),
            "motion_valid": torch.ones(1, *motion.shape[-2:]),
            "kernel": kernels.float(),
            "kernel_valid": torch.ones(kernels.shape[:2]),
            "kinds": [kind] + extra + tags,
            "text": description,
        }
        if recipe is not None:
            out.update(recipe)
        return out

    def apply_camera(self, sharp_linear_blurred: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Noise / Bayer / JPEG on an already blurred linear image (frame averaging uses this). Returns sRGB."""
        rng = self._stream if seed is None else np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        c = self.config
        signal = sharp_linear_blurred.clamp(0, 1)
        if rng.random() < c.p_noise:
            signal = camera.add_poisson_gaussian_noise(signal, _loguniform(rng, *c.shot_range),
                                                       _loguniform(rng, *c.read_range), generator).clamp(0, 1)
        out = camera.linear_to_srgb(signal)
        if rng.random() < c.p_jpeg:
            out = camera.jpeg_compress(out, int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1)))
        return out


def _as_rgb(sharp) -> torch.Tensor:
    from ..io import match_channels, to_tensor

    if not isinstance(sharp, torch.Tensor):
        sharp = to_tensor(sharp)
    if sharp.dim() == 4 and sharp.shape[0] == 1:
        sharp = sharp[0]
    if sharp.dim() == 2:
        sharp = sharp.unsqueeze(0)
    if sharp.dim() != 3:
        raise ValueError(f"BlurSimulator expects one image [C, H, W], got shape {tuple(sharp.shape)}")
    if sharp.dtype == torch.uint8:
        sharp = sharp.float() / 255
    return match_channels(sharp.float(), 3).clamp(0, 1)


def _compose(k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """PSF of two blurs in sequence (k1 * k2), kept 75x75, non-negative, summing to 1 and centred."""
    return normalize_kernel(_full_conv(k1, k2))


def _full_conv(k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    r = kernel_support_radius(k2)
    c = k2.shape[-1] // 2
    small = k2[c - r:c + r + 1, c - r:c + r + 1].flip(-1, -2)
    out = F.conv2d(k1.view(1, 1, *k1.shape), small.reshape(1, 1, 2 * r + 1, 2 * r + 1), padding=r)[0, 0]
    return out
