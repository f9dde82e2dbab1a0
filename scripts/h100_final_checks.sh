#!/bin/bash
# One device call (carry [".device", ".device4"]): the session's final build after its last
# refactors (the cuBLASLt choice's bookkeeping, the kernel checks' shared update helper) —
# kernel checks bare and under burn's fusion backend, and one f32 GaLore step table point per
# rank at 4096×11008 with the update GEMM's algorithm reported (`update_gemm`).
PACKED=1
. scripts/lib_device.sh
kernel_checks_both
step_run $OUT/x/galore_4096x11008 -- --optimizer galore --shapes 4096x11008 --ranks 128,512,1024 \
  --iters 40 --refreshes 0
step_summary $OUT/x step_ms step_on_device_ms step_unchecked_ms engine_ms update_rel_err update_gemm
pack
cat $OUT/summary.txt
