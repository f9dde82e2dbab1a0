#!/bin/bash
# One device call (carry [".device"] after `FEATURES=cuda-fusion bash scripts/build_for_gpu.sh`):
# the projection matmuls of GaLore at LLaMA-7B shapes in bf16 and in f32/TF32, burn's beside
# PyTorch's (scripts/anchors/matmul_anchor.py) — the data for issue 18 item 1's choice of
# precision. The recorded call (docs/results/h100/bf16_matmul_2026-11-24/step.jsonl) took burn's
# side from `ember-bench step` fields since removed; burn's column of `ember-bench cublas` is the
# same measurement (scripts/h100_cublas.sh: within 6% of it). Raw output: $OUT/torch.jsonl,
# $OUT/cublas.jsonl, $OUT/summary.txt.
JSONL=unused.jsonl
. scripts/lib_device.sh
python3 scripts/anchors/matmul_anchor.py 4096x11008,4096x4096 512,1024 > $OUT/torch.jsonl 2> /tmp/torch.err
echo "torch: exit $?" | tee $OUT/summary.txt
timeout $(( $(left) - 10 )) $B cublas --shapes 4096x11008,4096x4096 --ranks 512,1024 --iters 20 > $OUT/cublas.jsonl 2>> /tmp/cublas.err
echo "cublas (burn's side): exit $?" | tee -a $OUT/summary.txt
cat $OUT/torch.jsonl $OUT/cublas.jsonl
