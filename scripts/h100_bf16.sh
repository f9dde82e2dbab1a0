#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build (see
# scripts/h100_fira_bf16.sh): bf16 weights on the fast path (issue 18 item 1, issue 13).
# Most important first:
#  1. kernel checks on CUDA (the bf16 ops of `EmberBackend::native_dtype` against the portable
#     path; the bf16 GaLore/AdamW steps against the f32 step);
#  2. `ember-bench step --weights-dtype bf16` GaLore r512 and AdamW at the table's shapes, f32
#     GaLore/AdamW beside them (each with `step_unchecked_ms`), AdamW on bf16 weights with bf16
#     state (as torch's fused AdamW keeps it), and the PyTorch anchor on bf16 and on f32
#     parameters (TF32; same call); Fira r512 (f32);
#  3. `measure --model 1b` (4×256) bf16 weights, GaLore-8bit r512; with LAYERWISE_7B=1 the
#     layer-wise 7B GaLore-8bit r1024 run of scripts/h100_7b_layerwise.sh; then the 1B AdamW
#     (bf16 state) and GaLore r512 (f32 state).
# Raw output: $OUT/res.tgz and summary.txt.
JSONL=measure.jsonl
PACKED=1
. scripts/lib_device.sh
timeout 150 $B kernels --device cuda > $OUT/kernels_cuda.log 2>&1
echo "kernels cuda: exit $? at $(( $(date +%s) - T0 )) s; $(grep -c '^ok ' $OUT/kernels_cuda.log) ok" | tee -a $OUT/summary.txt
grep -v '^ok ' $OUT/kernels_cuda.log | head -20 | tee -a $OUT/summary.txt
pack
for o in galore adamw; do
  timeout 120 $B step --device cuda --optimizer $o --ranks 512 --iters 20 --refreshes 0 \
    --weights-dtype bf16 > $OUT/step_bf16_$o.jsonl 2>> $OUT/step.err
  echo "step bf16 $o: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  timeout 120 $B step --device cuda --optimizer $o --ranks 512 --iters 20 --refreshes 0 \
    > $OUT/step_f32_$o.jsonl 2>> $OUT/step.err
  echo "step f32 $o: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
done
timeout 120 $B step --device cuda --optimizer adamw --iters 20 --refreshes 0 --weights-dtype bf16 \
  --state-dtype bf16 > $OUT/step_bf16_adamw_bf16state.jsonl 2>> $OUT/step.err
echo "step bf16 adamw, bf16 state: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
timeout 120 $B step --device cuda --optimizer fira --ranks 512 --iters 20 --refreshes 0 \
  > $OUT/step_f32_fira.jsonl 2>> $OUT/step.err
echo "step f32 fira: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
DTYPE=bf16 RANKS=512 TF32=1 PYTHONUNBUFFERED=1 timeout 120 python3 .device/torch_anchor.py .device/whl \
  $OUT/anchor_bf16.json > $OUT/anchor_bf16.log 2>&1
echo "anchor bf16: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
SVD=0 RANKS=512 TF32=1 PYTHONUNBUFFERED=1 timeout 120 python3 .device/torch_anchor.py .device/whl \
  $OUT/anchor_tf32.json > $OUT/anchor_tf32.log 2>&1
echo "anchor f32 (TF32): exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
pack
M1B="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 4 --warmup 1 --weights-dtype bf16"
run galore8_1b 150 $M1B --optimizer galore --state-dtype int8
pack
if [ "${LAYERWISE_7B:-0}" = 1 ] && [ $(left) -gt 200 ]; then
  run 7b-galore8-lw 240 --device cuda --model 7b --optimizer galore --rank 1024 \
    --weights-dtype bf16 --state-dtype int8 --layerwise --batch 1 --seq 256 --exact-pools \
    --steps 3 --warmup 1
  pack
fi
run adamw_bf16_1b 120 $M1B --optimizer adamw --state-dtype bf16
pack
run galore_1b 120 $M1B --optimizer galore --state-dtype f32
pack
cat $OUT/summary.txt
