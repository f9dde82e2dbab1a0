#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build (see
# scripts/h100_fira_bf16.sh for the build and staging lines): the NaN/Inf check of GaLore-family
# steps on `R = down(G)` with a flag pass of eight elements per unit (issue 18), and causal
# attention whose backward recomputes the attention matrix (issue 13). Most important first:
#  1. kernel checks on CUDA (the flag pass: one NaN at the first, last, middle element and in a
#     unit's last slot; everything else as before);
#  2. `ember-bench step` GaLore r512 and AdamW, f32 and bf16 weights, AdamW with bf16 state,
#     at the table's shapes, and the PyTorch anchor on bf16 and f32 (TF32) parameters;
#  3. `measure --model 1b` (4×256, bf16 weights): GaLore-8bit r512 ordinary, then (ALL_1B=1,
#     the default) AdamW bf16 state and GaLore-8bit layer-wise (exact pools);
#  4. with PRETRAIN_METHODS (e.g. "adamw galore"): those pretraining runs of
#     scripts/h100_pretrain_cublas.sh after its warm-up run.
# Raw output: $OUT/res.tgz and summary.txt.
JSONL=measure.jsonl
PACKED=1
. scripts/lib_device.sh
kernel_checks
pack
for o in galore adamw; do
  timeout 120 $B step --device cuda --optimizer $o --ranks 512 --iters 20 --refreshes 0 \
    > $OUT/step_f32_$o.jsonl 2>> $OUT/step.err
  echo "step f32 $o: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  timeout 120 $B step --device cuda --optimizer $o --ranks 512 --iters 20 --refreshes 0 \
    --weights-dtype bf16 > $OUT/step_bf16_$o.jsonl 2>> $OUT/step.err
  echo "step bf16 $o: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
done
timeout 120 $B step --device cuda --optimizer adamw --iters 20 --refreshes 0 --weights-dtype bf16 \
  --state-dtype bf16 > $OUT/step_bf16_adamw_bf16state.jsonl 2>> $OUT/step.err
echo "step bf16 adamw, bf16 state: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
SVD=0 RANKS=512 TF32=1 PYTHONUNBUFFERED=1 timeout 120 python3 .device/torch_anchor.py .device/whl \
  $OUT/anchor_tf32.json > $OUT/anchor_tf32.log 2>&1
echo "anchor f32 (TF32): exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
DTYPE=bf16 RANKS=512 TF32=1 PYTHONUNBUFFERED=1 timeout 120 python3 .device/torch_anchor.py .device/whl \
  $OUT/anchor_bf16.json > $OUT/anchor_bf16.log 2>&1
echo "anchor bf16: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
pack
M1B="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 4 --warmup 1 --weights-dtype bf16"
run galore8_1b 150 $M1B --optimizer galore --state-dtype int8
pack
if [ "${ALL_1B:-1}" = 1 ]; then
  run adamw_bf16_1b 120 $M1B --optimizer adamw --state-dtype bf16
  pack
  run galore8_1b_lw 120 $M1B --optimizer galore --state-dtype int8 --layerwise --exact-pools
  pack
fi
if [ -n "${PRETRAIN_METHODS:-}" ]; then
  OUT=$REAL_OUT WARMUP=1 METHODS="$PRETRAIN_METHODS" BUDGET_S=$(left) bash scripts/h100_pretrain_cublas.sh
fi
cat $OUT/summary.txt
