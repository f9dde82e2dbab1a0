#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build (see
# scripts/h100_fira_bf16.sh): the accumulating GEMM into a pitched `W` (cuBLAS's ldc) and the
# generic dense copy, checked and timed, then layer-wise LLaMA-1B on bf16 weights and the
# pretraining runs of AdamW and Fira again. Most important first:
#  1. kernel checks on CUDA, bare and under burn's fusion backend;
#  2. `ember-bench step` GaLore r512 and AdamW, f32 and bf16, at every shape of the table;
#  3. `measure --model 1b` layer-wise GaLore-8bit (bf16 weights, 4×256, exact pools);
#  4. METHODS (default "adamw fira") of scripts/h100_pretrain_cublas.sh after its warm-up run.
# Raw output: $OUT/res.tgz and summary.txt.
JSONL=measure.jsonl
PACKED=1
. scripts/lib_device.sh
for d in cuda cuda-fusion; do
  timeout 150 $B kernels --device $d > $OUT/kernels_$d.log 2>&1
  echo "kernels $d: exit $? at $(( $(date +%s) - T0 )) s; $(grep -c '^ok ' $OUT/kernels_$d.log) ok" | tee -a $OUT/summary.txt
  grep -v '^ok ' $OUT/kernels_$d.log | head -12 | tee -a $OUT/summary.txt
  pack
done
for w in bf16 f32; do
  for o in galore adamw; do
    timeout 120 $B step --device cuda --optimizer $o --ranks 512 --iters 20 --refreshes 0 \
      --weights-dtype $w > $OUT/step_${w}_$o.jsonl 2>> $OUT/step.err
    echo "step $w $o: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  done
done
pack
run galore8_1b_lw 150 --device cuda --model 1b --rank 512 --batch 4 --seq 256 --weights-dtype bf16 \
  --state-dtype int8 --optimizer galore --layerwise --exact-pools --steps 4 --warmup 1
pack
OUT=$REAL_OUT WARMUP=1 METHODS="${METHODS:-adamw fira}" BUDGET_S=$(left) bash scripts/h100_pretrain_cublas.sh
