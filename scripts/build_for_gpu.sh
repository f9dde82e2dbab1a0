#!/bin/bash
# Builds the CUDA ember-bench here (no GPU needed) and stages what the GPU machine needs in .device/:
# the stripped binary, the PyTorch anchor scripts (scripts/anchors/) and the wheels of galore-torch
# and bitsandbytes (for galore-torch's 8-bit optimizer). Then run, on the GPU machine (device tool,
# carry [".device"]): bash .device/run_memory.sh (issues 13/14), bash .device/run_kernels.sh, …
set -euo pipefail
cd "$(dirname "$0")/.."
# Without burn's matmul autotuning (FEATURES=cuda-autotune to build with it): on the H100, 113 of
# the 183 kernels a first LLaMA-350M step compiled in its first 200 s were autotune candidates,
# each compiled by NVRTC on one CPU thread (docs/perf-notes.md, "Time to the first step").
CARGO_TARGET_DIR=target/cuda cargo build --release --features "${FEATURES:-cuda}" -p ember-bench
mkdir -p .device/whl .git/info
# symbols kept (debug info dropped): the stack samples of scripts/h100_first_step.sh name functions
strip --strip-debug -o .device/ember-bench target/cuda/release/ember-bench
# the carried tree is limited to 64 MiB: a larger binary (FEATURES=cuda-fusion holds both CUDA
# backends) travels gzipped; the run scripts unpack .device/ember-bench.gz
rm -f .device/ember-bench.gz
if [ "$(stat -c %s .device/ember-bench)" -gt 40000000 ]; then gzip -6 .device/ember-bench; fi
cp scripts/anchors/torch_anchor.py scripts/anchors/hf_anchor.py .device/
[ -f .device/whl/galore_torch-1.0-py3-none-any.whl ] || pip download --no-deps galore-torch==1.0 -d .device/whl
# bitsandbytes for GaLoreAdamW8bit (torch 2.11 there, Python 3.12, x86-64)
ls .device/whl/bitsandbytes-*.whl >/dev/null 2>&1 || pip download --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_24_x86_64 bitsandbytes -d .device/whl
# only the CUDA 13 library (torch there is cu130): the wheel shrinks from 43 MB to 4 MB (the
# carried tree is limited to 64 MiB; the anchor unpacks wheels with zipfile, not pip)
zip -q -d .device/whl/bitsandbytes-*.whl 'bitsandbytes/libbitsandbytes_cuda1[12]*.so' \
  'bitsandbytes/libbitsandbytes_cuda132.so' 'bitsandbytes/libbitsandbytes_rocm*.so' \
  'bitsandbytes/libbitsandbytes_xpu*.so' 2>/dev/null || true
cp scripts/h100_first_step.sh .device/run_first_step.sh
cp scripts/h100_memory.sh .device/run_memory.sh
cp scripts/h100_kernels.sh .device/run_kernels.sh
cp scripts/h100_diag.sh .device/run_diag.sh
cp scripts/step_summary.py .device/
cp scripts/h100_qgalore.sh .device/run_qgalore.sh
cp scripts/h100_fusion.sh .device/run_fusion.sh
cp scripts/h100_first_step_again.sh .device/run_first_step_again.sh
cp scripts/h100_side_by_side.sh .device/run1.sh
cp scripts/h100_measure.sh .device/run2.sh
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
