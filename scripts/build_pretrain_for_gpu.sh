#!/bin/bash
# Builds the CUDA `pretrain` binary here (no GPU needed) and stages it with its run script in
# .device4/ for the device tool (carry [".device4"]); see scripts/gpu_pretrain.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda -p ember-pretrain
mkdir -p .device4
strip -o .device4/pretrain target/cuda/release/pretrain
cp scripts/gpu_pretrain.sh .device4/
grep -qx '/.device4/' .git/info/exclude 2>/dev/null || echo '/.device4/' >> .git/info/exclude
