#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build: the model's element-wise
# layers as single ops (RMSNorm, rotary embedding, SwiGLU: one kernel each way) and cuBLAS windows
# that no longer block the host once their GEMMs ran (issues 13, 18). Most important first:
#  1. kernel checks on CUDA (the new `rms_norm`, `swiglu`, `rotary` checks, f32 and bf16);
#  2. LLaMA-1B bf16 4×256, 8 timed steps with phase traces: AdamW (bf16 state) and GaLore-8bit;
#     both again with EMBER_CUBLAS_ASYNC=off (every window blocking: the layers' effect alone)
#     and with EMBER_CUBLAS=off; layer-wise GaLore-8bit;
#  3. HF transformers' LLaMA-1B (bf16, 4×256): galore-torch's GaLoreAdamW8bit, GaLoreAdamW, torch's
#     fused AdamW (scripts/anchors/hf_anchor.py), the same call's PyTorch side;
#  4. pretraining (scripts/h100_pretrain_cublas.sh's run, f32): AdamW, GaLore, Fira, FRUGAL, DCT.
# Raw output: $OUT/res.tgz and summary.txt.
JSONL=measure.jsonl
PACKED=1
. scripts/lib_device.sh
kernel_checks
grep -E '^[a-z]* *(rms_norm|swiglu|rotary)' $OUT/kernels_cuda.log | tee -a $OUT/summary.txt
pack
M="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
AW="--optimizer adamw --state-dtype bf16"
G8="--optimizer galore --state-dtype int8"
run adamw 90 $M $AW --stage-trace $OUT/trace_adamw.jsonl
run g8 120 $M $G8 --stage-trace $OUT/trace_g8.jsonl
pack
EMBER_CUBLAS_ASYNC=off run adamw_blocking 90 $M $AW --stage-trace $OUT/trace_adamw_blocking.jsonl
EMBER_CUBLAS_ASYNC=off run g8_blocking 120 $M $G8 --stage-trace $OUT/trace_g8_blocking.jsonl
EMBER_CUBLAS=off run adamw_burn 90 $M $AW --stage-trace $OUT/trace_adamw_burn.jsonl
run g8_lw 90 $M $G8 --layerwise --exact-pools
pack
l=$(left)
if [ $l -gt 300 ]; then
  DTYPE=bf16 PYTHONUNBUFFERED=1 timeout 150 python3 .device/hf_anchor.py .device/whl 1b 4 256 512 \
    $OUT/anchor_1b_bf16_4x256.jsonl galore8bit,galore,adamw > $OUT/anchor_1b.log 2>&1
  echo "anchor 1b 4x256: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  cat $OUT/anchor_1b_bf16_4x256.jsonl 2>/dev/null | cut -c1-400 | tee -a $OUT/summary.txt
fi
pack
if [ $(left) -gt 120 ]; then
  OUT=$REAL_OUT WARMUP=1 METHODS="adamw galore fira frugal dct" BUDGET_S=$(left) bash scripts/h100_pretrain_cublas.sh
  OUT=/tmp/res
fi
cat $OUT/summary.txt
