#!/usr/bin/env bash
# One prepared training run on a GPU machine (or, for the test, on CPU): installs the carried wheels, trains the
# shipped model further on the carried training pack for a wall-clock budget, validates before and after, and
# leaves in RESULT_DIR the pipeline folder as one archive, the JSONL log and the arguments.
#
#   python -m glow.data.pack ../shared/data packs/train --max_mb 35   # once, here: the data that travels
#   train/device_wheels.sh                                            # once, here: diffusers for the device
#   train/accelerator_run.sh MINUTES RESULT_DIR [extra train/bpp.py flags, later ones win]
#   BENCH_BATCHES="32 64 128 256" train/accelerator_run.sh MINUTES RESULT_DIR   # throughput sweep instead
#
# Environment: PACK (default packs/train), WHEELS (.whl), BATCH (64), LR (4e-4), MIXED_PRECISION (bf16 on a GPU, no on CPU),
# WORKERS (CPU cores - 1), INIT_FROM (a pipeline folder, default glow/default_model: joint fine-tuning with
# train/finetune.py at MIX paired,frames,sim = 0.15,0.25,0.6; "none": BPP from scratch with train/bpp.py at PRESET).
set -euo pipefail
minutes=${1:?usage: train/accelerator_run.sh MINUTES RESULT_DIR [train/bpp.py flags]}
result=${2:?usage: train/accelerator_run.sh MINUTES RESULT_DIR [train/bpp.py flags]}
shift 2
cd "$(dirname "$0")/.."
mkdir -p "$result"
result=$(cd "$result" && pwd)
wheels=${WHEELS:-.whl}
if compgen -G "$wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/glow-site "$wheels"/*.whl
  export PYTHONPATH=/tmp/glow-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
pack=${PACK:-packs/train}
[ -d "$pack/sharp" ] || { echo "no training pack at $pack: run python -m glow.data.pack first" >&2; exit 2; }
gpu=$(python3 -c 'import torch; print(int(torch.cuda.is_available()))')
if [ -n "${BENCH_BATCHES:-}" ]; then  # throughput sweep instead of a run: where does a step stop waiting for data?
  timeout --kill-after=10 "$(python3 -c "print(int($minutes * 60))")" \
  python3 benchmarks/bench_train.py --data "$pack" --val_frames_holdout 0 --batch_size $BENCH_BATCHES \
    --workers "${WORKERS:-$(( $(nproc) - 1 ))}" --steps "${BENCH_STEPS:-60}" --warmup 5 \
    --mixed_precision "${MIXED_PRECISION:-$([ "$gpu" = 1 ] && echo bf16 || echo no)}" \
    $([ -f "$pack/text_embeddings.safetensors" ] && echo --text_embeddings "$pack/text_embeddings.safetensors") \
    "$@" 2>&1 | tee "$result/bench.txt"
  exit
fi
run=$(mktemp -d /tmp/glow-run.XXXX)/run
frames=()
[ -d "$pack/frames" ] && frames=(--frames_data_dir "$pack/frames" --val_frames_holdout 0)  # held out in the pack
text=()
[ -f "$pack/text_embeddings.safetensors" ] && text=(--text_embeddings "$pack/text_embeddings.safetensors")
init=${INIT_FROM:-glow/default_model}
if [ "$init" = none ]; then  # BPP from scratch: simulated blur and frame averaging
  script=(train/bpp.py --preset "${PRESET:-small}" --train_data_dir "$pack/sharp" --diffusion_start_step 1000)
else  # joint fine-tuning of a trained pipeline (its own configuration): real pairs, frames and simulated blur
  pairs=()
  for d in "$pack"/pairs/*/; do [ -d "$d" ] && pairs+=(--train_data_dir "$d"); done
  script=(train/finetune.py --pretrained_model_name_or_path "$init" --sharp_data_dir "$pack/sharp" "${pairs[@]}"
          --mix_ratios "${MIX:-$([ ${#pairs[@]} -gt 0 ] && echo 0.15,0.25,0.6 || echo 0,0.3,0.7)}")
fi
# DataLoader workers hand batches over through /dev/shm, which containers often keep at 64 MB: enlarge it where we may
[ "$gpu" = 1 ] && [ -w /dev/shm ] && mount -o remount,size=32g /dev/shm 2> /dev/null || true
{ python3 -c 'import torch; print("torch", torch.__version__, "| cuda:", torch.cuda.is_available() and torch.cuda.get_device_name(0))'
  echo "cpu cores: $(nproc)"; df -h /dev/shm | tail -1; } | tee "$result/machine.txt"
# a hard stop a little after the budget: a crash must not leave DataLoader workers holding the machine
timeout --kill-after=10 "$(python3 -c "print(int($minutes * 60 + 120))")" \
python3 "${script[@]}" "${frames[@]}" "${text[@]}" \
  --validation_data_dir "$pack/val" --num_validation_images 8 --validate_at_start \
  --output_dir "$run" --max_train_minutes "$minutes" --max_train_steps 1000000 \
  --train_batch_size "${BATCH:-64}" --learning_rate "${LR:-4e-4}" --lr_scheduler constant_with_warmup \
  --lr_warmup_steps 100 \
  --mixed_precision "${MIXED_PRECISION:-$([ "$gpu" = 1 ] && echo bf16 || echo no)}" \
  --dataloader_num_workers "${WORKERS:-$(( $(nproc) - 1 ))}" \
  --checkpointing_steps 1000 --checkpoints_total_limit 1 --validation_steps 1000 --logging_steps 20 \
  "$@" 2>&1 | tee "$result/console.log"
cp "$run/logs/train_log.jsonl" "$run/args.json" "$result/"
tar -czf "$result/pipeline.tar.gz" -C "$run" pipeline
ls -l "$result"
