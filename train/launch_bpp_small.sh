#!/usr/bin/env bash
# The shipped model's BPP run, one process on one core, in the background; run it again to resume from the latest
# checkpoint (stop it with `kill -TERM <pid>`: it finishes the step and writes a checkpoint).
#   train/launch_bpp_small.sh train/runs/bpp-small                                  # the shipped configuration
#   train/launch_bpp_small.sh train/runs/bpp-small-nowiener --model_config '{"prereconstruction": {"use_wiener": false}}'
# Log: <output_dir>/logs/train_log.jsonl (losses, samples/s, validation PSNR/SSIM); console: <output_dir>.out
set -euo pipefail
out=${1:?usage: train/launch_bpp_small.sh OUTPUT_DIR [extra train/bpp.py flags]}; shift
cd "$(dirname "$0")/.."
OMP_NUM_THREADS=1 nohup python train/bpp.py --preset small \
  --train_data_dir ../shared/data/train/sharp --frames_data_dir ../shared/data/train/frames \
  --validation_data_dir ../shared/data/val/sharp --output_dir "$out" \
  --resolution 256 --train_batch_size 4 --learning_rate 4e-4 \
  --lr_scheduler constant_with_warmup --lr_warmup_steps 100 --diffusion_start_step 500 \
  --max_train_steps 100000 --checkpointing_steps 100 --checkpoints_total_limit 2 --validation_steps 250 \
  --num_validation_images 8 --dataloader_num_workers 0 --resume_from_checkpoint latest "$@" >> "$out.out" 2>&1 &
echo "started pid $!: tail -f $out.out"
