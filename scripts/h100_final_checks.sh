#!/bin/bash
# One device call (carry [".device"]) on a session's final build: the CUDA kernel checks bare and
# under burn's fusion backend (`kernels_cuda.log`, `kernels_cuda-fusion.log`); issue 13's LLaMA-1B
# bf16 step (GaLore-8bit twice, AdamW with bf16 state) beside HF transformers + galore-torch
# GaLoreAdamW in the same call; then the GPU time of one GaLore and one AdamW optimizer step at
# 4096×11008 (r512, f32) by kernel under Nsight Compute (`ncu_<optimizer>.txt`: kernels by total
# time; the machine has `ncu`, not `nsys`).
PACKED=1
. scripts/lib_device.sh
kernel_checks
timeout 150 $B kernels --device cuda-fusion > $OUT/kernels_cuda-fusion.log 2>&1
echo "kernels cuda-fusion: exit $? at $(( $(date +%s) - T0 )) s; $(grep -c '^ok ' $OUT/kernels_cuda-fusion.log) ok" | tee -a $OUT/summary.txt
grep -v '^ok ' $OUT/kernels_cuda-fusion.log | head -20 | tee -a $OUT/summary.txt
pack
M1B="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
run warmup 240 $M1B --optimizer galore --state-dtype int8
run g8_1 60 $M1B --optimizer galore --state-dtype int8
run adamw 60 $M1B --optimizer adamw --state-dtype bf16
run g8_2 60 $M1B --optimizer galore --state-dtype int8
pack
if [ $(left) -gt 200 ]; then
  DTYPE=bf16 PYTHONUNBUFFERED=1 timeout 90 python3 .device/hf_anchor.py .device/whl 1b 4 256 512 \
    $OUT/anchor_1b_bf16_4x256.jsonl galore > $OUT/anchor_1b.log 2>&1
  echo "anchor 1b 4x256: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  cut -c1-400 $OUT/anchor_1b_bf16_4x256.jsonl 2>/dev/null | tee -a $OUT/summary.txt
fi
pack
for o in galore adamw; do
  [ $(left) -lt 60 ] && break
  ARGS="step --device cuda --optimizer $o --shapes 4096x11008 --ranks 512 --iters 2 --warmup 0 --refreshes 0"
  timeout 60 $B $ARGS > /dev/null 2>&1
  timeout $(( $(left) - 20 )) /usr/local/cuda/bin/ncu --metrics gpu__time_duration.sum --csv \
    --log-file $OUT/ncu_$o.csv $B $ARGS > $OUT/ncu_step_$o.txt 2>&1
  python3 scripts/ncu_table.py $OUT/ncu_$o.csv > $OUT/ncu_$o.txt
  gzip -f $OUT/ncu_$o.csv
  head -12 $OUT/ncu_$o.txt | tee -a $OUT/summary.txt
  pack
done
cat $OUT/summary.txt
