#!/bin/bash
# One device call (carry [".device"] after `FEATURES=cuda-fusion bash scripts/build_for_gpu.sh`):
# the NaN/Inf check kept on the device (issue 18 item 2, `NonFinitePolicy::SkipStepOnDevice`),
# most important first:
#  1. kernel checks on CUDA, bare and under burn's fusion backend (every fused op against the
#     portable path, with the skip flag at 0 and at 1 on NaN/±Inf gradients among them);
#  2. `ember-bench step` GaLore r512 and AdamW at every shape: `step_ms` (the default policy,
#     flags read back every step) beside `step_on_device_ms` (the check on the device);
#  3. the PyTorch anchor (galore-torch, torch fused AdamW, TF32) for the side-by-side ratios
#     (ANCHOR=0: left out);
#  4. with METHODS="…", the pretraining runs of scripts/h100_pretrain_cublas.sh in the time left
#     (carry [".device", ".device4"] then).
# Raw output: $OUT/res.tgz (kernels_*.log, step_*.jsonl, anchor_tf32.json; packed after every
# stage: a call returns at most 8 files) and summary.txt.
JSONL=unused.jsonl
PACKED=1
. scripts/lib_device.sh
for d in cuda cuda-fusion; do
  timeout 150 $B kernels --device $d > $OUT/kernels_$d.log 2>&1
  echo "kernels $d: exit $? at $(( $(date +%s) - T0 )) s; $(tail -1 $OUT/kernels_$d.log)" | tee -a $OUT/summary.txt
  grep -v '^ok ' $OUT/kernels_$d.log | head -20
  pack
done
for o in galore adamw; do
  timeout 120 $B step --device cuda --optimizer $o --ranks ${RANKS:-512} --iters 20 --refreshes 0 \
    > $OUT/step_$o.jsonl 2>> $OUT/step.err
  echo "step $o: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  pack
done
if [ "${ANCHOR:-1}" = 1 ] && [ $(left) -gt 100 ]; then
  TF32=1 PYTHONUNBUFFERED=1 timeout $(( $(left) - 15 )) python3 .device/torch_anchor.py .device/whl $OUT/anchor_tf32.json > $OUT/anchor.log 2>&1
  echo "anchor: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
fi
pack
# then, if asked, the pretraining runs of scripts/h100_pretrain_cublas.sh in the time left
if [ -n "${METHODS:-}" ]; then
  OUT=$REAL_OUT BUDGET_S=$(left) bash scripts/h100_pretrain_cublas.sh
fi
cat $OUT/summary.txt
