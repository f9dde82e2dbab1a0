#!/bin/bash
# Builds the CUDA ember-bench here (no GPU needed) and stages what the GPU machine needs in .device/:
# the stripped binary, the PyTorch anchor scripts (scripts/anchors/) and the wheels of galore-torch
# and bitsandbytes (for galore-torch's 8-bit optimizer). Then run, on the GPU machine (device tool,
# carry [".device"]): bash .device/run_memory.sh (issues 13/14), bash .device/run_kernels.sh, …
set -euo pipefail
cd "$(dirname "$0")/.."
# burn's matmul autotuning is on, as in burn's default features (FEATURES=cuda to build without it)
CARGO_TARGET_DIR=target/cuda cargo build --release --features "${FEATURES:-cuda-autotune}" -p ember-bench
mkdir -p .device/whl
strip -o .device/ember-bench target/cuda/release/ember-bench
cp scripts/anchors/torch_anchor.py scripts/anchors/hf_anchor.py .device/
[ -f .device/whl/galore_torch-1.0-py3-none-any.whl ] || pip download --no-deps galore-torch==1.0 -d .device/whl
# bitsandbytes for GaLoreAdamW8bit (torch 2.11 there, Python 3.12, x86-64)
ls .device/whl/bitsandbytes-*.whl >/dev/null 2>&1 || pip download --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_24_x86_64 bitsandbytes -d .device/whl
cp scripts/h100_memory.sh .device/run_memory.sh
cp scripts/h100_kernels.sh .device/run_kernels.sh
cp scripts/h100_diag.sh .device/run_diag.sh
cp scripts/step_summary.py .device/
cp scripts/h100_side_by_side.sh .device/run1.sh
cp scripts/h100_measure.sh .device/run2.sh
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
