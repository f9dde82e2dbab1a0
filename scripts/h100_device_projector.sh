#!/bin/bash
# One device call (carry [".device", ".device4"], after the builds of ember-bench and pretrain):
# the device projector with its Rayleigh–Ritz step (`ember_core::range::rayleigh_ritz`):
#  1. its refresh time and captured energy against the exact SVD (`ember-bench step`,
#     `refresh_device_ms`, `device_energy_ratio`) at r = 512 and 1024;
#  2. pretraining (the table's run) with the GPU default, the device projector: GaLore, GaLore
#     with the NaN/Inf check on the device, Fira — to compare with the exact SVD (`+host-svd`)
#     of docs/results/pretrain/h100_skip_on_device_2026-11-24/call2.
# Output: $OUT/res.tgz (step_refresh.jsonl, each run's summary.json and log) and summary.txt.
mkdir -p /tmp/res
JSONL=unused.jsonl
. scripts/lib_device.sh
timeout 150 $B step --device cuda --optimizer galore --shapes 2048x2048,4096x4096 --ranks 512,1024 \
  --iters 3 --refreshes 1 > /tmp/res/step_refresh.jsonl 2> /tmp/res/step_refresh.err
echo "step refresh: exit $? at $(( $(date +%s) - T0 )) s" | tee -a /tmp/res/summary.txt
BUDGET_S=$(left) METHODS="${METHODS:-galore galore+check-on-device fira}" bash scripts/h100_pretrain_cublas.sh
