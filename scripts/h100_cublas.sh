#!/bin/bash
# One device call (carry [".device"] after `FEATURES=cuda-fusion bash scripts/build_for_gpu.sh`):
# `ember-bench cublas` — GaLore's projection matmuls through cuBLAS on burn's own buffers (device
# pointers from CubeCL, each call bracketed by synchronizations) beside burn's matmul, f32/TF32
# and bf16, with each result's relative error against burn's (issue 18 item 1). (That was the
# command's first version; it now times the optimizer's own product, `projection_matmul`, in the
# ordering EMBER_CUBLAS selects — scripts/h100_cublas_engine.sh.) Raw output:
# $OUT/cublas.jsonl, $OUT/summary.txt.
JSONL=unused.jsonl
. scripts/lib_device.sh
timeout $(( $(left) - 10 )) $B cublas --shapes 4096x11008,4096x4096 --ranks 512,1024 --iters 20 > $OUT/cublas.jsonl 2> $OUT/cublas.err
echo "cublas: exit $?" | tee $OUT/summary.txt
tail -5 $OUT/cublas.err
cat $OUT/cublas.jsonl
