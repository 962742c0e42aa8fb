"""Command-line flags shared by train/bpp.py and train/finetune.py (diffusers-examples names)."""
from __future__ import annotations

import argparse
import json
import os

import torch

from .checkpointing import COMPONENTS


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _model_flags(p: argparse.ArgumentParser, finetune: bool) -> None:
    """Model size and where the weights come from."""
    a = p.add_argument
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


def _data_flags(p: argparse.ArgumentParser, finetune: bool) -> None:
    """Training data and how it is mixed and rendered."""
    a = p.add_argument
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
    a("--sharpen_probability", type=float, default=0.0,
      help="Share of the simulated samples whose sharp crop first gets a random unsharp mask (target and input "
           "alike), so the networks learn that crisp detail is not noise (docs/training.md, 'Crisp targets').")
    a("--deconvolved_inputs", type=float, default=0.0,
      help="Share of the simulated samples with a known kernel that the networks see deconvolved, as the pipeline "
           "deconvolves photos before them (perturbed kernel, random confidence; glow/training/deconvolved.py). "
           "Needs --render_on_device. Validation then runs the pipeline with its blind deconvolution.")
    a("--render_on_device", action=argparse.BooleanOptionalAction, default=None,
      help="Simulated global blur (shake, linear, defocus, gaussian; most of the mix) is drawn in the DataLoader "
           "workers and rendered a batch at once on the training device (glow.data.batched). Default: on with a GPU.")
    a("--val_frames_holdout", type=int, default=60,
      help="Last N frames of each clip are held out for validation (never used for training).")
    a("--dataloader_num_workers", type=int, default=0)


def _optimisation_flags(p: argparse.ArgumentParser, finetune: bool) -> None:
    """Optimizer, schedule, precision, budget."""
    a = p.add_argument
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
    a("--channels_last", action="store_true",
      help="Convolution weights in channels_last memory format (NHWC kernels: faster with bf16 on recent GPUs).")
    a("--dynamo_backend", type=str.lower, default=None,
      choices=["no", "eager", "inductor", "cudagraphs"],
      help="torch.compile the training module through Accelerate (as `accelerate launch --dynamo_backend`); "
           "'inductor' generates kernels (minutes to start: for long GPU runs). Default: Accelerate's config.")
    a("--max_train_minutes", type=float, default=None,
      help="Wall-clock budget: training stops early enough that the last checkpoint, validation and pipeline export "
           "end within it (a lent GPU for a fixed time). --max_train_steps still applies.")
    a("--seed", type=int, default=0)


def _loss_flags(p: argparse.ArgumentParser, finetune: bool) -> None:
    """Loss weights and the flow-matching sigmas."""
    a = p.add_argument
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
    a("--use_ema", action=argparse.BooleanOptionalAction, default=True, help="EMA of the weights for the saved model.")
    a("--ema_decay", type=float, default=0.999)


def _output_flags(p: argparse.ArgumentParser, finetune: bool) -> None:
    """Checkpoints, logs, validation and the Hub."""
    a = p.add_argument
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
    a("--push_to_hub", action="store_true")
    a("--hub_model_id", default=None)
    a("--hub_token", default=None)
    a("--hub_private", action="store_true")
    a("--hub_dry_run", action="store_true",
      help="Write the exact folder and model card that --push_to_hub would upload (README.md inside) and stop there.")


def build_arg_parser(description: str, *, finetune: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for add in (_model_flags, _data_flags, _optimisation_flags, _loss_flags, _output_flags):
        add(p, finetune)
    return p


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
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
    if not 0.0 <= args.deconvolved_inputs <= 1.0:
        parser.error(f"--deconvolved_inputs is a share in [0, 1], got {args.deconvolved_inputs}")
    if args.deconvolved_inputs > 0 and not args.render_on_device:
        parser.error("--deconvolved_inputs needs --render_on_device (the kernels travel with the deferred samples)")
    return args
