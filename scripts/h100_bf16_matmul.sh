#!/bin/bash
# One device call (carry [".device"] after `FEATURES=cuda-fusion bash scripts/build_for_gpu.sh`):
# the projection matmuls of GaLore at LLaMA-7B shapes in bf16 and in f32/TF32, burn's (through
# `ember-bench step`, fields down/up_ms and down/up_bf16_ms) beside PyTorch's
# (scripts/anchors/matmul_anchor.py) — the data for issue 18 item 1's choice of precision.
# Raw output: $OUT/step.jsonl, $OUT/torch.jsonl, $OUT/summary.txt.
JSONL=unused.jsonl
. scripts/lib_device.sh
python3 scripts/anchors/matmul_anchor.py 4096x11008,4096x4096 512,1024 > $OUT/torch.jsonl 2> /tmp/torch.err
echo "torch: exit $?" | tee $OUT/summary.txt
for r in 512 1024; do
  l=$(left); [ $l -lt 40 ] && break
  timeout $((l - 15)) $B step --device cuda --optimizer galore --shapes 4096x11008,4096x4096 --ranks $r --iters 20 --refreshes 0 \
    >> $OUT/step.jsonl 2>> /tmp/step.err
  echo "step cuda galore r$r: exit $?" | tee -a $OUT/summary.txt
done
cat $OUT/torch.jsonl $OUT/step.jsonl
