"""Real blurry/sharp pairs in the common benchmark layouts (GoPro, RealBlur, RSBlur, BSD, HIDE, REDS or plain
blur/ and sharp/ folders): layout detection, pairing by list file or by name, and the dataset."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..io import ImageReadError
# the sample machinery shared by every dataset here (seeded sampling, reading, fitting, augmenting)
from .datasets import (
    _MAX_RETRIES, _Picture, _SeededDataset, _augment, _empty_truth, _fit, _resolution, _warn_once, list_images,
)

__all__ = ["PairedFolderDataset", "detect_layout", "PAIRED_LAYOUTS"]


PAIRED_LAYOUTS = ("folders", "gopro", "gopro_gamma", "realblur", "rsblur", "bsd", "hide", "reds")
_BLUR_NAMES = ("blur", "blurry", "input", "inputs", "lq")
_SHARP_NAMES = ("sharp", "gt", "target", "targets", "gt_sharp", "hq")


def _find_list_files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob("*.txt") if re.search(pattern, p.name, re.IGNORECASE))


def detect_layout(root) -> str:
    """Guess the paired layout of `root` (see PAIRED_LAYOUTS); raises ValueError naming what was expected."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Paired data folder not found: {root}")
    subdirs = {p.name.lower() for p in root.iterdir() if p.is_dir()}
    if any(b in subdirs for b in _BLUR_NAMES) and any(s in subdirs for s in _SHARP_NAMES):
        return "folders"
    if _find_list_files(root, r"realblur.*list"):
        return "realblur"
    if _find_list_files(root, r"rsblur"):
        return "rsblur"
    if next(root.glob("*/Blur/RGB"), None) is not None:
        return "bsd"
    if (root / "GT").is_dir() and ((root / "test").is_dir() or (root / "train").is_dir()):
        return "hide"
    if any((p.parent / p.name.replace("_blur", "_sharp")).is_dir() for p in root.glob("*_blur")):
        return "reds"
    if next(root.glob("*/blur"), None) is not None and next(root.glob("*/sharp"), None) is not None:
        return "gopro"
    if next(root.glob("*/blur_gamma"), None) is not None:
        return "gopro_gamma"
    if next(root.glob("**/real_blur/real_blur.png"), None) is not None or next(root.glob("**/blur.png"), None):
        return "rsblur"
    raise ValueError(
        f"Cannot detect the paired layout of {root}: expected blur/+sharp/ folders, <seq>/blur + <seq>/sharp (GoPro), "
        "<seq>/Blur/RGB + <seq>/Sharp/RGB (BSD), GT/ + test/<subset>/ (HIDE), <split>_blur/<seq> + "
        "<split>_sharp/<seq> (REDS), a RealBlur_*_list.txt or an RSBlur_*.txt list, or "
        "<scene>/real_blur/real_blur.png + gt/gt_sharp.png (RSBlur)")


def _match_by_name(blur_dir: Path, sharp_dir: Path) -> list[tuple[Path, Path]]:
    sharp = {p.stem: p for p in list_images(sharp_dir, recursive=False)}
    pairs = []
    for b in list_images(blur_dir, recursive=False):
        if b.stem in sharp:
            pairs.append((b, sharp[b.stem]))
    return pairs


def _read_list(root: Path, list_file: Path) -> list[tuple[Path, Path]]:
    """RealBlur / RSBlur list files: lines "gt_path blur_path [...]" relative to the dataset root."""
    pairs = []
    for line in list_file.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            pairs.append((root / parts[1], root / parts[0]))
    return pairs


def _paired_files(root: Path, layout: str, split: str, list_file) -> list[tuple[Path, Path]]:
    if list_file is not None:
        return _read_list(root, Path(list_file) if Path(list_file).is_absolute() else root / list_file)
    if layout == "folders":
        names = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
        blur_dir = next(names[n] for n in _BLUR_NAMES if n in names)
        sharp_dir = next(names[n] for n in _SHARP_NAMES if n in names)
        return _match_by_name(blur_dir, sharp_dir)
    if layout in ("gopro", "gopro_gamma"):
        blur_name = "blur" if layout == "gopro" else "blur_gamma"
        pairs = []
        for seq in sorted(p for p in root.iterdir() if (p / blur_name).is_dir() and (p / "sharp").is_dir()):
            pairs += _match_by_name(seq / blur_name, seq / "sharp")
        return pairs
    if layout == "bsd":
        pairs = []
        for seq in sorted(p for p in root.iterdir() if (p / "Blur" / "RGB").is_dir()):
            pairs += _match_by_name(seq / "Blur" / "RGB", seq / "Sharp" / "RGB")
        return pairs
    if layout == "hide":  # blurry images under <split>/ (test: test-close-ups/, test-long-shot/), sharp in GT/
        split_dir = root / split if (root / split).is_dir() else root / "test"
        sharp = {p.stem: p for p in list_images(root / "GT", recursive=False)}
        return [(b, sharp[b.stem]) for b in list_images(split_dir) if b.stem in sharp]
    if layout == "reds":  # <split>_blur/<seq>/*.png + <split>_sharp/<seq>/*.png; REDS' test has no GT: "test" -> val
        prefixes = [split] + (["val"] if split == "test" else [])
        prefixes += sorted(p.name[: -len("_blur")] for p in root.glob("*_blur"))
        prefix = next(x for x in prefixes if (root / f"{x}_blur").is_dir() and (root / f"{x}_sharp").is_dir())
        pairs = []
        for seq in sorted(p for p in (root / f"{prefix}_blur").iterdir() if p.is_dir()):
            pairs += _match_by_name(seq, root / f"{prefix}_sharp" / seq.name)
        return pairs
    if layout == "realblur":
        lists = _find_list_files(root, rf"realblur.*{split}.*list") or _find_list_files(root, r"realblur.*list")
        return [pair for lf in lists for pair in _read_list(root, lf)]
    if layout == "rsblur":
        lists = _find_list_files(root, rf"rsblur.*{split}") or _find_list_files(root, r"rsblur")
        if lists:
            return [pair for lf in lists for pair in _read_list(root, lf)]
        pairs = [(b, b.parent.parent / "gt" / "gt_sharp.png") for b in sorted(root.glob("**/real_blur/real_blur.png"))]
        pairs += [(b, b.parent / "gt.png") for b in sorted(root.glob("**/blur.png"))]
        return [(b, s) for b, s in pairs if s.is_file()]
    raise ValueError(f"Unknown paired layout {layout!r}; choose from {PAIRED_LAYOUTS} or 'auto'")


class PairedFolderDataset(_SeededDataset):
    """Real (blurry, sharp) pairs with the same random crop (+ flip/rot90) applied to both.

    `layout="auto"` detects one of PAIRED_LAYOUTS; `split` picks RealBlur/RSBlur list files ("train"/"test");
    `list_file` forces one list. `resolution=None` returns full images (evaluation). Pairs have no motion or kernel
    truth: both are zero with `*_valid` 0, `kinds=["real_pair", <layout>]`, `text=""`.
    """

    def __init__(self, root, layout: str = "auto", resolution=256, seed: int = 0, augment: bool = True,
                 split: str = "train", list_file=None, length: int | None = None):
        self.root = Path(root)
        self.layout = detect_layout(self.root) if layout == "auto" else layout
        self.pairs = _paired_files(self.root, self.layout, split, list_file)
        if not self.pairs:
            raise ValueError(f"No (blur, sharp) pairs found in {self.root} with layout {self.layout!r}")
        self.size = _resolution(resolution)
        self.seed = int(seed)
        self.augment = augment
        self.length = int(length) if length else len(self.pairs)

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        for attempt in range(_MAX_RETRIES):
            blur_path, sharp_path = self.pairs[(index + attempt * 7919) % len(self.pairs)]
            try:
                blurry, sharp = _Picture(blur_path), _Picture(sharp_path)
            except (ImageReadError, OSError) as err:
                _warn_once(f"{blur_path} / {sharp_path}", err)
                continue
            if blurry.shape != sharp.shape:
                _warn_once(f"{blur_path} / {sharp_path}", f"sizes differ {tuple(blurry.shape)} vs {tuple(sharp.shape)}")
                continue
            break
        else:
            raise RuntimeError(f"{_MAX_RETRIES} unreadable pairs in a row in {self.root}")
        _, h, w = sharp.shape
        if self.size is None:
            blurry, sharp = blurry.full(), sharp.full()
        else:
            th, tw = self.size
            if h < th or w < tw:
                blurry, sharp = _fit(blurry.full(), self.size), _fit(sharp.full(), self.size)
                _, h, w = blurry.shape
                y, x = int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))
                blurry, sharp = blurry[:, y:y + th, x:x + tw], sharp[:, y:y + th, x:x + tw]
            else:
                y, x = int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))
                blurry, sharp = blurry.region(y, x, th, tw), sharp.region(y, x, th, tw)
        if self.augment:
            blurry, sharp = _augment([blurry, sharp], rng)
        out = {"blurry": blurry.contiguous(), "sharp": sharp.contiguous()}
        out.update(_empty_truth(*sharp.shape[-2:]))
        out.update({"kinds": ["real_pair", self.layout], "text": ""})
        return out
