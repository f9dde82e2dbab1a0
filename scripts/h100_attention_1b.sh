#!/bin/bash
# One device call (carry [".device"]: the ember-bench build of scripts/build_for_gpu.sh with
# cuda-fusion, galore-torch's and bitsandbytes' wheels, the anchors): causal attention with its
# recomputing backward (issue 13) on CUDA and LLaMA-1B beside PyTorch, most important first:
#  1. kernel checks on CUDA (the attention op's output and gradients against burn's autodiff of
#     the composition among them);
#  2. `measure --model 1b`, bf16 weights, GaLore-8bit r512, ordinary step: 4×256 tokens and
#     1×1024 (the attention matrices grow with the square of the sequence);
#  3. HF transformers' LLaMA-1B (bf16) with galore-torch's GaLoreAdamW8bit on the same batches
#     (scripts/anchors/hf_anchor.py): peak allocated / reserved and ms per step.
# Raw output: $OUT/res.tgz and summary.txt.
JSONL=measure.jsonl
PACKED=1
. scripts/lib_device.sh
kernel_checks
grep 'causal_attention' $OUT/kernels_cuda.log | tee -a $OUT/summary.txt
pack
M1B="--device cuda --model 1b --rank 512 --steps 4 --warmup 1 --weights-dtype bf16 --optimizer galore --state-dtype int8"
run galore8_1b_4x256 150 $M1B --batch 4 --seq 256
pack
run galore8_1b_1x1024 120 $M1B --batch 1 --seq 1024
pack
for bs in "4 256" "1 1024"; do
  l=$(left); [ $l -lt 90 ] && break
  set -- $bs
  DTYPE=bf16 PYTHONUNBUFFERED=1 timeout $((l - 30 < 200 ? l - 30 : 200)) python3 .device/hf_anchor.py .device/whl 1b $1 $2 512 \
    $OUT/anchor_1b_bf16_${1}x$2.jsonl galore8bit > $OUT/anchor_1b_${1}x$2.log 2>&1
  echo "anchor 1b ${1}x$2: exit $? at $(( $(date +%s) - T0 )) s; $(tail -1 $OUT/anchor_1b_bf16_${1}x$2.jsonl 2>/dev/null)" | tee -a $OUT/summary.txt
  pack
done
cat $OUT/summary.txt
