"""Atomic checkpoints, EMA weights in safetensors, weights from other runs, stopping cleanly on a signal, the
JSONL log."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import torch

logger = logging.getLogger("glow.training")

CHECKPOINT_PREFIX = "checkpoint-"
EMA_WEIGHTS_NAME = "ema_model.safetensors"
EMA_STATE_NAME = "ema_state.json"
TRAINER_STATE_NAME = "trainer_state.json"
LOG_NAME = "train_log.jsonl"
COMPONENTS = ("motion_estimator", "prereconstruction", "transformer")


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
