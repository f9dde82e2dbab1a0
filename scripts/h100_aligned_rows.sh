#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18, bf16 and f32 GaLore at 2048×5461):
# the down projection's product and the 16-bit N written with rows padded to CubeCL's pitch where
# a row is not a multiple of 16 bytes (EmberBackend::projection_down), and (from call 3) the GEMMs
# run over that padded width (cube::cublas::widen); EMBER_ALIGNED_ROWS=off turns both off. Most
# important first:
#  1. kernel checks on CUDA (bare): the padded-row rows among them;
#  2. the same process pair at 2048×5461 with EMBER_ALIGNED_ROWS=off (dense rows, the build before)
#     and on, alternating twice, with the cuBLAS timeline (each window's GEMM time) — f32 GaLore
#     r128/512/1024 and bf16 GaLore r512;
#  3. PyTorch's down product by G's layout (scripts/anchors/layout_probe.py; PROBE=0 skips it);
#  4. the step table REPS times (default 1) beside its PyTorch anchor;
#  5. kernel checks under burn's fusion backend.
PACKED=1
. scripts/lib_device.sh
kernel_checks
pack
mkdir -p $OUT/ab
for round in 1 2; do
  for rows in off on; do
    for wd in f32 bf16; do
      ranks=128,512,1024; [ $wd = bf16 ] && ranks=512
      STEP_LIMIT=60 step_run $OUT/ab/${wd}_${rows}_$round EMBER_ALIGNED_ROWS=$rows EMBER_CUBLAS_TIMELINE=1 -- \
        --optimizer galore --shapes 2048x5461 --ranks $ranks --iters 40 --refreshes 0 --weights-dtype $wd
    done
  done
done
step_summary $OUT/ab step_unchecked_ms engine_ms down_ms up_ms down_rel_err update_rel_err update_operands
tail -40 $OUT/summary.txt
pack
# PyTorch: the down product's time by G's layout (row-major, K-major, padded rows); PROBE=0 skips
[ "${PROBE:-1}" = 1 ] && timeout 60 python3 scripts/anchors/layout_probe.py $OUT/layout_probe.jsonl > $OUT/layout_probe.log 2>&1
echo "layout probe: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
cat $OUT/layout_probe.jsonl >> $OUT/summary.txt 2>/dev/null
pack
step_table_reps 1
kernel_checks cuda-fusion 100
pack
cat $OUT/summary.txt
