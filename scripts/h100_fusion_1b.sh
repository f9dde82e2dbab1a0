#!/bin/bash
# One device call (carry [".device"]): LLaMA-1B (bf16, 4×256) under burn's fusion backend
# (`--device cuda-fusion`, what burn's default features give), AdamW with bf16 state and
# GaLore-8bit, with cuBLAS (default) and EMBER_CUBLAS=off; each run's stderr kept (backtraces on).
JSONL=measure.jsonl
PACKED=1
. scripts/lib_device.sh
export RUST_BACKTRACE=1
M="--device cuda-fusion --model 1b --rank 512 --batch 4 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
keep() { tail -60 /tmp/$1.err > $OUT/$1.err; }
export EMBER_CUBLAS=off
run fusion_adamw_burn 100 $M --optimizer adamw --state-dtype bf16; keep fusion_adamw_burn
unset EMBER_CUBLAS
run fusion_adamw_cublas 100 $M --optimizer adamw --state-dtype bf16; keep fusion_adamw_cublas
pack
run fusion_g8_cublas 120 $M --optimizer galore --state-dtype int8; keep fusion_g8_cublas
pack
cat $OUT/summary.txt
