#!/bin/bash
# One device call (carry [".device", ".device4"]): the build after the projector fit and the
# residual rule became open parts (issue 17; the portable update takes a rule's term) — kernel
# checks bare and under burn's fusion backend, and GaLore and Fira f32 step points at
# 4096×11008 r512 (the built-in rules' paths on CUDA); then, if PRETRAIN names runs, pretraining
# (f32, `small`) after a warm-up run (a repeated method's run is NAME_2, …).
PACKED=1
. scripts/lib_device.sh
kernel_checks_both
for o in galore fira; do
  step_run $OUT/x/${o}_4096x11008 -- --optimizer $o --shapes 4096x11008 --ranks 512 \
    --iters 30 --refreshes 0
done
step_summary $OUT/x step_ms step_unchecked_ms engine_ms update_rel_err update_gemm
pack
if [ -n "${PRETRAIN:-}" ]; then
  pretrain_setup
  pretrain_warmup galore
  pretrain_runs $PRETRAIN
  pack
fi
cat $OUT/summary.txt
