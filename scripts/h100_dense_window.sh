#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build: cuBLAS ordering windows
# run on CubeCL's device thread in one round trip, a linear layer's two backward products in one
# window (issues 13, 18). Most important first:
#  1. kernel checks on CUDA (the `dense` checks run the paired backward products);
#  2. LLaMA-1B bf16 4×256, 8 timed steps with phase traces: AdamW (bf16 state) and GaLore-8bit,
#     each with cuBLAS and with EMBER_CUBLAS=off (burn's matmul: the same-call baseline);
#  3. pretraining (scripts/h100_pretrain_cublas.sh's run, f32): AdamW and GaLore.
# Raw output: $OUT/res.tgz and summary.txt.
JSONL=measure.jsonl
PACKED=1
. scripts/lib_device.sh
kernel_checks
grep '^[a-z]* *dense' $OUT/kernels_cuda.log | tee -a $OUT/summary.txt
pack
M="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
AW="--optimizer adamw --state-dtype bf16"
G8="--optimizer galore --state-dtype int8"
run adamw_cublas 90 $M $AW --stage-trace $OUT/trace_adamw_cublas.jsonl
run g8_cublas 120 $M $G8 --stage-trace $OUT/trace_g8_cublas.jsonl
pack
export EMBER_CUBLAS=off
run adamw_burn 90 $M $AW --stage-trace $OUT/trace_adamw_burn.jsonl
run g8_burn 120 $M $G8 --stage-trace $OUT/trace_g8_burn.jsonl
unset EMBER_CUBLAS
pack
if [ $(left) -gt 150 ]; then
  OUT=$REAL_OUT WARMUP=1 METHODS="adamw galore" BUDGET_S=$(left) bash scripts/h100_pretrain_cublas.sh
  OUT=/tmp/res
fi
cat $OUT/summary.txt
