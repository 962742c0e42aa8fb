#!/usr/bin/env bash
# Downloads into .whl/ (ignored) the wheels a lent GPU machine lacks, for its Python 3.12 x86-64: its image has torch,
# accelerate, transformers, safetensors, huggingface_hub, scipy, scikit-image and pillow, but not diffusers.
# The text encoder package (90 MB) cannot travel (64 MiB in all): the training pack carries its embeddings instead.
# train/accelerator_run.sh installs whatever is in .whl/ first.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "diffusers==$(python3 -c 'import diffusers; print(diffusers.__version__)')" importlib_metadata
ls -l .whl
