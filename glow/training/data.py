"""Training data plumbing: the deterministic resumable sampler, the DataLoader, mixing sources, frame clips, and
the cache of prompt embeddings."""
from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableSampler(Sampler):
    """Infinite stream of dataset indices that depends only on (seed, epoch, position), sharded over processes.

    `start_sample` skips the samples already consumed (by this process), so a resumed run sees exactly the data an
    uninterrupted run would have seen. We shard ourselves instead of letting accelerate wrap the loader, because the
    stream is infinite (no epochs to `set_epoch`) and the offset is then a plain integer.
    """

    def __init__(self, num_items: int, seed: int, num_replicas: int = 1, rank: int = 0, start_sample: int = 0):
        if num_items <= 0:
            raise ValueError("The training dataset is empty.")
        self.num_items, self.seed, self.num_replicas, self.rank = num_items, seed, num_replicas, rank
        self.start_sample = start_sample

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.num_items, generator=g)
        # every epoch has the same length on every process: pad by wrapping around
        per_rank = math.ceil(self.num_items / self.num_replicas)
        order = torch.cat([order, order[: per_rank * self.num_replicas - self.num_items]])
        return order[self.rank :: self.num_replicas]

    def __iter__(self):
        per_rank = math.ceil(self.num_items / self.num_replicas)
        epoch, offset = divmod(self.start_sample, per_rank)
        while True:
            order = self._epoch_order(epoch)
            for i in order[offset:].tolist():
                yield epoch * self.num_items + i  # EpochIndexedDataset splits this into (epoch, index)
            epoch, offset = epoch + 1, 0


class EpochIndexedDataset(Dataset):
    """Wraps a glow.data dataset (samples a pure function of (seed, epoch, index)) so that an index carries its
    epoch: item `epoch * len + i` is item i of that epoch. Works in persistent DataLoader workers, where a
    `set_epoch` call in the main process would never reach the workers' copies."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, virtual_index: int) -> dict:
        epoch, index = divmod(int(virtual_index), len(self.dataset))
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def seed_worker(worker_id: int) -> None:
    # A Ctrl-C / SIGTERM to the process group must not kill the loader workers: the main process still needs them
    # to finish its step before it checkpoints; it shuts them down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The datasets derive their randomness from the index; this only pins numpy/random for third-party code.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    import random

    random.seed(s)


def make_train_dataloader(dataset: Dataset, args, accelerator, start_step: int, collate_fn) -> DataLoader:
    samples_per_step = args.train_batch_size * args.gradient_accumulation_steps
    sampler = ResumableSampler(len(dataset), args.seed, accelerator.num_processes, accelerator.process_index,
                               start_sample=start_step * samples_per_step)
    return DataLoader(EpochIndexedDataset(dataset), batch_size=args.train_batch_size, sampler=sampler,
                      collate_fn=collate_fn,
                      num_workers=args.dataloader_num_workers, worker_init_fn=seed_worker, drop_last=True,
                      persistent_workers=args.dataloader_num_workers > 0,
                      pin_memory=accelerator.device.type == "cuda",  # then the copy to the GPU is asynchronous
                      prefetch_factor=4 if args.dataloader_num_workers > 0 else None)


def find_frame_clips(roots: list[str]) -> list[Path]:
    """A frames folder is one clip (it holds the frames) or a parent of clip folders."""
    from glow.data.datasets import list_images

    clips = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"frames folder not found: {root}")
        if list_images(root, recursive=False):
            clips.append(root)
        else:
            clips += sorted(d for d in root.iterdir() if d.is_dir() and list_images(d, recursive=False))
    if roots and not clips:
        raise ValueError(f"no frame clips (folders of consecutive frames) found in {roots}")
    return clips


def build_mixed_dataset(args, groups: dict[str, dict[str, Dataset]], group_ratios: dict[str, float]):
    """One MixedDataset over every source; a group's share is split equally between its folders. One epoch =
    the total number of source items. Returns (dataset, human-readable summary lines for the model card)."""
    from glow.data import MixedDataset

    sources, ratios, summary = {}, {}, []
    groups = {g: srcs for g, srcs in groups.items() if srcs}
    total = sum(group_ratios[g] for g in groups)
    if not groups or total <= 0:
        raise ValueError("no training data: give --train_data_dir (and/or --frames_data_dir / --sharp_data_dir)")
    for group, srcs in groups.items():
        share = group_ratios[group] / total
        for name, ds in srcs.items():
            sources[name], ratios[name] = ds, share / len(srcs)
            line = f"{name}: {len(ds)} items, sampling share {ratios[name]:.2f}"
            overrides = simulator_overrides(ds)
            summary.append(line + (f", simulator overrides `{json.dumps(overrides)}`" if overrides else ""))
    length = sum(len(ds) for ds in sources.values())
    return MixedDataset(sources, ratios, length=length, seed=args.seed), summary


def simulator_overrides(dataset) -> dict:
    """The fields of the dataset's own simulator config that differ from the default BPP mix (read from the dataset,
    not from the flags, so the model card says what the data really was)."""
    from glow.data import SimulatorConfig

    simulator = getattr(dataset, "simulator", None)
    if simulator is None:
        return {}
    default = SimulatorConfig().to_dict()
    # compared as JSON: a list from --simulator_config equals the default's tuple
    return {k: v for k, v in simulator.config.to_dict().items() if json.dumps(v) != json.dumps(default[k])}


def frame_sources(args, camera: bool = True) -> dict[str, Dataset]:
    from glow.data import FrameFolderDataset

    return {f"frames/{clip.name}": FrameFolderDataset.train_split(
        clip, holdout=args.val_frames_holdout, resolution=args.resolution, seed=args.seed, camera=camera)
        for clip in find_frame_clips(args.frames_data_dir)}


# ----------------------------------------------------------------------------------------------------------------------
# Text embeddings (frozen MiniLM), cached per distinct prompt
# ----------------------------------------------------------------------------------------------------------------------
class TextEmbeddingCache:
    """Encodes prompts with the frozen text encoder once and keeps the result (simulator prompts repeat a lot)."""

    def __init__(self, encode_fn: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]] | None,
                 max_entries: int = 50_000, entries: dict | None = None):
        """`encode_fn=None`: only the given `entries` (precomputed, e.g. `glow.data.pack.load_text_embeddings`);
        any other prompt is replaced by the empty prompt, which must be among them, and counted in `fallbacks`."""
        self.encode_fn, self.max_entries = encode_fn, max_entries
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = dict(entries or {})
        if encode_fn is None and "" not in self.cache:
            raise ValueError("precomputed text embeddings must include the empty prompt")
        self.hits = self.misses = self.fallbacks = 0

    def __call__(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encode_fn is None:
            known = [p if p in self.cache else "" for p in prompts]
            self.fallbacks += sum(p != k for p, k in zip(prompts, known))
            prompts = known
        missing = sorted({p for p in prompts if p not in self.cache})
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        if missing:
            with torch.no_grad():
                emb, mask = self.encode_fn(missing)
            if len(self.cache) + len(missing) > self.max_entries:
                self.cache.clear()
            for i, prompt in enumerate(missing):
                n = int(mask[i].sum().item())
                self.cache[prompt] = (emb[i, :n].float().cpu(), mask[i, :n].cpu())
        items = [self.cache[p] for p in prompts]
        length = max(e.shape[0] for e, _ in items)
        embeds = torch.zeros(len(prompts), length, items[0][0].shape[-1])
        masks = torch.zeros(len(prompts), length, dtype=torch.long)
        for i, (e, m) in enumerate(items):
            embeds[i, : e.shape[0]], masks[i, : m.shape[0]] = e, m
        return embeds.to(device), masks.to(device)
