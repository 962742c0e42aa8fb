"""The training loop shared by train/bpp.py and train/finetune.py: `run_training` builds a `Trainer` and runs it.

The trainer's state is explicit (attributes, not closures): the accelerator and the prepared module, optimizer and
schedule; the step counter; the log window; what was last validated and saved; the time budget.
"""
from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .checkpointing import (LOG_NAME, TRAINER_STATE_NAME, EMAWeights, GracefulStop, JSONLLog,
                            remove_partial_checkpoints, resolve_checkpoint, save_checkpoint, set_base_learning_rate)
from .data import TextEmbeddingCache, make_train_dataloader
from .hub import provenance, push_folder_to_hub, save_pipeline_folder, write_model_card
from .losses import GLOWTrainingModule, LossConfig, sample_diffusion_inputs, set_trainable, step_generator
from .validation import load_validation_set, run_validation

logger = logging.getLogger("glow.training")


def make_prompt_encoder(pipeline, device):
    """prompts -> (embeddings [B,T,384], attention mask [B,T]) exactly as the pipeline encodes them at inference."""
    return lambda prompts: pipeline.encode_prompt(list(prompts), device=device)


def save_ema_hook(models, weights, folder, *, ema: EMAWeights | None, accelerator) -> None:
    """accelerate save-state hook: the EMA weights go into the checkpoint as safetensors."""
    if accelerator.is_main_process and ema is not None:
        ema.save(folder)


def load_ema_hook(models, folder, *, ema: EMAWeights | None) -> None:
    """accelerate load-state hook: the EMA weights come back from the checkpoint."""
    if ema is not None:
        ema.load(folder)


def make_text_cache(args, pipeline, device) -> TextEmbeddingCache:
    """The text encoder through a cache, or (--text_embeddings) only the precomputed embeddings."""
    if not args.text_embeddings:
        return TextEmbeddingCache(make_prompt_encoder(pipeline, device))
    from glow.data.pack import load_text_embeddings

    entries = load_text_embeddings(args.text_embeddings)
    empty, empty_mask = entries[""]
    pipeline._prompt_cache[""] = (empty[None], empty_mask[None])  # validation runs the pipeline unprompted
    return TextEmbeddingCache(None, entries=entries)


def make_accelerator(args):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    output_dir = Path(args.output_dir)
    return Accelerator(
        # On a machine without GPUs, `accelerate launch --multi_gpu --num_processes N` (torchrun) then runs N CPU
        # processes over gloo; accelerate's own `--cpu --num_processes N` starts several only under mpirun.
        cpu=not torch.accelerator.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        dynamo_backend=getattr(args, "dynamo_backend", None),  # None: the env / `accelerate config` decides
        log_with=None if args.report_to in (None, "", "none") else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # the transformer is idle before --diffusion_start_step, frozen parts never get gradients
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


class Trainer:
    """One training run. `train()` returns the process exit status (0 = done or stopped cleanly)."""

    def __init__(self, args, accelerator, pipeline, *, stage: str, train_dataset: Dataset, collate_fn: Callable,
                 data_summary: list[str], base_model: str | None = None, stopper: GracefulStop | None = None):
        self.args, self.stage, self.base_model, self.data_summary = args, stage, base_model, data_summary
        self.output_dir = Path(args.output_dir)
        self.report_to = None if args.report_to in (None, "", "none") else args.report_to
        self.accelerator = accelerator
        self.stopper = stopper or GracefulStop()
        self.pipeline = pipeline
        self.train_dataset, self.collate_fn = train_dataset, collate_fn
        self.global_step = 0
        self.last_metrics: dict = {}
        self.last_validated_step = self.last_saved_step = -1
        self.budget_s = args.max_train_minutes * 60.0 if args.max_train_minutes else None
        self.tail_s = {"validation": 0.0, "checkpoint": 0.0}  # last durations, kept free at the end of the budget

    # ------------------------------------------------------------------ set-up
    def _setup_model(self) -> None:
        args, accelerator, pipeline = self.args, self.accelerator, self.pipeline
        pipeline.set_progress_bar_config(disable=True)
        self.module = GLOWTrainingModule(
            pipeline.motion_estimator, pipeline.prereconstruction, pipeline.transformer,
            LossConfig.from_args(args, residual_scale=float(pipeline.config.residual_scale),
                                 num_train_timesteps=int(pipeline.scheduler.config.num_train_timesteps),
                                 prediction_type=pipeline.config.get("prediction_type", "flow")), type(pipeline))
        self.frozen = set_trainable(self.module, getattr(args, "freeze", ""))
        self.module.train()
        if args.channels_last:  # the convolutions then pick NHWC kernels for any input layout
            self.module.to(memory_format=torch.channels_last)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("every component is frozen: nothing to train")
        self.lr = args.learning_rate
        if args.scale_lr:
            self.lr *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
        from diffusers.optimization import get_scheduler

        self.optimizer = torch.optim.AdamW(self.params, lr=self.lr, betas=(args.adam_beta1, args.adam_beta2),
                                           weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
        # the prepared scheduler steps once per process per optimizer step (diffusers-examples convention)
        self.lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=self.optimizer,
                                          num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                          num_training_steps=args.max_train_steps * accelerator.num_processes)
        self.ema = EMAWeights(self.module, args.ema_decay) if args.use_ema else None
        if accelerator.state.deepspeed_plugin is not None:  # our loader is not prepared: tell DeepSpeed the batch
            accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = \
                args.train_batch_size
        accelerator.register_save_state_pre_hook(functools.partial(save_ema_hook, ema=self.ema,
                                                                   accelerator=accelerator))
        accelerator.register_load_state_pre_hook(functools.partial(load_ema_hook, ema=self.ema))
        self.module, self.optimizer, self.lr_scheduler = accelerator.prepare(self.module, self.optimizer,
                                                                             self.lr_scheduler)
        self.raw_module: GLOWTrainingModule = accelerator.unwrap_model(self.module, keep_torch_compile=False)
        if self.ema is not None:  # the shadow weights were made before prepare() moved the module
            self.ema.ema.to(accelerator.device)
        if args.deconvolved_inputs > 0:
            if getattr(pipeline, "blind_deconvolution", None) is None:
                raise ValueError("--deconvolved_inputs needs a pipeline with a blind_deconvolution component")
            pipeline.blind_deconvolution.to(accelerator.device)

    def _resume(self) -> Path | None:
        args = self.args
        resume_dir = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
        if args.resume_from_checkpoint and resume_dir is None:
            logger.info("--resume_from_checkpoint %s: no checkpoint yet, starting from scratch",
                        args.resume_from_checkpoint)
        if resume_dir is not None:
            self.accelerator.load_state(str(resume_dir))
            if self.ema is not None:
                self.ema.ema.to(self.accelerator.device)
            self.global_step = json.loads((resume_dir / TRAINER_STATE_NAME).read_text())["global_step"]
            self.last_saved_step = self.global_step
            logger.info("resumed from %s at step %d", resume_dir, self.global_step)
            set_base_learning_rate(self.lr_scheduler, self.lr)
        return resume_dir

    def _setup_run(self, resume_dir: Path | None) -> None:
        args, accelerator = self.args, self.accelerator
        from tqdm.auto import tqdm

        self.log = JSONLLog(self.output_dir / "logs" / LOG_NAME,
                            resume_step=self.global_step if resume_dir else None) \
            if accelerator.is_main_process else None
        if self.report_to:
            accelerator.init_trackers(args.tracker_project_name, config={
                k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})
        self.text_cache = make_text_cache(args, self.pipeline, accelerator.device)
        self.val_samples = (load_validation_set(args.validation_data_dir, args.num_validation_images,
                                                args.validation_resolution, args.validation_seed)
                            if args.validation_data_dir and accelerator.is_main_process else [])
        self.data_iter = iter(make_train_dataloader(self.train_dataset, args, accelerator, self.global_step,
                                                    self.collate_fn))
        total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        logger.info("stage %s | %d trainable parameters (frozen: %s) | %d training samples | total batch %d | "
                    "steps %d", self.stage, sum(p.numel() for p in self.params), self.frozen or "none",
                    len(self.train_dataset), total_batch, args.max_train_steps)
        self.progress = tqdm(total=args.max_train_steps, initial=self.global_step, desc=self.stage,
                             disable=not accelerator.is_local_main_process, dynamic_ncols=True)

    # ------------------------------------------------------------------ one optimizer step
    def _next_batch(self, micro_step: int, window: dict) -> tuple[dict, torch.Generator]:
        accelerator = self.accelerator
        t_wait = time.perf_counter()
        batch = next(self.data_iter)
        window["data"] += time.perf_counter() - t_wait
        pending = batch.pop("recipe_pending", None)  # stays on the CPU: reading it needs no synchronisation
        batch = {k: (v.to(accelerator.device, non_blocking=True) if torch.is_tensor(v) else v)
                 for k, v in batch.items()}
        gen = step_generator(self.args.seed, self.global_step, accelerator.process_index, micro_step)
        if pending is not None:  # --render_on_device: blur, camera and JPEG for the whole batch here
            from glow.data.batched import render_pending

            batch["recipe_pending"] = pending
            render_gen = torch.Generator(accelerator.device).manual_seed(gen.initial_seed() ^ 0x5EED)
            with torch.no_grad():
                render_pending(batch, render_gen)
            if self.args.deconvolved_inputs > 0:  # what the networks see after the pipeline's deconvolution
                from .deconvolved import deconvolve_inputs

                deconvolve_inputs(batch, self.pipeline.blind_deconvolution, self.args.deconvolved_inputs,
                                  torch.Generator().manual_seed(gen.initial_seed() ^ 0xDEC0))
        return batch, gen

    def _diffusion_inputs(self, batch: dict, gen: torch.Generator) -> dict:
        args, device = self.args, self.accelerator.device
        bsz, (h, w) = batch["blurry"].shape[0], batch["blurry"].shape[-2:]
        noise, sigmas = sample_diffusion_inputs(args, (bsz, 192, h // 8, w // 8), gen, device)
        drop = torch.rand(bsz, generator=gen) < args.text_drop_prob
        embeds, mask = self.text_cache(["" if d else t for d, t in zip(drop.tolist(), batch["text"])], device)
        return {"text_embeds": embeds, "text_mask": mask, "noise": noise.to(device), "sigmas": sigmas.to(device)}

    def training_step(self, window: dict) -> bool:
        """One optimizer step (with its micro-steps); -> whether the diffusion loss was on."""
        args, accelerator = self.args, self.accelerator
        use_diffusion = self.global_step >= args.diffusion_start_step and self.raw_module.transformer is not None
        for micro_step in range(args.gradient_accumulation_steps):
            batch, gen = self._next_batch(micro_step, window)
            kwargs = {"use_diffusion": use_diffusion}
            if use_diffusion:
                kwargs.update(self._diffusion_inputs(batch, gen))
            with accelerator.accumulate(self.module):
                loss, parts = self.module(batch, **kwargs)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(self.params, args.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            for k, v in parts.items():  # summed where they are: reading them every step would wait for the GPU
                window["losses"][k] = window["losses"].get(k, 0.0) + v.float() / args.gradient_accumulation_steps
            window["samples"] += batch["blurry"].shape[0] * accelerator.num_processes
        window["count"] += 1
        self.global_step += 1
        if self.ema is not None:
            self.ema.step(self.raw_module)
        self.progress.update(1)
        return use_diffusion

    # ------------------------------------------------------------------ logging, validation, saving
    @staticmethod
    def new_window() -> dict:
        """What one log line covers."""
        return {"start": time.perf_counter(), "cpu": time.process_time(), "data": 0.0, "samples": 0, "losses": {},
                "count": 0}

    def log_window(self, window: dict, use_diffusion: bool, run_start: float) -> bool:
        """Writes one log line (losses averaged over processes); -> whether the time budget is used up. A collective:
        every process calls it at the same step, and the budget decision rides on it so all stop together."""
        accelerator = self.accelerator
        elapsed = time.perf_counter() - window["start"]
        keys = sorted(window["losses"])
        over = self.budget_s is not None and (time.perf_counter() - run_start + 2 * sum(self.tail_s.values())
                                              + 0.05 * self.budget_s >= self.budget_s)
        values = torch.stack([torch.as_tensor(window["losses"][k] / window["count"], device=accelerator.device)
                              for k in keys] + [torch.tensor(float(over), device=accelerator.device)])
        mean = accelerator.reduce(values, reduction="mean").tolist()
        out_of_time = mean.pop() > 0
        losses = {f"loss/{k}": float(v) for k, v in zip(keys, mean)}
        record = {"step": self.global_step, **losses, "lr": self.lr_scheduler.get_last_lr()[0],
                  "samples_per_s": window["samples"] / max(elapsed, 1e-9),
                  "steps_per_s": window["count"] / max(elapsed, 1e-9),
                  "data_wait_share": window["data"] / max(elapsed, 1e-9),
                  # CPU seconds of this process (all threads, validation included) since the last line: the
                  # training curves are plotted against CPU-hours, which wall time on a shared machine is not
                  "cpu_seconds": time.process_time() - window["cpu"], "threads": torch.get_num_threads(),
                  "diffusion": use_diffusion, "time": time.time()}
        cache = self.text_cache
        if cache.encode_fn is None:
            record["text_fallback_share"] = cache.fallbacks / max(1, cache.hits + cache.misses)
        if accelerator.is_main_process:
            self.log.write(record)
            self.progress.set_postfix(loss=f"{losses['loss/total']:.4f}", sps=f"{record['samples_per_s']:.2f}")
        if self.report_to:
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=self.global_step)
        return out_of_time

    def with_ema_weights(self, fn):
        """Run `fn` with the EMA weights in the module (validation and export use them), then restore."""
        if self.ema is None:
            return fn()
        self.ema.ema.store(self.raw_module.parameters())
        self.ema.copy_to(self.raw_module)
        try:
            return fn()
        finally:
            self.ema.ema.restore(self.raw_module.parameters())

    def validate(self) -> None:
        accelerator, step = self.accelerator, self.global_step
        self.last_validated_step = step
        started = time.perf_counter()
        if accelerator.is_main_process and self.val_samples:
            metrics, grid = self.with_ema_weights(lambda: run_validation(
                self.pipeline, self.raw_module, self.val_samples, accelerator.device, self.args.validation_seed,
                deconvolve=self.args.deconvolved_inputs > 0))
            metrics["val/seconds"] = time.perf_counter() - started
            self.last_metrics = metrics
            (self.output_dir / "validation").mkdir(exist_ok=True)
            grid.save(self.output_dir / "validation" / f"step-{step:07d}.png")
            self.log.write({"step": step, **metrics})
            for tracker in accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
                elif tracker.name == "wandb":
                    import wandb

                    tracker.log({"validation": [wandb.Image(grid)]}, step=step)
            if self.report_to:
                accelerator.log(metrics, step=step)
            logger.info("validation at step %d: %s", step, ", ".join(f"{k[4:]}={v:.3f}" for k, v in metrics.items()))
        accelerator.wait_for_everyone()
        self.tail_s["validation"] = time.perf_counter() - started

    def checkpoint(self) -> None:
        started = time.perf_counter()
        save_checkpoint(self.accelerator, self.args.output_dir, self.global_step, self.args.checkpoints_total_limit,
                        {"stage": self.stage, "metrics": self.last_metrics})
        self.last_saved_step = self.global_step
        if self.args.save_pipeline_at_checkpoint:
            self.export_pipeline()
        self.tail_s["checkpoint"] = time.perf_counter() - started

    def export_pipeline(self) -> None:
        args = self.args
        if self.accelerator.is_main_process:
            folder = self.with_ema_weights(lambda: save_pipeline_folder(self.pipeline, self.output_dir / "pipeline"))
            weights = provenance(self.stage, self.global_step, args.preset, self.ema is not None, self.base_model)
            write_model_card(folder, args, stage=self.stage, global_step=self.global_step, metrics=self.last_metrics,
                             data_summary=self.data_summary, base_model=self.base_model, weights=weights)
        self.accelerator.wait_for_everyone()

    def publish(self) -> int:
        """--hub_dry_run / --push_to_hub after the export; -> exit status."""
        args, folder = self.args, self.output_dir / "pipeline"
        logger.info("pipeline folder (EMA weights) written to %s", folder)
        if args.hub_dry_run:
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            plan = {"repo_id": args.hub_model_id, "folder": str(folder), "files": files}
            (self.output_dir / "hub_dry_run.json").write_text(json.dumps(plan, indent=2))
            logger.info("--hub_dry_run: would upload %s (%d files, model card README.md) to %s", folder, len(files),
                        args.hub_model_id or "(no --hub_model_id given)")
        elif args.push_to_hub:
            try:
                logger.info("pushed to %s", push_folder_to_hub(folder, args))
            except (RuntimeError, ValueError) as err:
                print(f"ERROR: {err}", file=sys.stderr, flush=True)
                return 1
        return 0

    # ------------------------------------------------------------------ the run
    def train(self) -> int:
        args, accelerator = self.args, self.accelerator
        self._setup_model()
        self._setup_run(self._resume())
        stopper = self.stopper
        if args.validate_at_start and args.validation_data_dir and self.global_step == 0:
            self.validate()
        run_start, window = time.perf_counter(), self.new_window()
        stop = out_of_time = False
        while self.global_step < args.max_train_steps and not stop and not out_of_time:
            use_diffusion = self.training_step(window)
            if self.global_step % args.logging_steps == 0 or self.global_step == args.max_train_steps:
                out_of_time = self.log_window(window, use_diffusion, run_start)
                window = self.new_window()
            # a SIGTERM/SIGINT on any process stops every process after this same step
            if stopper.requested:
                accelerator.set_trigger()
            stop = accelerator.check_trigger() if accelerator.num_processes > 1 else stopper.requested
            last = self.global_step == args.max_train_steps
            if args.validation_data_dir and not stop and not out_of_time and (
                    last or (args.validation_steps > 0 and self.global_step % args.validation_steps == 0)):
                self.validate()
            if stop or self.global_step % args.checkpointing_steps == 0 or last:
                self.checkpoint()
        self.progress.close()
        if out_of_time:
            logger.info("--max_train_minutes %s: stopping at step %d after %.1f min to checkpoint, validate and "
                        "export", args.max_train_minutes, self.global_step, (time.perf_counter() - run_start) / 60)
        if stop:
            logger.info("stopped by %s at step %d; checkpoint written, resume with --resume_from_checkpoint latest",
                        signal.Signals(stopper.signum).name if stopper.signum else "a signal on another process",
                        self.global_step)
            accelerator.end_training()
            return 0
        if self.last_saved_step != self.global_step:
            self.checkpoint()
        if args.validation_data_dir and self.last_validated_step != self.global_step:
            self.validate()
        self.export_pipeline()
        status = self.publish() if accelerator.is_main_process else 0
        accelerator.end_training()
        return status


def run_training(args, *, stage: str, build_pipeline: Callable[[], object], train_dataset: Dataset,
                 collate_fn: Callable, data_summary: list[str], base_model: str | None = None) -> int:
    """Trains, checkpoints, validates and saves. Returns the process exit status (0 = done or stopped cleanly)."""
    from accelerate.utils import set_seed

    accelerator = make_accelerator(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    stopper = GracefulStop()  # from here on a SIGTERM/SIGINT ends the run cleanly
    set_seed(args.seed)  # identical initial weights on every process
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(output_dir)
        (output_dir / "args.json").write_text(json.dumps(vars(args), indent=2, default=str))
    accelerator.wait_for_everyone()
    return Trainer(args, accelerator, build_pipeline(), stage=stage, train_dataset=train_dataset,
                   collate_fn=collate_fn, data_summary=data_summary, base_model=base_model, stopper=stopper).train()
