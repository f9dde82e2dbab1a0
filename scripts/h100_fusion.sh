#!/bin/bash
# One device call (carry [".device"] after `FEATURES=cuda-fusion bash scripts/build_for_gpu.sh`),
# most important first:
#  1. LLaMA-7B, Q-GaLore with INT8 weights, layer-wise (issue 14's ≤ 15 GiB), each block quantized
#     as it is built, with exact-size pools and with burn's default pools;
#  2. the kernel checks on `--device cuda-fusion` (burn's `Fusion<CubeBackend<Cuda>>`: Ember's ops
#     as custom operations of the fusion stream) — issue 18 item 3;
#  3. the first step of layer-wise LLaMA-7B GaLore-8bit (device projector: 13-step Newton–Schulz
#     schedule, random-sign start) against 77.7 s / 58.2 s of the earlier calls;
#  4. LLaMA-1B f32 GaLore train step and single-matrix steps on `cuda` and on `cuda-fusion`.
# As in scripts/h100_memory.sh: one concurrent step of each configuration first (kernel
# compilation), then the measurements one at a time. Raw output: $OUT/fusion.jsonl, $OUT/*.txt.
# ONLY_MEMORY=1: only the layer-wise memory runs (7B Q-GaLore both pools, 1B and 7B GaLore-8bit
# with exact pools).
JSONL=fusion.jsonl
. scripts/lib_device.sh
Q7="--device cuda --model 7b --optimizer qgalore --rank 1024 --weights-dtype bf16 --state-dtype int8 --int8-weights --layerwise --batch 1 --seq 256"
L7="--device cuda --model 7b --optimizer galore --rank 1024 --weights-dtype bf16 --state-dtype int8 --layerwise --batch 1 --seq 256"
G1="--model 1b --optimizer galore --rank 512 --batch 4 --seq 256"
L1="--device cuda --model 1b --optimizer galore --rank 512 --weights-dtype bf16 --state-dtype int8 --layerwise --batch 4 --seq 256 --exact-pools"
if [ -n "${ONLY_MEMORY:-}" ]; then
  for a in "$Q7 --exact-pools" "$L1" "$L7 --exact-pools"; do
    timeout ${PASS1_S:-200} $B measure --json --quiet --steps 1 --warmup 0 $a > /dev/null 2>&1 &
  done
else
  for a in "$Q7 --exact-pools" "$L7" "--device cuda $G1" "--device cuda-fusion $G1"; do
    timeout ${PASS1_S:-200} $B measure --json --quiet --steps 1 --warmup 0 $a > /dev/null 2>&1 &
  done
  timeout 200 $B kernels --device cuda-fusion > $OUT/kernels_fusion.txt 2>&1 &
fi
wait
echo "pass 1 done at $(( $(date +%s) - T0 )) s" | tee $OUT/summary.txt
[ -f $OUT/kernels_fusion.txt ] && tail -3 $OUT/kernels_fusion.txt | tee -a $OUT/summary.txt
run 7b-qgalore-int8-lw-exact 200 $Q7 --exact-pools --steps 3 --warmup 1
run 7b-qgalore-int8-lw 150 $Q7 --steps 3 --warmup 1
if [ -n "${ONLY_MEMORY:-}" ]; then
  run 1b-galore8-lw-exact 90 $L1 --steps 5 --warmup 2
  run 7b-galore8-lw-exact 120 $L7 --exact-pools --steps 3 --warmup 1
  tar -C /tmp -czf $OUT/raw.tgz $(cd /tmp && ls *.json *.err 2>/dev/null)
  cat $OUT/summary.txt
  exit 0
fi
run 7b-galore8-lw 120 $L7 --steps 3 --warmup 1
run 1b-galore-f32-cuda 60 --device cuda $G1 --steps 5 --warmup 2
run 1b-galore-f32-fusion 60 --device cuda-fusion $G1 --steps 5 --warmup 2
for d in cuda cuda-fusion; do
  for o in galore adamw; do
    l=$(left); [ $l -lt 40 ] && break
    timeout $((l - 15)) $B step --device $d --optimizer $o --shapes 4096x11008 --ranks 512 --iters 20 --refreshes 0 \
      >> $OUT/step.jsonl 2>> /tmp/step.err
    echo "step $d $o: exit $?" | tee -a $OUT/summary.txt
  done
done
tar -C /tmp -czf $OUT/raw.tgz $(cd /tmp && ls *.json *.err 2>/dev/null)
cat $OUT/summary.txt
