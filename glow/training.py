"""Training code shared by `train/bpp.py` (Blur Pattern Pretraining) and `train/finetune.py` (joint fine-tuning).

The two scripts differ only in where the models and the data come from; everything else lives here:
command-line flags, the loss (`GLOWTrainingModule`), the text-embedding cache, the deterministic resumable sampler,
EMA, atomic checkpoints, SIGTERM handling, validation (PSNR/SSIM + image grid), the JSONL log, saving the pipeline
folder and the Hub push with its model card. The training loop itself is `run_training`.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

logger = logging.getLogger("glow.training")

CHECKPOINT_PREFIX = "checkpoint-"
EMA_WEIGHTS_NAME = "ema_model.safetensors"
EMA_STATE_NAME = "ema_state.json"
TRAINER_STATE_NAME = "trainer_state.json"
LOG_NAME = "train_log.jsonl"
COMPONENTS = ("motion_estimator", "prereconstruction", "transformer")


# ----------------------------------------------------------------------------------------------------------------------
# Command line (diffusers-examples flag names)
# ----------------------------------------------------------------------------------------------------------------------
def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def build_arg_parser(description: str, *, finetune: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    # model
    a("--preset", choices=["tiny", "small", "large"], default="small", help="Model size preset (glow.presets).")
    if not finetune:
        a("--model_config", type=json.loads, default=None,
          help='JSON overrides of the preset\'s component configs, e.g. \'{"prereconstruction": {"use_wiener": false}}\' '
               "(ablations, size sweeps).")
        a("--init_from", default=None,
          help="Start from the weights of a checkpoint folder (its EMA weights) or a pipeline folder wherever names and "
               "shapes match; the rest keeps its fresh initialisation. Grows a trained model: extra NAFBlocks start "
               "as the identity (zero beta/gamma), so the grown model begins exactly where the small one was. "
               "Ignored when resuming from a checkpoint of this run.")
    if finetune:
        import glow

        a("--pretrained_model_name_or_path", default=glow.DEFAULT_MODEL_PATH,
          help="Pipeline folder or Hub id to start from (the preset is then taken from the weights).")
        a("--freeze", default="", help="Comma-separated components to freeze: " + ",".join(COMPONENTS))
    # data
    a("--train_data_dir", action="append", default=[],
      help="Training folder, repeatable. BPP: sharp-image folders. Fine-tuning: paired folders (GoPro / RealBlur / "
           "RSBlur / BSD layouts or blur/+sharp/). Folders are searched recursively.")
    a("--frames_data_dir", action="append", default=[],
      help="Folder(s) of consecutive video frames (sub-folders per clip); blur by frame averaging. Repeatable.")
    if finetune:
        a("--sharp_data_dir", action="append", default=[],
          help="Sharp-image folder(s) blurred by the simulator and mixed in so the blur priors are kept.")
        a("--mix_ratios", default=None,
          help="Sampling weights 'paired,frames,sim' (e.g. 0.5,0.2,0.3). Overrides --sim_ratio.")
        a("--sim_ratio", type=float, default=0.3, help="Share of simulated samples when --mix_ratios is not given.")
    else:
        a("--frames_ratio", type=float, default=0.2, help="Share of frame-averaged samples when frames are given.")
    a("--simulator_config", type=_json_object, default=None,
      help='JSON overrides of glow.data.SimulatorConfig for the simulated samples, e.g. '
           '\'{"kind_weights": {"linear_motion": 1.0}, "linear_length": [3, 15], "p_noise": 0}\' '
           "(a narrower blur distribution, a different camera). Default: the full BPP mix.")
    a("--resolution", type=int, default=256, help="Square training crop size (multiple of 64).")
    a("--render_on_device", action=argparse.BooleanOptionalAction, default=None,
      help="Simulated global blur (shake, linear, defocus, gaussian; most of the mix) is drawn in the DataLoader "
           "workers and rendered a batch at once on the training device (glow.data.batched). Default: on with a GPU.")
    a("--val_frames_holdout", type=int, default=60,
      help="Last N frames of each clip are held out for validation (never used for training).")
    a("--dataloader_num_workers", type=int, default=0)
    # optimisation
    a("--train_batch_size", type=int, default=4, help="Per-device batch size.")
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--learning_rate", type=float, default=1e-4 if finetune else 4e-4)
    a("--scale_lr", action="store_true", help="Scale the learning rate by processes x batch x accumulation.")
    a("--lr_scheduler", default="cosine",
      help='diffusers.optimization.get_scheduler name: "linear", "cosine", "constant", "constant_with_warmup", ...')
    a("--lr_warmup_steps", type=int, default=100 if not finetune else 50)
    a("--adam_beta1", type=float, default=0.9)
    a("--adam_beta2", type=float, default=0.99)
    a("--adam_weight_decay", type=float, default=1e-4)
    a("--adam_epsilon", type=float, default=1e-8)
    a("--max_grad_norm", type=float, default=1.0)
    a("--max_train_steps", type=int, default=20000)
    a("--mixed_precision", choices=["no", "fp16", "bf16"], default="no", help="fp32 ('no') is fastest on CPU.")
    a("--max_train_minutes", type=float, default=None,
      help="Wall-clock budget: training stops early enough that the last checkpoint, validation and pipeline export "
           "end within it (a lent GPU for a fixed time). --max_train_steps still applies.")
    a("--seed", type=int, default=0)
    # losses
    a("--diffusion_start_step", type=int, default=0 if finetune else 1000,
      help="The flow-matching loss switches on at this step (warm-up of the regression parts before it).")
    a("--freq_loss_weight", type=float, default=0.05, help="Weight of the FFT (frequency) term of the pixel loss.")
    a("--motion_loss_weight", type=float, default=0.1)
    a("--kernel_loss_weight", type=float, default=0.1)
    a("--diffusion_loss_weight", type=float, default=1.0)
    a("--text_drop_prob", type=float, default=0.1, help="Probability of an empty prompt (classifier-free guidance).")
    a("--text_embeddings", default=None,
      help="Precomputed prompt embeddings (python -m glow.data.pack writes them) used instead of the text encoder, "
           "for machines without it; a prompt not in the file trains as the empty prompt (logged as "
           "text_fallback_share).")
    a("--weighting_scheme", default="few_step", choices=["few_step", "logit_normal", "uniform", "mode"],
      help="Flow-matching sigma sampling. few_step: exactly the sigmas the pipeline visits with 1..--max_inference_steps "
           "Euler steps (a step count, then one of its sigmas: sigma=1, the 1-step default, gets ~half the mass); "
           "the others: diffusers.training_utils.compute_density_for_timestep_sampling.")
    a("--max_inference_steps", type=int, default=4, help="few_step: the largest step count trained for.")
    a("--logit_mean", type=float, default=0.0)
    a("--logit_std", type=float, default=1.0)
    a("--mode_scale", type=float, default=1.29)
    # EMA
    a("--use_ema", action=argparse.BooleanOptionalAction, default=True, help="EMA of the weights for the saved model.")
    a("--ema_decay", type=float, default=0.999)
    # checkpoints, logging, validation
    a("--output_dir", required=True)
    a("--checkpointing_steps", type=int, default=500)
    a("--checkpoints_total_limit", type=int, default=2)
    a("--resume_from_checkpoint", default=None, help='A checkpoint folder or "latest".')
    a("--save_pipeline_at_checkpoint", action="store_true",
      help="Also write a complete pipeline folder (EMA weights) at every checkpoint (<output_dir>/pipeline).")
    a("--logging_steps", type=int, default=10, help="Write a JSONL log line every N steps.")
    a("--report_to", default="none",
      help='Accelerate trackers: "none", "tensorboard", "wandb", "all", ... (a JSONL log is always written).')
    a("--tracker_project_name", default="glowdeblur")
    a("--validation_data_dir", default=None,
      help="Sharp images (blurred by the simulator with a fixed seed) or a paired folder (blur/ + sharp/).")
    a("--validation_steps", type=int, default=500)
    a("--num_validation_images", type=int, default=4)
    a("--validation_resolution", type=int, default=256)
    a("--validation_seed", type=int, default=1234)
    a("--validate_at_start", action="store_true",
      help="Also validate before the first step (a run from trained weights then logs where it started).")
    # Hub
    a("--push_to_hub", action="store_true")
    a("--hub_model_id", default=None)
    a("--hub_token", default=None)
    a("--hub_private", action="store_true")
    a("--hub_dry_run", action="store_true",
      help="Write the exact folder and model card that --push_to_hub would upload (README.md inside) and stop there.")
    return p


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    env_rank = int(os.environ.get("LOCAL_RANK", -1))
    if args.resolution % 64:
        parser.error(f"--resolution must be a multiple of 64 (got {args.resolution})")
    if args.validation_resolution % 64:
        parser.error(f"--validation_resolution must be a multiple of 64 (got {args.validation_resolution})")
    if args.simulator_config is not None:
        from glow.data import BlurSimulator

        try:  # fail now with the reason, not in the first data-loader call
            BlurSimulator(args.simulator_config)
        except (TypeError, ValueError) as err:
            parser.error(f"--simulator_config: {err}")
    if args.push_to_hub and args.hub_token is None:
        args.hub_token = os.environ.get("HF_TOKEN")
    if args.render_on_device is None:
        args.render_on_device = torch.cuda.is_available()
    args.local_rank = env_rank
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Deterministic, resumable data order
# ----------------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------------
def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((x - y) ** 2 + eps * eps).mean()


def frequency_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # L1 between the 2-D spectra (as in MIMO-UNet / MPRNet): penalises lost high frequencies that a pixel loss averages
    fx, fy = torch.fft.rfft2(x.float(), norm="ortho"), torch.fft.rfft2(y.float(), norm="ortho")
    return (torch.view_as_real(fx) - torch.view_as_real(fy)).abs().mean()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` > 0 (mask broadcast over leading channel dims); 0 with a graph if none valid."""
    mask = mask.expand_as(values).to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints: accelerator.save_state into "<name>.tmp", renamed when complete
# ----------------------------------------------------------------------------------------------------------------------
def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (`checkpoint-<step>`, no `.tmp`), oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in output_dir.iterdir()
             if d.is_dir() and (m := re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", d.name))]
    return [d for _, d in sorted(found)]


def resolve_checkpoint(output_dir: str, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if not path.is_dir():
        path = Path(output_dir) / resume
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume!r}: no such checkpoint folder")
    return path


def remove_partial_checkpoints(output_dir: str | Path) -> None:
    for d in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*.tmp"):
        logger.warning("removing incomplete checkpoint %s (a run was killed while saving)", d)
        shutil.rmtree(d, ignore_errors=True)


def save_checkpoint(accelerator, output_dir: str, step: int, total_limit: int | None, extra_state: dict) -> Path:
    """Writes `checkpoint-<step>` atomically: save_state into `checkpoint-<step>.tmp`, then one rename."""
    final = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # models -> safetensors; optimizer/scheduler/RNG -> torch pickles
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE_NAME).write_text(json.dumps({"global_step": step, **extra_state}, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # e.g. saved again at the same step after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit is not None and total_limit > 0:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


class EMAWeights:
    """diffusers' EMAModel over the trainable module, checkpointed as safetensors.

    accelerate's `register_for_checkpointing` would pickle the shadow weights; the save/load hooks below write them as
    `ema_model.safetensors` (+ a small JSON for the step counter) inside the checkpoint instead.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        from diffusers.training_utils import EMAModel

        self.names = [n for n, _ in module.named_parameters()]
        # foreach: one fused update over all tensors instead of a few kernels per tensor (~300 tensors)
        self.ema = EMAModel(module.parameters(), decay=decay, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                            foreach=True)

    def step(self, module: torch.nn.Module) -> None:
        self.ema.step(module.parameters())

    def copy_to(self, module: torch.nn.Module) -> None:
        self.ema.copy_to(module.parameters())

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        save_file({n: p.detach().contiguous().cpu() for n, p in zip(self.names, self.ema.shadow_params)},
                  str(Path(folder) / EMA_WEIGHTS_NAME))
        state = {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
        (Path(folder) / EMA_STATE_NAME).write_text(json.dumps(state, indent=2))

    def load(self, folder: str | Path) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(Path(folder) / EMA_WEIGHTS_NAME))
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise ValueError(f"EMA weights in {folder} miss {len(missing)} parameters, e.g. {missing[:3]}")
        for shadow, name in zip(self.ema.shadow_params, self.names):
            shadow.data.copy_(tensors[name].to(shadow.device, shadow.dtype))
        state = json.loads((Path(folder) / EMA_STATE_NAME).read_text())
        self.ema.optimization_step = state["optimization_step"]


# ----------------------------------------------------------------------------------------------------------------------
# Stopping cleanly on SIGTERM / SIGINT
# ----------------------------------------------------------------------------------------------------------------------
class GracefulStop:
    """Turns SIGTERM/SIGINT into a flag: the loop finishes its step, writes a checkpoint and exits with status 0.

    A second signal while saving is ignored (the checkpoint is written to a .tmp name anyway, so a hard kill can never
    leave a partial `checkpoint-<step>`).
    """

    def __init__(self):
        self.requested = False
        self.signum = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        if not self.requested:
            print(f"[glow.training] received {signal.Signals(signum).name}: finishing the step, then checkpointing",
                  file=sys.stderr, flush=True)
        self.requested, self.signum = True, signum


# ----------------------------------------------------------------------------------------------------------------------
# Log file (always written, commit-able) + accelerate trackers
# ----------------------------------------------------------------------------------------------------------------------
class JSONLLog:
    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.exists():
            # drop lines of the interrupted run after the step we resume from, so the log reads as one run
            keep = [ln for ln in path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            path.write_text("".join(ln + "\n" for ln in keep))
        elif resume_step is None and path.exists():
            path.unlink()

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# The trainable module: the three components + the loss (one module, so DDP syncs all gradients in one wrapper)
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class LossConfig:
    freq_loss_weight: float = 0.05
    motion_loss_weight: float = 0.1
    kernel_loss_weight: float = 0.1
    diffusion_loss_weight: float = 1.0
    residual_scale: float = 1.0
    num_train_timesteps: int = 1000
    prediction_type: str = "sample"

    @classmethod
    def from_args(cls, args, residual_scale: float, num_train_timesteps: int,
                  prediction_type: str = "sample") -> "LossConfig":
        return cls(args.freq_loss_weight, args.motion_loss_weight, args.kernel_loss_weight,
                   args.diffusion_loss_weight, residual_scale, num_train_timesteps, prediction_type)


class GLOWTrainingModule(torch.nn.Module):
    """motion estimator -> pre-reconstruction -> transformer on the residual, with all the training losses.

    Gradient routing (why): the diffusion target `sharp - prerecon` uses a *detached* pre-reconstruction — otherwise
    the flow-matching loss could shrink its own target by pulling the pre-reconstruction towards whatever makes the
    residual easy to predict instead of towards the sharp image. The conditioning features are NOT detached (they
    exist to serve the backbone, the "domain alignment"), the motion field given to the backbone IS detached (it is
    supervised by the simulator's truth and must keep its physical meaning for the app's motion view).
    """

    def __init__(self, motion_estimator, prereconstruction, transformer, loss_config: LossConfig, conventions):
        super().__init__()
        self.motion_estimator = motion_estimator
        self.prereconstruction = prereconstruction
        self.transformer = transformer
        self.loss_config = loss_config
        # the pipeline class: its residual_to_latents / transformer_input are the inference conventions
        self.conventions = conventions

    def forward(self, batch: dict, text_embeds=None, text_mask=None, noise=None, sigmas=None,
                use_diffusion: bool = False):
        cfg = self.loss_config
        blurry, sharp = batch["blurry"], batch["sharp"]
        est = self.motion_estimator(blurry)
        pre = self.prereconstruction(blurry, est.kernels, est.motion)
        losses = {
            "pixel": charbonnier(pre.image, sharp),
            "freq": frequency_loss(pre.image, sharp),
            "motion": self.motion_estimator.motion_loss(est.motion, batch["motion"], batch["motion_valid"]),
            "kernel": self.motion_estimator.kernel_loss(est.kernels, batch["kernel"], batch["kernel_valid"]),
        }
        total = (losses["pixel"] + cfg.freq_loss_weight * losses["freq"] + cfg.motion_loss_weight * losses["motion"]
                 + cfg.kernel_loss_weight * losses["kernel"])
        if use_diffusion:
            x0 = self.conventions.residual_to_latents(sharp - pre.image.detach(), cfg.residual_scale)
            s = sigmas.view(-1, 1, 1, 1).to(x0.dtype)
            x_t = (1.0 - s) * x0 + s * noise
            hidden = self.conventions.transformer_input(x_t, pre.features, est.motion.detach())
            prediction = self.transformer(hidden, encoder_hidden_states=text_embeds, encoder_attention_mask=text_mask,
                                          timestep=sigmas * cfg.num_train_timesteps, return_dict=False)[0]
            target = x0 if cfg.prediction_type == "sample" else noise - x0  # see velocity_from_prediction
            losses["diffusion"] = F.mse_loss(prediction.float(), target.float())
            total = total + cfg.diffusion_loss_weight * losses["diffusion"]
        losses["total"] = total
        return total, {k: v.detach() for k, v in losses.items()}


def step_generator(seed: int, step: int, process_index: int, micro_step: int) -> torch.Generator:
    """Noise, sigmas and prompt dropout depend only on (seed, step, process, micro-step): resumes are exact."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 131 + process_index) * 17 + micro_step)


def sample_diffusion_inputs(args, x0_shape, gen: torch.Generator, device=None):
    """(noise on `device`, sigmas on the CPU). On an accelerator the noise is drawn there, from a generator seeded by
    `gen`'s seed: 12 M normal numbers per batch of 64 cost the main process ~50 ms on a CPU core, and a step waits."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    if args.weighting_scheme == "few_step":
        # The pipeline runs 1-4 steps on sigmas linspace(1, 0, n + 1)[:-1]; logit-normal sampling almost never draws
        # sigma = 1, the point the default single step starts from, so train on the visited sigmas themselves.
        n = torch.randint(1, args.max_inference_steps + 1, (x0_shape[0],), generator=gen)
        k = (torch.rand(x0_shape[0], generator=gen) * n).floor()
        sigmas = 1.0 - k / n
    else:
        sigmas = compute_density_for_timestep_sampling(args.weighting_scheme, x0_shape[0], logit_mean=args.logit_mean,
                                                       logit_std=args.logit_std, mode_scale=args.mode_scale,
                                                       generator=gen)
    device = torch.device(device or "cpu")
    if device.type == "cpu":
        noise = torch.randn(x0_shape, generator=gen)
    else:
        noise = torch.randn(x0_shape, generator=torch.Generator(device).manual_seed(gen.initial_seed()), device=device)
    return noise, sigmas.clamp(1e-3, 1.0)


def set_trainable(module: GLOWTrainingModule, freeze: str) -> list[str]:
    frozen = [n.strip() for n in (freeze or "").split(",") if n.strip()]
    unknown = [n for n in frozen if n not in COMPONENTS]
    if unknown:
        raise ValueError(f"--freeze: unknown component(s) {unknown}; choose from {', '.join(COMPONENTS)}")
    for name in COMPONENTS:
        getattr(module, name).requires_grad_(name not in frozen)
    return frozen


# ----------------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------------
def _center_crop(t: torch.Tensor, size: int) -> torch.Tensor:
    _, h, w = t.shape
    if h < size or w < size:  # small images: reflect-pad up to the size (validation needs a fixed shape)
        t = F.pad(t[None], (0, max(0, size - w), 0, max(0, size - h)), mode="replicate")[0]
        _, h, w = t.shape
    top, left = (h - size) // 2, (w - size) // 2
    return t[:, top : top + size, left : left + size]


def load_validation_set(folder: str, count: int, resolution: int, seed: int) -> list[dict]:
    """Fixed validation samples (centre crops of `resolution`): a paired folder in any layout the data engine knows
    (blur/ + sharp/, GoPro, RealBlur, RSBlur, BSD), or sharp images blurred by the simulator with a fixed seed
    (sample i uses seed + i), so the set never changes between steps or runs."""
    from glow.data import BlurSimulator, PairedFolderDataset, detect_layout
    from glow.data.datasets import list_images
    from glow.io import image_to_tensor

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
            blurry = _center_crop(image_to_tensor(blur_path), resolution)
            sharp = _center_crop(image_to_tensor(sharp_path), resolution)
            samples.append({"blurry": blurry, "sharp": sharp, "name": Path(sharp_path).stem, "text": ""})
        return samples
    files = list_images(folder, recursive=True)
    if not files:
        raise FileNotFoundError(f"--validation_data_dir {folder}: no images found")
    simulator = BlurSimulator(seed=seed)
    for i, path in enumerate(files[:count]):
        sample = simulator(_center_crop(image_to_tensor(path), resolution), seed=seed + i)
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
def run_validation(pipeline, module: GLOWTrainingModule, samples: list[dict], device, seed: int) -> tuple[dict, object]:
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
        restored = pipeline_restore(pipeline, s["blurry"], generator)
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


def pipeline_restore(pipeline, blurry: torch.Tensor, generator) -> torch.Tensor:
    """Runs the pipeline at its default settings (no prompt, as a user would) on one [3,H,W] image, without the
    blind deconvolution: it has no weights, so training cannot change it, and the networks are still trained on
    blurry inputs (curves stay comparable with the runs before it existed)."""
    out = pipeline(image=blurry, generator=generator, output_type="pt", deconvolve=False)
    return out.images[0][:3].float().cpu().clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------------------
# Pipeline folder, model card, Hub
# ----------------------------------------------------------------------------------------------------------------------
def save_pipeline_folder(pipeline, folder: str | Path) -> Path:
    """`save_pretrained` into `<folder>.tmp`, then rename: a half-written pipeline folder never replaces a good one."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline.save_pretrained(str(tmp), safe_serialization=True)
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def write_model_card(folder: str | Path, args, *, stage: str, global_step: int, metrics: dict | None,
                     data_summary: list[str], base_model: str | None = None) -> Path:
    """README.md with YAML metadata (huggingface_hub.ModelCard / ModelCardData) for the pipeline folder."""
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(
        license="apache-2.0", library_name="diffusers", pipeline_tag="image-to-image",
        tags=["image-deblurring", "image-restoration", "diffusers", "glowdeblur", stage.lower()],
        base_model=base_model if base_model and not Path(base_model).exists() else None,
    )
    repo = args.hub_model_id or "<user>/<repo>"
    metric_rows = "\n".join(
        f"| {k.split('/', 1)[-1]} | {v:.4f} |" for k, v in sorted((metrics or {}).items()) if isinstance(v, float)
    ) or "| (no validation run) | |"
    data_lines = "\n".join(f"  - {line}" for line in data_summary) or "  - (none recorded)"
    effective_batch = args.train_batch_size * args.gradient_accumulation_steps * int(os.environ.get("WORLD_SIZE", 1))
    prerecon_config = Path(folder) / "prereconstruction" / "config.json"
    use_wiener = not prerecon_config.is_file() or json.loads(prerecon_config.read_text()).get("use_wiener", True)
    first_stage = ("U-Net with motion-guided Wiener\ndeconvolution" if use_wiener else
                   "U-Net (this model has its Wiener\ndeconvolution branch switched off)")
    content = f"""---
{card_data.to_yaml()}
---

# GLOWDeblur ({args.preset} preset, {stage})

GLOWDeblur removes blur (camera shake, object motion, defocus) from real photos. A motion estimator predicts a
patch-wise motion field and blur kernels, a NAFNet-style pre-reconstruction {first_stage} produces a first estimate, and a small `SanaTransformer2DModel` refines the residual in 1-4
flow-matching steps, guided by the motion field and a text prompt (MiniLM embeddings).

## Training

- Stage: **{stage}**{f" starting from `{base_model}`" if base_model else ""}
- Steps: {global_step} (effective batch {effective_batch}, resolution {args.resolution}, learning rate
  {args.learning_rate}, scheduler `{args.lr_scheduler}`, EMA {"on" if args.use_ema else "off"})
- Data:
{data_lines}

## Validation (measured by the training script at step {global_step})

Validation set: `{args.validation_data_dir}` (first {args.num_validation_images} images, {args.validation_resolution}
px centre crops; real pairs when the folder is paired, else sharp images blurred by the simulator with the fixed seed
{args.validation_seed}). PSNR in dB / SSIM on uint8 RGB (GoPro convention) for the blurry input, the pipeline at its
default settings and the pre-reconstruction alone.

| metric | value |
|---|---|
{metric_rows}

## How to load

```python
from diffusers import DiffusionPipeline
from PIL import Image

pipe = DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)
result = pipe(image=Image.open("blurry.jpg")).images[0]
```

## Intended use

Restoring photos blurred by camera shake, moving subjects or mild defocus; a research/demo model that runs on a
laptop CPU.

## Limitations

- Small model trained on a CPU budget: it is far below large GPU-trained deblurring models in PSNR.
- The diffusion refinement can invent plausible texture; use `fidelity=1` (pre-reconstruction only) when exactness
  matters (documents, evidence).
- Trained on natural photos; heavy noise, extreme blur (> ~60 px), text-heavy images and non-photographic content are
  out of distribution.
"""
    path = Path(folder) / "README.md"
    ModelCard(content).save(str(path))
    return path


def push_folder_to_hub(folder: str | Path, args) -> str:
    """create_repo + upload_folder; raises RuntimeError with a clear message when offline (the folder stays)."""
    from huggingface_hub import create_repo, upload_folder

    if not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/glowdeblur-small)")
    try:
        repo_id = create_repo(args.hub_model_id, token=args.hub_token, private=args.hub_private, exist_ok=True).repo_id
        upload_folder(repo_id=repo_id, folder_path=str(folder), token=args.hub_token,
                      commit_message="Upload GLOWDeblur pipeline", ignore_patterns=["*.tmp", "*.tmp/*"])
    except Exception as err:  # offline, bad token, ...: say so, the local folder is complete
        raise RuntimeError(
            f"Pushing to the Hub failed ({type(err).__name__}: {err}). The complete pipeline folder and model card "
            f"are at {folder}; upload it later with `hf upload {args.hub_model_id} {folder}`."
        ) from err
    return f"https://huggingface.co/{repo_id}"


# ----------------------------------------------------------------------------------------------------------------------
# Text encoder
# ----------------------------------------------------------------------------------------------------------------------
def make_prompt_encoder(pipeline, device):
    """prompts -> (embeddings [B,T,384], attention mask [B,T]) exactly as the pipeline encodes them at inference."""
    return lambda prompts: pipeline.encode_prompt(list(prompts), device=device)


def load_matching_weights(pipeline, source: str | Path) -> dict:
    """Copy into the pipeline's components every tensor of `source` whose name and shape match.

    `source`: a training checkpoint folder (`ema_model.safetensors`, else `model.safetensors`; keys
    `<component>.<name>`) or a pipeline folder (`<component>/diffusion_pytorch_model.safetensors`). Safetensors only.
    Returns {"loaded": n, "new": [names kept at their initialisation], "skipped": [names in source not used]}.
    """
    from safetensors.torch import load_file

    source = Path(source)
    tensors = {}
    for name in (EMA_WEIGHTS_NAME, "model.safetensors"):
        if (source / name).is_file():
            tensors = load_file(str(source / name))
            break
    else:
        for component in COMPONENTS:
            file = source / component / "diffusion_pytorch_model.safetensors"
            if file.is_file():
                tensors.update({f"{component}.{k}": v for k, v in load_file(str(file)).items()})
    if not tensors:
        raise ValueError(f"--init_from {source}: no safetensors weights found (expected a checkpoint folder with "
                         f"{EMA_WEIGHTS_NAME} or a pipeline folder)")
    loaded, new, used = 0, [], set()
    for component in COMPONENTS:
        state = getattr(pipeline, component).state_dict()
        update = {}
        for name, value in state.items():
            key = f"{component}.{name}"
            if key in tensors and tensors[key].shape == value.shape:
                update[name] = tensors[key]
                used.add(key)
            else:
                new.append(key)
        getattr(pipeline, component).load_state_dict(update, strict=False)
        loaded += len(update)
    if not loaded:
        raise ValueError(f"--init_from {source}: no tensor matches this model by name and shape")
    return {"loaded": loaded, "new": new, "skipped": sorted(set(tensors) - used)}


def set_base_learning_rate(lr_scheduler, lr: float) -> None:
    """Make `lr` the base learning rate of a (resumed) schedule, keeping its position (warm-up, decay).

    `accelerator.load_state` restores the scheduler's own base_lrs, so without this a run resumed with a new
    --learning_rate would silently keep the old one."""
    sched = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's AcceleratedScheduler wraps it
    if not hasattr(sched, "lr_lambdas") or all(abs(b - lr) <= 1e-12 * lr for b in sched.base_lrs):
        return
    logger.info("learning rate changed on resume: %s -> %s", sched.base_lrs, lr)
    sched.base_lrs = [lr] * len(sched.base_lrs)
    for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * fn(sched.last_epoch)
    sched._last_lr = [group["lr"] for group in sched.optimizer.param_groups]


# ----------------------------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------------------------
def run_training(args, *, stage: str, build_pipeline: Callable[[], object], train_dataset: Dataset,
                 collate_fn: Callable, data_summary: list[str], base_model: str | None = None) -> int:
    """Trains, checkpoints, validates and saves. Returns the process exit status (0 = done or stopped cleanly)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    output_dir = Path(args.output_dir)
    report_to = None if args.report_to in (None, "", "none") else args.report_to
    accelerator = Accelerator(
        # On a machine without GPUs, `accelerate launch --multi_gpu --num_processes N` (torchrun) then runs N CPU
        # processes over gloo; accelerate's own `--cpu --num_processes N` only starts several processes under mpirun.
        cpu=not torch.accelerator.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with=report_to, project_config=ProjectConfiguration(project_dir=str(output_dir),
                                                                logging_dir=str(output_dir / "logs")),
        # the transformer is idle before --diffusion_start_step, frozen parts never get gradients
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
                        if accelerator.is_main_process else logging.WARNING)
    stopper = GracefulStop()
    set_seed(args.seed)  # identical initial weights on every process
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(output_dir)
        (output_dir / "args.json").write_text(json.dumps(vars(args), indent=2, default=str))
    accelerator.wait_for_everyone()

    pipeline = build_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    scheduler_config = pipeline.scheduler.config
    module = GLOWTrainingModule(
        pipeline.motion_estimator, pipeline.prereconstruction, pipeline.transformer,
        LossConfig.from_args(args, residual_scale=float(pipeline.config.residual_scale),
                             num_train_timesteps=int(scheduler_config.num_train_timesteps),
                             prediction_type=pipeline.config.get("prediction_type", "flow")), type(pipeline))
    frozen = set_trainable(module, getattr(args, "freeze", ""))
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("every component is frozen: nothing to train")
    n_params = sum(p.numel() for p in params)
    lr = args.learning_rate
    if args.scale_lr:
        lr *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    # the prepared scheduler steps once per process per optimizer step (diffusers-examples convention)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    ema = EMAWeights(module, args.ema_decay) if args.use_ema else None

    def save_hook(models, weights, folder):
        if accelerator.is_main_process and ema is not None:
            ema.save(folder)

    def load_hook(models, folder):
        if ema is not None:
            ema.load(folder)

    if accelerator.state.deepspeed_plugin is not None:  # our loader is not prepared, so tell DeepSpeed the batch
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.train_batch_size
    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    module, optimizer, lr_scheduler = accelerator.prepare(module, optimizer, lr_scheduler)
    raw_module: GLOWTrainingModule = accelerator.unwrap_model(module)
    if ema is not None:  # the shadow weights were made before prepare() moved the module to the accelerator
        ema.ema.to(accelerator.device)

    global_step = 0
    resume_dir = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if args.resume_from_checkpoint and resume_dir is None:
        logger.info("--resume_from_checkpoint %s: no checkpoint yet, starting from scratch", args.resume_from_checkpoint)
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        if ema is not None:
            ema.ema.to(accelerator.device)
        global_step = json.loads((resume_dir / TRAINER_STATE_NAME).read_text())["global_step"]
        logger.info("resumed from %s at step %d", resume_dir, global_step)
        set_base_learning_rate(lr_scheduler, lr)

    log = JSONLLog(output_dir / "logs" / LOG_NAME, resume_step=global_step if resume_dir else None) \
        if accelerator.is_main_process else None
    if report_to:
        accelerator.init_trackers(args.tracker_project_name, config={k: v for k, v in vars(args).items()
                                                                     if isinstance(v, (int, float, str, bool))})
    if args.text_embeddings:
        from glow.data.pack import load_text_embeddings

        entries = load_text_embeddings(args.text_embeddings)
        text_cache = TextEmbeddingCache(None, entries=entries)
        empty, empty_mask = entries[""]
        pipeline._prompt_cache[""] = (empty[None], empty_mask[None])  # validation runs the pipeline unprompted
    else:
        text_cache = TextEmbeddingCache(make_prompt_encoder(pipeline, accelerator.device))
    val_samples = (load_validation_set(args.validation_data_dir, args.num_validation_images,
                                       args.validation_resolution, args.validation_seed)
                   if args.validation_data_dir and accelerator.is_main_process else [])
    dataloader = make_train_dataloader(train_dataset, args, accelerator, global_step, collate_fn)
    data_iter = iter(dataloader)

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("stage %s | %d trainable parameters (frozen: %s) | %d training samples | total batch %d | steps %d",
                stage, n_params, frozen or "none", len(train_dataset), total_batch, args.max_train_steps)
    progress = tqdm(total=args.max_train_steps, initial=global_step, desc=stage,
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    last_metrics: dict = {}
    last_validated_step = -1
    # --max_train_minutes: stop when what is left of the budget would no longer cover one more validation and
    # checkpoint (their last durations, doubled) plus the pipeline export
    budget_s = args.max_train_minutes * 60.0 if args.max_train_minutes else None
    run_start = time.perf_counter()
    tail_s = {"validation": 0.0, "checkpoint": 0.0}
    def new_window():  # what one log line covers
        return {"start": time.perf_counter(), "cpu": time.process_time(), "data": 0.0, "samples": 0, "losses": {},
                "count": 0}

    window = new_window()
    last_saved_step = global_step if resume_dir else -1
    stop = False

    def checkpoint_now():
        nonlocal last_saved_step
        t0 = time.perf_counter()
        save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit,
                        {"stage": stage, "metrics": last_metrics})
        last_saved_step = global_step
        if args.save_pipeline_at_checkpoint:
            export_pipeline()
        tail_s["checkpoint"] = time.perf_counter() - t0

    def with_ema_weights(fn):
        if ema is None:
            return fn()
        ema.ema.store(raw_module.parameters())
        ema.copy_to(raw_module)
        try:
            return fn()
        finally:
            ema.ema.restore(raw_module.parameters())

    def export_pipeline():
        if accelerator.is_main_process:
            pipeline.register_to_config(training_status=(
                f"{stage}: {global_step} steps{' (EMA weights)' if ema is not None else ''}, preset {args.preset}"
                + (f", from {base_model}" if base_model else "")))
            folder = with_ema_weights(lambda: save_pipeline_folder(pipeline, output_dir / "pipeline"))
            write_model_card(folder, args, stage=stage, global_step=global_step, metrics=last_metrics,
                             data_summary=data_summary, base_model=base_model)
        accelerator.wait_for_everyone()

    def validate():
        nonlocal last_metrics, last_validated_step
        last_validated_step = global_step
        t_start = time.perf_counter()
        if accelerator.is_main_process and val_samples:
            t0 = time.perf_counter()
            metrics, grid = with_ema_weights(lambda: run_validation(pipeline, raw_module, val_samples,
                                                                     accelerator.device, args.validation_seed))
            metrics["val/seconds"] = time.perf_counter() - t0
            last_metrics = metrics
            grid_dir = output_dir / "validation"
            grid_dir.mkdir(exist_ok=True)
            grid.save(grid_dir / f"step-{global_step:07d}.png")
            log.write({"step": global_step, **metrics})
            for tracker in accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_image("validation", np.asarray(grid), global_step, dataformats="HWC")
                elif tracker.name == "wandb":
                    import wandb

                    tracker.log({"validation": [wandb.Image(grid)]}, step=global_step)
            if report_to:
                accelerator.log(metrics, step=global_step)
            logger.info("validation at step %d: %s", global_step,
                        ", ".join(f"{k[4:]}={v:.3f}" for k, v in metrics.items()))
        accelerator.wait_for_everyone()
        tail_s["validation"] = time.perf_counter() - t_start

    if args.validate_at_start and args.validation_data_dir and global_step == 0:
        validate()
    out_of_time = False
    while global_step < args.max_train_steps and not stop and not out_of_time:
        use_diffusion = global_step >= args.diffusion_start_step and raw_module.transformer is not None
        for micro_step in range(args.gradient_accumulation_steps):
            t_wait = time.perf_counter()
            batch = next(data_iter)
            window["data"] += time.perf_counter() - t_wait
            pending = batch.pop("recipe_pending", None)  # stays on the CPU: no synchronisation to read it
            batch = {k: (v.to(accelerator.device, non_blocking=True) if torch.is_tensor(v) else v)
                     for k, v in batch.items()}
            gen = step_generator(args.seed, global_step, accelerator.process_index, micro_step)
            if pending is not None:  # --render_on_device: blur, camera and JPEG for the whole batch here
                from glow.data.batched import render_pending

                batch["recipe_pending"] = pending
                render_gen = torch.Generator(accelerator.device).manual_seed(gen.initial_seed() ^ 0x5EED)
                with torch.no_grad():
                    render_pending(batch, render_gen)
            bsz = batch["blurry"].shape[0]
            kwargs = {"use_diffusion": use_diffusion}
            if use_diffusion:
                h, w = batch["blurry"].shape[-2:]
                noise, sigmas = sample_diffusion_inputs(args, (bsz, 192, h // 8, w // 8), gen, accelerator.device)
                drop = torch.rand(bsz, generator=gen) < args.text_drop_prob
                prompts = ["" if d else t for d, t in zip(drop.tolist(), batch["text"])]
                embeds, mask = text_cache(prompts, accelerator.device)
                kwargs.update(text_embeds=embeds, text_mask=mask, noise=noise.to(accelerator.device),
                              sigmas=sigmas.to(accelerator.device))
            with accelerator.accumulate(module):
                loss, parts = module(batch, **kwargs)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in parts.items():  # summed where they are: reading them every step would wait for the GPU
                window["losses"][k] = window["losses"].get(k, 0.0) + v.float() / args.gradient_accumulation_steps
            window["samples"] += bsz * accelerator.num_processes
        window["count"] += 1
        global_step += 1
        if ema is not None:
            ema.step(raw_module)
        progress.update(1)

        if global_step % args.logging_steps == 0 or global_step == args.max_train_steps:
            elapsed = time.perf_counter() - window["start"]
            losses = {k: v / window["count"] for k, v in window["losses"].items()}
            # mean over processes (a collective: every process gets here at the same step)
            keys = sorted(losses)
            # the budget check rides on this collective, so every process stops after the same step
            over = budget_s is not None and (time.perf_counter() - run_start + 2 * sum(tail_s.values())
                                             + 0.05 * budget_s >= budget_s)
            values = torch.stack([torch.as_tensor(losses[k], device=accelerator.device) for k in keys]
                                 + [torch.tensor(float(over), device=accelerator.device)])
            mean = accelerator.reduce(values, reduction="mean").tolist()
            out_of_time = mean.pop() > 0
            losses = {f"loss/{k}": float(v) for k, v in zip(keys, mean)}
            record = {"step": global_step, **losses, "lr": lr_scheduler.get_last_lr()[0],
                      "samples_per_s": window["samples"] / max(elapsed, 1e-9),
                      "steps_per_s": window["count"] / max(elapsed, 1e-9),
                      "data_wait_share": window["data"] / max(elapsed, 1e-9),
                      # CPU seconds of this process (all threads, validation included) since the last line: the
                      # training curves are plotted against CPU-hours, which wall time on a shared machine is not
                      "cpu_seconds": time.process_time() - window["cpu"], "threads": torch.get_num_threads(),
                      "diffusion": use_diffusion, "time": time.time()}
            if text_cache.encode_fn is None:
                record["text_fallback_share"] = text_cache.fallbacks / max(1, text_cache.hits + text_cache.misses)
            if accelerator.is_main_process:
                log.write(record)
                progress.set_postfix(loss=f"{losses['loss/total']:.4f}", sps=f"{record['samples_per_s']:.2f}")
            if report_to:
                accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=global_step)
            window = new_window()

        # a SIGTERM/SIGINT on any process stops every process after this same step
        if stopper.requested:
            accelerator.set_trigger()
        stop = accelerator.check_trigger() if accelerator.num_processes > 1 else stopper.requested
        if args.validation_data_dir and not stop and not out_of_time and (global_step == args.max_train_steps or (
                args.validation_steps > 0 and global_step % args.validation_steps == 0)):
            validate()
        if stop or global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
            checkpoint_now()
    progress.close()
    if out_of_time:
        logger.info("--max_train_minutes %s: stopping at step %d after %.1f min to checkpoint, validate and export",
                    args.max_train_minutes, global_step, (time.perf_counter() - run_start) / 60)

    if stop:
        logger.info("stopped by %s at step %d; checkpoint written, resume with --resume_from_checkpoint latest",
                    signal.Signals(stopper.signum).name if stopper.signum else "a signal on another process",
                    global_step)
        accelerator.end_training()
        return 0

    if last_saved_step != global_step:
        checkpoint_now()
    if args.validation_data_dir and last_validated_step != global_step:
        validate()
    export_pipeline()
    status = 0
    if accelerator.is_main_process:
        folder = output_dir / "pipeline"
        logger.info("pipeline folder (EMA weights) written to %s", folder)
        if args.hub_dry_run:
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            plan = {"repo_id": args.hub_model_id, "folder": str(folder), "files": files}
            (output_dir / "hub_dry_run.json").write_text(json.dumps(plan, indent=2))
            logger.info("--hub_dry_run: would upload %s (%d files, model card README.md) to %s", folder, len(files),
                        args.hub_model_id or "(no --hub_model_id given)")
        elif args.push_to_hub:
            try:
                url = push_folder_to_hub(folder, args)
                logger.info("pushed to %s", url)
            except (RuntimeError, ValueError) as err:
                print(f"ERROR: {err}", file=sys.stderr, flush=True)
                status = 1
    accelerator.end_training()
    return status
