#!/bin/bash
# One device call (carry [".device"] after `FEATURES=cuda-fusion bash scripts/build_for_gpu.sh`):
# the layer-wise LLaMA-7B runs of scripts/h100_chunked.sh on burn's fusion backend
# (`--device cuda-fusion`: what `burn::backend::Cuda` is with burn's default features; Ember's
# ops are custom operations of the fusion stream), with stage traces — do the chunked in-place
# updates and the memory figures hold there too? Raw output: $OUT/fusion.jsonl, $OUT/trace_*.jsonl.
JSONL=fusion.jsonl
. scripts/lib_device.sh
Q7="--device cuda-fusion --model 7b --optimizer qgalore --rank 1024 --weights-dtype bf16 --state-dtype int8 --int8-weights --layerwise --batch 1 --seq 256 --exact-pools"
L7="--device cuda-fusion --model 7b --optimizer galore --rank 1024 --weights-dtype bf16 --state-dtype int8 --layerwise --batch 1 --seq 256 --exact-pools"
for a in "$Q7" "$L7"; do
  timeout ${PASS1_S:-200} $B measure --json --quiet --steps 1 --warmup 0 $a > /dev/null 2>&1 &
done
wait
echo "pass 1 done at $(( $(date +%s) - T0 )) s" | tee $OUT/summary.txt
run 7b-galore8-lw-fusion 150 $L7 --steps 3 --warmup 1 --stage-trace $OUT/trace_7b_galore8_fusion.jsonl
run 7b-qgalore-int8-lw-fusion 150 $Q7 --steps 3 --warmup 1 --stage-trace $OUT/trace_7b_qgalore_fusion.jsonl
tar -C /tmp -czf $OUT/raw.tgz $(cd /tmp && ls *.json *.err 2>/dev/null)
cat $OUT/summary.txt
