"""Torch datasets for BPP and joint fine-tuning. Every sample has the simulator's keys (DESIGN.md).

Determinism: a sample is a pure function of (seed, epoch, index): `dataset.set_epoch(e)` before building the
DataLoader iterator of epoch e (with `persistent_workers=False`, the default), and a resumed run sees the same data.
Unreadable files are skipped with one warning per file (the next file is used instead); images smaller than the
crop are reflect-padded (or upscaled when less than half the crop), never dropped.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from PIL import Image

from ..io import IMAGE_EXTENSIONS, ImageReadError, image_to_tensor, load_image, png_header, to_tensor
from . import camera
from .motion import KERNEL_PATCH, KERNEL_SIZE, MOTION_PATCH
from .batched import idle_recipe
from .simulator import BlurSimulator, SimulatorConfig

__all__ = [
    "list_images",
    "sample_seed",
    "SharpFolderDataset",
    "FrameFolderDataset",
    "MixedDataset",
    "collate",
]

_WARNED: set = set()
_MAX_RETRIES = 16


def _warn_once(path, err) -> None:
    key = str(path)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"Skipping unreadable image {key}: {err}", RuntimeWarning, stacklevel=3)


def list_images(roots, recursive: bool = True) -> list[Path]:
    """All image files under one or more roots (sorted, so the order is the same on every machine)."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    files = []
    for root in roots:
        root = Path(root)
        if root.is_file():
            files.append(root)
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"Image folder not found: {root}")
        pattern = root.rglob("*") if recursive else root.glob("*")
        files.extend(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(files)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed derived from (seed, epoch, index) with numpy's SeedSequence (independent streams)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(1, np.uint64)
    return int(state[0]) >> 2


def _load_rgb(path) -> torch.Tensor:
    return image_to_tensor(path).clamp(0, 1)


_HIGH_PRECISION_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class _Picture:
    """A decoded image that converts only the region a sample needs to float: converting a whole 1280x720 frame
    costs 5x its JPEG decode. 16-bit files are read through `image_to_tensor` (precision kept)."""

    def __init__(self, path):
        self.tensor = None
        self.pil = None
        try:
            with Image.open(path) as probe:
                high = (probe.mode in _HIGH_PRECISION_MODES or Path(path).suffix.lower() in (".tif", ".tiff")
                        or (probe.format == "PNG" and (png_header(path) or (8,))[0] == 16))
        except Exception:  # unreadable: let the real reader raise its ImageReadError
            high = False
        if high:
            self.tensor = _load_rgb(path)
        else:
            self.pil = load_image(path)
        self.shape = self.tensor.shape if self.tensor is not None else (3, self.pil.height, self.pil.width)

    def region(self, y: int, x: int, h: int, w: int) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor[:, y:y + h, x:x + w]
        return to_tensor(self.pil.crop((x, y, x + w, y + h)), channels=3)

    def full(self) -> torch.Tensor:
        return self.region(0, 0, self.shape[1], self.shape[2])


def _fit(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Make `image` at least `size` (h, w): reflect padding when it is at least half the size, else upscaling."""
    th, tw = size
    _, h, w = image.shape
    if h >= th and w >= tw:
        return image
    if h * 2 < th or w * 2 < tw:
        scale = max(th / h, tw / w)
        nh, nw = max(th, math.ceil(h * scale)), max(tw, math.ceil(w * scale))
        return F.interpolate(image.unsqueeze(0), size=(nh, nw), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    ph, pw = max(0, th - h), max(0, tw - w)
    return F.pad(image.unsqueeze(0), (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="reflect")[0]


def unsharp_mask(image: torch.Tensor, sigma: float, amount: float) -> torch.Tensor:
    """``image + amount * (image - gaussian(image, sigma))``, clipped to [0, 1]; ``image`` is ``[C,H,W]``."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=image.dtype)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = (g / g.sum()).view(1, 1, 1, -1).expand(image.shape[0], 1, 1, -1)
    x = F.pad(image.unsqueeze(0), (r, r, r, r), mode="reflect")
    smooth = F.conv2d(F.conv2d(x, g, groups=image.shape[0]), g.transpose(-1, -2), groups=image.shape[0])[0]
    return (image + amount * (image - smooth)).clamp(0, 1)


def _augment(tensors: Sequence[torch.Tensor], rng: np.random.Generator) -> list[torch.Tensor]:
    """The same random flip / 90-degree rotation for every tensor of a sample (the 8 dihedral transforms)."""
    k = int(rng.integers(4))
    flip = rng.random() < 0.5
    out = []
    for t in tensors:
        if flip:
            t = t.flip(-1)
        if k:
            t = torch.rot90(t, k, dims=(-2, -1))
        out.append(t.contiguous())
    return out


def _resolution(resolution) -> tuple[int, int] | None:
    if resolution is None:
        return None
    if isinstance(resolution, int):
        return (resolution, resolution)
    return (int(resolution[0]), int(resolution[1]))


def _empty_truth(h: int, w: int) -> dict:
    h8, w8 = math.ceil(h / MOTION_PATCH), math.ceil(w / MOTION_PATCH)
    h64, w64 = math.ceil(h / KERNEL_PATCH), math.ceil(w / KERNEL_PATCH)
    return {
        "motion": torch.zeros(3, h8, w8),
        "motion_valid": torch.zeros(1, h8, w8),
        "kernel": torch.zeros(h64, w64, KERNEL_SIZE, KERNEL_SIZE),
        "kernel_valid": torch.zeros(h64, w64),
    }


class _SeededDataset(Dataset):
    """Map-style dataset whose item `index` is `sample(index, sample_seed(seed, epoch, index))`."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.sample(index, sample_seed(self.seed, self.epoch, index))

    def sample(self, index: int, seed: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


def _make_simulator(simulator, seed: int) -> BlurSimulator:
    if isinstance(simulator, BlurSimulator):
        return simulator
    if simulator is None or isinstance(simulator, (dict, SimulatorConfig)):
        return BlurSimulator(simulator, seed=seed)
    raise TypeError(f"simulator must be a BlurSimulator, a SimulatorConfig, a dict or None, not {type(simulator)}")


class SharpFolderDataset(_SeededDataset):
    """Sharp images (recursive, one or many roots) blurred on the fly by a `BlurSimulator`.

    Each sample: a random crop of `resolution` (after a random downscale in `scale_range` when the image is large
    enough, so blur sizes meet content at several scales), a random flip / rot90, then the simulator.
    `length` defaults to the number of files; a larger value cycles through them.
    `sharpen_probability`: share of crops given an unsharp mask before the simulator (target and input alike), so the
    networks also see photos as crisp as a camera's sharpened JPEGs; most sharp training sets (RealSR, DRealSR, T91
    upscaled) are much softer than such photos, and a network that never saw crisp targets takes their fine detail
    for noise and smooths it (docs/training.md, "Crisp targets").
    `render_on_device=True`: global blur kinds are only drawn here and rendered later, a batch at once, on the
    training device (`glow.data.batched`); every sample then has `recipe` and `recipe_kernel`.
    """

    def __init__(self, roots, resolution=256, simulator=None, seed: int = 0, length: int | None = None,
                 augment: bool = True, scale_range: tuple | None = (0.5, 1.0), recursive: bool = True,
                 render_on_device: bool = False, sharpen_probability: float = 0.0):
        self.files = list_images(roots, recursive=recursive)
        if not self.files:
            raise ValueError(f"No images found in {roots}")
        self.size = _resolution(resolution)
        self.simulator = _make_simulator(simulator, seed)
        self.seed = int(seed)
        self.length = int(length) if length else len(self.files)
        self.augment = augment
        self.scale_range = scale_range
        self.render_on_device = bool(render_on_device)
        self.sharpen_probability = float(sharpen_probability)

    def __len__(self) -> int:
        return self.length

    def _crop(self, image, rng: np.random.Generator) -> torch.Tensor:
        """Random (scaled) crop of a tensor or a `_Picture` (only the crop is converted to float)."""
        if self.size is None:
            return image.full() if isinstance(image, _Picture) else image
        th, tw = self.size
        _, h, w = image.shape
        if h < th or w < tw:
            image = _fit(image.full() if isinstance(image, _Picture) else image, (th, tw))
            _, h, w = image.shape
        scale = 1.0
        if self.scale_range is not None:
            lo, hi = max(self.scale_range[0], th / h, tw / w), self.scale_range[1]
            if lo < hi:
                scale = float(rng.uniform(lo, hi))
        ch, cw = min(h, round(th / scale)), min(w, round(tw / scale))
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        crop = image.region(y, x, ch, cw) if isinstance(image, _Picture) else image[:, y:y + ch, x:x + cw]
        if (ch, cw) != (th, tw):
            # bicubic, not bilinear: bilinear's antialiasing filter softens the crop (measured: a fifth less power above
            # 0.3 cycles/px), and soft targets teach the networks to smooth crisp photos
            crop = F.interpolate(crop.unsqueeze(0), size=(th, tw), mode="bicubic", antialias=True,
                                 align_corners=False)[0].clamp(0, 1)
        return crop

    def _picture(self, index: int) -> _Picture:
        for attempt in range(_MAX_RETRIES):
            path = self.files[(index + attempt * 7919) % len(self.files)]
            try:
                return _Picture(path)
            except (ImageReadError, OSError) as err:
                _warn_once(path, err)
        raise RuntimeError(f"{_MAX_RETRIES} unreadable images in a row in {self.files[0].parent}")

    def sample_image(self, index: int) -> torch.Tensor:
        """The full RGB image behind item `index` (an unreadable file is skipped for a later one, warned once)."""
        return self._picture(index).full()

    def sample(self, index: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        crop = self._crop(self._picture(index), rng)
        if self.augment:
            (crop,) = _augment([crop], rng)
        if self.sharpen_probability > 0 and rng.random() < self.sharpen_probability:
            crop = unsharp_mask(crop, sigma=float(rng.uniform(0.6, 1.2)), amount=float(rng.uniform(0.3, 1.5)))
        out = self.simulator(crop, seed=int(rng.integers(1 << 62)), defer=self.render_on_device)
        if self.render_on_device and "recipe" not in out:  # a spatially varying kind, rendered here
            out.update(idle_recipe(KERNEL_SIZE))
        return out


# --------------------------------------------------------------------------- high-fps frames
class FrameFolderDataset(_SeededDataset):
    """Motion blur from averaging k consecutive frames of a high-fps video in linear light (GoPro style).

    `frames`: a slice (or (start, stop)) over the sorted frame files, e.g. `slice(0, -60)` for training;
    `exclude_last=60` does the same. The blurry image is the mean of k frames (odd k in `k_range`) converted to
    linear light with the sRGB curve; the sharp target is the middle frame. With `deterministic=True` (validation)
    the windows are fixed and non-overlapping, k is the middle odd value of `k_range` (or `k`), the crop is central
    and samples do not depend on the epoch. `camera=True` adds the simulator's noise/JPEG to the blurry image.
    Motion truth is unknown: `motion_valid` = `kernel_valid` = 0.
    """

    def __init__(self, root, k_range=(5, 13), frames=None, exclude_last: int = 0, resolution=256, seed: int = 0,
                 deterministic: bool = False, k: int | None = None, length: int | None = None,
                 augment: bool | None = None, camera: bool | dict | SimulatorConfig = False):
        self.root = Path(root)
        files = list_images(self.root, recursive=False)
        if isinstance(frames, tuple):
            frames = slice(*frames)
        if frames is not None:
            files = files[frames]
        if exclude_last:
            files = files[:-exclude_last]
        self.files = files
        self.k_range = (int(k_range[0]), int(k_range[1]))
        odd = [v for v in range(self.k_range[0], self.k_range[1] + 1) if v % 2 == 1]
        if not odd:
            raise ValueError(f"k_range {k_range} holds no odd frame count")
        self.k_choices = odd
        self.deterministic = deterministic
        self.k_fixed = int(k) if k else odd[len(odd) // 2]
        if len(files) < (self.k_fixed if deterministic else odd[0]):
            raise ValueError(f"{self.root}: {len(files)} frames selected, too few for k={self.k_range}")
        self.size = _resolution(resolution)
        self.seed = int(seed)
        self.augment = (not deterministic) if augment is None else augment
        if deterministic:
            self.length = (len(files) - self.k_fixed) // self.k_fixed + 1
        else:
            self.length = int(length) if length else len(files) - odd[0] + 1
        self.simulator = None
        if camera:
            self.simulator = BlurSimulator(camera if not isinstance(camera, bool) else None, seed=seed)

    @classmethod
    def train_split(cls, root, holdout: int = 60, **kw) -> "FrameFolderDataset":
        """All frames except the last `holdout` (the validation frames)."""
        return cls(root, exclude_last=holdout, **kw)

    @classmethod
    def val_split(cls, root, holdout: int = 60, **kw) -> "FrameFolderDataset":
        """Deterministic windows over the last `holdout` frames."""
        kw.setdefault("deterministic", True)
        return cls(root, frames=slice(-holdout, None), **kw)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if self.deterministic:  # validation: independent of the epoch
            if not 0 <= index < len(self):
                raise IndexError(index)
            return self.sample(index, sample_seed(self.seed, 0, index))
        return super().__getitem__(index)

    def sample(self, index: int, seed: int, _attempt: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        n = len(self.files)
        if self.deterministic:
            k = self.k_fixed
            start = (index * k) % max(1, n - k + 1)
        else:
            k = int(rng.choice([v for v in self.k_choices if v <= n]))
            start = int(rng.integers(0, n - k + 1))
        window = self.files[start:start + k]
        middle = window[k // 2]
        try:
            middle_pic = _Picture(middle)
        except (ImageReadError, OSError) as err:
            _warn_once(middle, err)
            if _attempt >= _MAX_RETRIES:
                raise RuntimeError(f"{_MAX_RETRIES} unreadable frames in a row in {self.root}") from err
            return self.sample(index + 1, int(rng.integers(1 << 62)), _attempt + 1)
        _, h, w = middle_pic.shape
        if self.size is not None:
            th, tw = self.size
            if self.deterministic:
                y, x = max(0, (h - th) // 2), max(0, (w - tw) // 2)
            else:
                y, x = int(rng.integers(0, max(1, h - th + 1))), int(rng.integers(0, max(1, w - tw + 1)))
            box = (y, x, min(th, h), min(tw, w))
            size = (th, tw)
        else:
            box, size = (0, 0, h, w), (h, w)
        target = _fit(middle_pic.region(*box), size)
        linear_sum, count = None, 0
        for path in window:
            try:
                pic = middle_pic if path == middle else _Picture(path)
            except (ImageReadError, OSError) as err:
                _warn_once(path, err)
                continue
            if pic.shape != middle_pic.shape:
                _warn_once(path, f"frame size {tuple(pic.shape)} differs from {tuple(middle_pic.shape)}")
                continue
            lin = camera.srgb_to_linear(_fit(pic.region(*box), size))
            linear_sum = lin if linear_sum is None else linear_sum + lin
            count += 1
        blurred_linear = linear_sum / count
        if self.simulator is not None:
            blurry = self.simulator.apply_camera(blurred_linear, seed=int(rng.integers(1 << 62)))
        else:
            blurry = camera.linear_to_srgb(blurred_linear)
        if self.augment:
            blurry, target = _augment([blurry, target], rng)
        out = {"blurry": blurry.clamp(0, 1).contiguous(), "sharp": target.contiguous()}
        out.update(_empty_truth(*target.shape[-2:]))
        out.update({"kinds": ["frame_averaging"], "text": f"motion blur from averaging {count} video frames"})
        return out


# --------------------------------------------------------------------------- mixing
class MixedDataset(_SeededDataset):
    """Joint fine-tuning mix: item i comes from source s with probability ratios[s] (normalised).

    A map-style dataset of fixed `length` (one epoch): the source and the index inside it are drawn from
    (seed, epoch, i), and the source sample is generated with its own derived seed, so a DataLoader with
    `shuffle=False` -- and accelerate's per-process sharding of it -- gives a reproducible, resumable order.
    """

    def __init__(self, sources: dict, ratios: dict | None = None, length: int = 1000, seed: int = 0):
        if not sources:
            raise ValueError("MixedDataset needs at least one source")
        self.sources = dict(sources)
        self.names = list(self.sources)
        ratios = ratios or {n: 1.0 for n in self.names}
        missing = set(ratios) - set(self.names)
        if missing:
            raise ValueError(f"ratios name unknown sources {sorted(missing)}; sources are {self.names}")
        p = np.array([float(ratios.get(n, 0.0)) for n in self.names])
        if (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"ratios must be non-negative with a positive sum, got {ratios}")
        self.probs = p / p.sum()
        self.length = int(length)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for ds in self.sources.values():
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def source_of(self, index: int) -> tuple[str, int, int]:
        """(source name, index inside it, seed for it) of item `index` in the current epoch."""
        rng = np.random.default_rng(sample_seed(self.seed, self.epoch, index))
        s = int(rng.choice(len(self.names), p=self.probs))
        ds = self.sources[self.names[s]]
        return self.names[s], int(rng.integers(len(ds))), int(rng.integers(1 << 62))

    def sample(self, index: int, seed: int) -> dict:
        name, inner, inner_seed = self.source_of(index)
        ds = self.sources[name]
        if hasattr(ds, "sample") and not getattr(ds, "deterministic", False):
            return ds.sample(inner, inner_seed)
        return ds[inner]


def collate(samples: Iterable[dict]) -> dict:
    """Batch samples: tensors stacked, `kinds` -> list of lists, `text` -> list of str. When some samples carry a
    device-rendering recipe, the others (real pairs, frames) get an idle one, and `recipe_pending` (CPU, bool) says
    which rows `glow.data.batched.render_pending` must render."""
    samples = list(samples)
    if not samples:
        raise ValueError("collate got an empty batch")
    if any("recipe" in s for s in samples):
        samples = [s if "recipe" in s else {**s, **idle_recipe(KERNEL_SIZE)} for s in samples]
        samples = [{k: s[k] for k in samples[0]} for s in samples]  # one key order
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"collate: '{key}' has different shapes in one batch: {sorted(shapes)} "
                                 "(use the same resolution for every source)")
            out[key] = torch.stack(values)
        else:
            out[key] = values
    if "recipe" in out:
        out["recipe_pending"] = out["recipe"][:, 0] > 0
    return out
