#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build (scripts/build_for_gpu.sh
# with FEATURES=cuda-fusion, and the pretraining binary gzipped in .device4): the linear layers'
# products on cuBLAS (`ember_kernels::dense`: forward, dX and dW as cuBLAS GEMMs; issues 13, 18).
# Most important first:
#  1. kernel checks on CUDA, bare and under burn's fusion (the `dense` checks: Y, dX, dW against
#     burn's matmul under autodiff, f32 and bf16);
#  2. `measure --model 1b` (4×256, bf16 weights): GaLore-8bit r512, then the same binary with
#     EMBER_CUBLAS=off (burn's matmul everywhere: the before of this change in the same call),
#     AdamW with bf16 state, layer-wise GaLore-8bit;
#  3. HF transformers' LLaMA-1B (bf16, 4×256) with galore-torch's GaLoreAdamW8bit, GaLoreAdamW
#     and torch's fused AdamW (scripts/anchors/hf_anchor.py);
#  4. pretraining (scripts/h100_pretrain_cublas.sh's run, f32): AdamW and GaLore.
# Raw output: $OUT/res.tgz and summary.txt.
JSONL=measure.jsonl
PACKED=1
. scripts/lib_device.sh
kernel_checks
grep '^[a-z]* *dense' $OUT/kernels_cuda.log | tee -a $OUT/summary.txt
timeout 100 $B kernels --device cuda-fusion > $OUT/kernels_fusion.log 2>&1
echo "kernels cuda-fusion: exit $? at $(( $(date +%s) - T0 )) s; $(tail -1 $OUT/kernels_fusion.log)" | tee -a $OUT/summary.txt
grep -v '^ok ' $OUT/kernels_fusion.log | grep -v '^bf16 step' | head -10 | tee -a $OUT/summary.txt
pack
M1B="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 4 --warmup 1 --weights-dtype bf16"
run galore8_1b 120 $M1B --optimizer galore --state-dtype int8
pack
export EMBER_CUBLAS=off
run galore8_1b_burn_matmul 150 $M1B --optimizer galore --state-dtype int8
unset EMBER_CUBLAS
pack
run adamw_bf16_1b 90 $M1B --optimizer adamw --state-dtype bf16
pack
run galore8_1b_lw 90 $M1B --optimizer galore --state-dtype int8 --layerwise --exact-pools
pack
l=$(left)
if [ $l -gt 60 ]; then
  DTYPE=bf16 PYTHONUNBUFFERED=1 timeout $((l - 10 < 170 ? l - 10 : 170)) python3 .device/hf_anchor.py .device/whl 1b 4 256 512 \
    $OUT/anchor_1b_bf16_4x256.jsonl galore8bit,galore,adamw > $OUT/anchor_1b.log 2>&1
  echo "anchor 1b 4x256: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  cat $OUT/anchor_1b_bf16_4x256.jsonl 2>/dev/null | tee -a $OUT/summary.txt
fi
pack
if [ $(left) -gt 120 ]; then
  OUT=$REAL_OUT WARMUP=1 METHODS="adamw galore" BUDGET_S=$(left) bash scripts/h100_pretrain_cublas.sh
  OUT=/tmp/res
fi
cat $OUT/summary.txt
