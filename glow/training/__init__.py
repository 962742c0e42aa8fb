"""Training code shared by `train/bpp.py` (Blur Pattern Pretraining) and `train/finetune.py` (joint fine-tuning).

The two scripts differ only in where the models and the data come from; everything else lives here, one concern per
module:

- `arguments`: the command-line flags (diffusers-examples names) and their checks;
- `data`: the deterministic resumable sampler, the DataLoader, mixing sources, frame clips, the prompt-embedding cache;
- `losses`: the trainable module (the three components and every loss) and the flow-matching inputs;
- `checkpointing`: atomic checkpoints, EMA weights in safetensors, weights from other runs, SIGTERM, the JSONL log;
- `validation`: the fixed validation set, PSNR/SSIM, the image grid;
- `hub`: the exported pipeline folder, its model card, the Hub push;
- `loop`: `run_training` and the `Trainer` that holds one run's state.
"""
import logging

from .arguments import build_arg_parser, parse_args
from .checkpointing import (COMPONENTS, EMAWeights, GracefulStop, JSONLLog, list_checkpoints, load_matching_weights,
                            resolve_checkpoint, save_checkpoint)
from .data import (ResumableSampler, TextEmbeddingCache, build_mixed_dataset, find_frame_clips, frame_sources,
                   make_train_dataloader)
from .losses import GLOWTrainingModule, LossConfig, charbonnier, frequency_loss, sample_diffusion_inputs
from .loop import Trainer, run_training
from .validation import load_validation_set, pipeline_restore, run_validation

logger = logging.getLogger("glow.training")

__all__ = [
    "build_arg_parser", "parse_args", "COMPONENTS", "EMAWeights", "GracefulStop", "JSONLLog", "list_checkpoints",
    "load_matching_weights", "resolve_checkpoint", "save_checkpoint", "ResumableSampler", "TextEmbeddingCache",
    "build_mixed_dataset", "find_frame_clips", "frame_sources", "make_train_dataloader", "GLOWTrainingModule",
    "LossConfig", "charbonnier", "frequency_loss", "sample_diffusion_inputs", "Trainer", "run_training",
    "load_validation_set", "pipeline_restore", "run_validation",
]
