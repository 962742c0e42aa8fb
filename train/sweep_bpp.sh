#!/usr/bin/env bash
# Model-size / learning-rate sweep for the shipped model (issue 6): short BPP runs from scratch, one process on one
# core each, run one after another so each gets the same CPU. Compare their validation curves against CPU time with
#   python train/plot_curves.py train/sweeps/*/ train/runs/bpp-small-nowiener --out curves.png
# Usage: train/sweep_bpp.sh STEPS NAME 'MODEL_CONFIG_JSON' LR [NAME 'JSON' LR ...]
set -euo pipefail
steps=${1:?usage: train/sweep_bpp.sh STEPS NAME JSON LR [...]}; shift
cd "$(dirname "$0")/.."
while [ $# -ge 3 ]; do
  name=$1 cfg=$2 lr=$3; shift 3
  out=train/sweeps/$name
  OMP_NUM_THREADS=1 python train/bpp.py --preset small --model_config "$cfg" \
    --train_data_dir ../shared/data/train/sharp --frames_data_dir ../shared/data/train/frames \
    --validation_data_dir ../shared/data/val/sharp --output_dir "$out" \
    --resolution 256 --train_batch_size 4 --learning_rate "$lr" \
    --lr_scheduler constant_with_warmup --lr_warmup_steps 100 --diffusion_start_step 500 \
    --max_train_steps "$steps" --checkpointing_steps 100000 --validation_steps 100 \
    --num_validation_images 8 --dataloader_num_workers 0 --resume_from_checkpoint latest >> "$out.out" 2>&1
done
