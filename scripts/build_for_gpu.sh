#!/bin/bash
# Builds the CUDA ember-bench here (no GPU needed) and stages what the GPU machine needs in .device/:
# the stripped binary, the PyTorch anchor script and the galore-torch wheel. Then run, on the GPU
# machine (device tool, carry [".device"]): bash scripts/h100_side_by_side.sh; bash scripts/h100_measure.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# burn's matmul autotuning is on, as in burn's default features (FEATURES=cuda to build without it)
CARGO_TARGET_DIR=target/cuda cargo build --release --features "${FEATURES:-cuda-autotune}" -p ember-bench
mkdir -p .device/whl
strip -o .device/ember-bench target/cuda/release/ember-bench
cp ../shared/tools/torch_anchor.py .device/
[ -f .device/whl/galore_torch-1.0-py3-none-any.whl ] || pip download --no-deps galore-torch==1.0 -d .device/whl
cp scripts/h100_kernels.sh .device/run_kernels.sh
cp scripts/h100_diag.sh .device/run_diag.sh
cp scripts/step_summary.py .device/
cp scripts/h100_side_by_side.sh .device/run1.sh
cp scripts/h100_measure.sh .device/run2.sh
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
