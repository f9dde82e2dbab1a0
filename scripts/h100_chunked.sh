#!/bin/bash
# One device call (carry [".device"] after `FEATURES=cuda-fusion bash scripts/build_for_gpu.sh`):
# layer-wise memory after row-chunked updates (crates/core/src/chunked.rs) and in-place steps,
# with a stage trace (`measure --stage-trace`: burn's pools and NVML after each stage's backward
# and update), most important first:
#  1. LLaMA-7B Q-GaLore r1024, INT8 weights, 8-bit state, layer-wise, 1×256, exact pools (≤ 15 GiB);
#  2. LLaMA-7B GaLore-8bit r1024, layer-wise, 1×256, exact pools (≤ 22 GiB);
#  3. LLaMA-1B layer-wise GaLore-8bit and AdamW-bf16 (4×256), and ordinary bf16 AdamW, GaLore,
#     GaLore-8bit (issue 13's 1B row);
#  4. single-matrix step times at 4096×11008 (f32: stepped whole) against the earlier call;
#  and, during the compile pass, the kernel checks under burn's fusion backend.
# Kernels are compiled first by one concurrent step of each configuration. Raw output:
# $OUT/chunked.jsonl, $OUT/trace_*.jsonl, $OUT/step.jsonl, $OUT/summary.txt.
JSONL=chunked.jsonl
. scripts/lib_device.sh
Q7="--device cuda --model 7b --optimizer qgalore --rank 1024 --weights-dtype bf16 --state-dtype int8 --int8-weights --layerwise --batch 1 --seq 256 --exact-pools"
L7="--device cuda --model 7b --optimizer galore --rank 1024 --weights-dtype bf16 --state-dtype int8 --layerwise --batch 1 --seq 256 --exact-pools"
L1="--device cuda --model 1b --rank 512 --weights-dtype bf16 --layerwise --batch 4 --seq 256 --exact-pools"
O1="--device cuda --model 1b --rank 512 --weights-dtype bf16 --batch 4 --seq 256"
for a in "$Q7" "$L7" "$L1 --optimizer galore --state-dtype int8" "$O1 --optimizer galore --state-dtype int8"; do
  timeout ${PASS1_S:-200} $B measure --json --quiet --steps 1 --warmup 0 $a > /dev/null 2>&1 &
done
timeout 200 $B kernels --device cuda-fusion > $OUT/kernels_fusion.txt 2>&1 &
wait
tail -3 $OUT/kernels_fusion.txt
echo "pass 1 done at $(( $(date +%s) - T0 )) s" | tee $OUT/summary.txt
run 7b-qgalore-int8-lw 150 $Q7 --steps 3 --warmup 1 --stage-trace $OUT/trace_7b_qgalore.jsonl
run 7b-galore8-lw 120 $L7 --steps 3 --warmup 1 --stage-trace $OUT/trace_7b_galore8.jsonl
run 1b-galore8-lw 90 $L1 --optimizer galore --state-dtype int8 --steps 5 --warmup 2 --stage-trace $OUT/trace_1b_galore8.jsonl
run 1b-adamw-lw 90 $L1 --optimizer adamw --steps 5 --warmup 2
run 1b-bf16-adamw 90 $O1 --optimizer adamw --steps 5 --warmup 2
run 1b-bf16-galore 90 $O1 --optimizer galore --steps 5 --warmup 2
run 1b-bf16-galore8 90 $O1 --optimizer galore --state-dtype int8 --steps 5 --warmup 2
for o in galore adamw; do
  l=$(left); [ $l -lt 40 ] && break
  timeout $((l - 15)) $B step --device cuda --optimizer $o --shapes 4096x11008 --ranks 512 --iters 20 --refreshes 0 \
    >> $OUT/step.jsonl 2>> /tmp/step.err
  echo "step cuda $o: exit $?" | tee -a $OUT/summary.txt
done
tar -C /tmp -czf $OUT/raw.tgz $(cd /tmp && ls *.json *.err 2>/dev/null)
cat $OUT/summary.txt
