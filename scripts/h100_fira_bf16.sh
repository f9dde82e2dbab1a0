#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build of ember-bench
# (cuda-fusion) and the pretraining example (see scripts/build_for_gpu.sh and
# scripts/build_pretrain_for_gpu.sh; gzip both binaries): Fira's fused residual
# (issue 18: φ and the limiter in one kernel each, `up(R)` kept on one-block matrices),
# bf16 steps beside galore-torch and torch's fused AdamW on bf16 parameters, then the
# pretraining runs. Most important first:
#  1. kernel checks on CUDA (every fused op against the portable path; Fira in blocks and in one);
#  2. `ember-bench step` f32 at the pretraining model's shapes (r128) and the table's (r512) for
#     Fira, GaLore, AdamW;
#  3. `ember-bench step --weights-dtype bf16` GaLore r512 and AdamW, and the PyTorch anchor on
#     bf16 parameters (DTYPE=bf16, RANKS=512, TF32 on for f32 products);
#  4. METHODS (default "adamw fira galore") of scripts/h100_pretrain_cublas.sh after its warm-up run.
# Raw output: $OUT/res.tgz and summary.txt.
JSONL=unused.jsonl
PACKED=1
. scripts/lib_device.sh
timeout 150 $B kernels --device cuda > $OUT/kernels_cuda.log 2>&1
echo "kernels cuda: exit $? at $(( $(date +%s) - T0 )) s; $(tail -1 $OUT/kernels_cuda.log)" | tee -a $OUT/summary.txt
grep -v '^ok ' $OUT/kernels_cuda.log | head -20
pack
for o in fira galore adamw; do
  timeout 90 $B step --device cuda --optimizer $o --shapes 512x512,512x1376,1376x512 --ranks 128 \
    --iters 20 --refreshes 0 > $OUT/step_small_$o.jsonl 2>> $OUT/step.err
  echo "step small $o: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
done
timeout 120 $B step --device cuda --optimizer fira --ranks 512 --iters 20 --refreshes 0 \
  > $OUT/step_fira.jsonl 2>> $OUT/step.err
echo "step fira r512: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
pack
for o in galore adamw; do
  timeout 120 $B step --device cuda --optimizer $o --ranks 512 --iters 20 --refreshes 0 \
    --weights-dtype bf16 > $OUT/step_bf16_$o.jsonl 2>> $OUT/step.err
  echo "step bf16 $o: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
done
if [ $(left) -gt 200 ]; then
  DTYPE=bf16 RANKS=512 TF32=1 PYTHONUNBUFFERED=1 timeout 120 python3 .device/torch_anchor.py .device/whl \
    $OUT/anchor_bf16.json > $OUT/anchor_bf16.log 2>&1
  echo "anchor bf16: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
fi
pack
OUT=$REAL_OUT WARMUP=1 METHODS="${METHODS:-adamw fira galore}" BUDGET_S=$(left) bash scripts/h100_pretrain_cublas.sh
