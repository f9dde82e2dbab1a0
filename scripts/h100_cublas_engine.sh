#!/bin/bash
# One device call (carry [".device"] after `FEATURES=cuda-fusion bash scripts/build_for_gpu.sh`):
# the projection products of the optimizer on cuBLAS (issue 18 item 1, `ember_kernels::cublas`),
# most important first:
#  1. kernel checks on CUDA (cuBLAS's product against burn's matmul for every operand layout, and
#     every fused op against the portable path), ordering by device flags (the default);
#  2. `ember-bench cublas`: the products alone, one call and queued, flags and host-sync ordering;
#  3. `ember-bench step` GaLore r512 / AdamW, every shape, cuBLAS off (burn's matmul) and on;
#  4. the layer-wise LLaMA-7B GaLore-8bit step (issue 14's run) with cuBLAS;
#  5. kernel checks under burn's fusion backend; the PyTorch anchor (galore-torch, torch AdamW,
#     TF32) for the side-by-side ratios.
# Raw output: $OUT/res.tgz (kernels_*.log, cublas_*.jsonl, step_*.jsonl, measure.jsonl,
# anchor_tf32.json; packed after every stage: a call returns at most 8 files) and summary.txt.
JSONL=measure.jsonl
PACKED=1
. scripts/lib_device.sh
timeout 100 $B kernels --device cuda > $OUT/kernels_cuda.log 2>&1
echo "kernels cuda: exit $? at $(( $(date +%s) - T0 )) s; $(tail -1 $OUT/kernels_cuda.log)" | tee -a $OUT/summary.txt
grep -v '^ok ' $OUT/kernels_cuda.log | head -20
pack
for mode in ${CUBLAS_MODES:-flags sync}; do
  EMBER_CUBLAS=$mode timeout 90 $B cublas --shapes 4096x11008 --ranks 512,1024 --iters 10 \
    > $OUT/cublas_$mode.jsonl 2> $OUT/cublas_$mode.err
  echo "cublas $mode: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
done
pack
for mode in ${STEP_MODES:-off flags sync}; do
  EMBER_CUBLAS=$mode timeout 100 $B step --device cuda --optimizer galore --ranks 512 --iters 20 \
    --refreshes 0 >> $OUT/step_galore_$mode.jsonl 2>> $OUT/step.err
  echo "step galore $mode: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
done
L7="--device cuda --model 7b --optimizer galore --rank 1024 --weights-dtype bf16 --state-dtype int8 --layerwise --batch 1 --seq 256 --exact-pools"
pack
run 7b-galore8-lw-cublas 150 $L7 --steps 3 --warmup 1
EMBER_CUBLAS=off; export EMBER_CUBLAS
run 7b-galore8-lw-burn 150 $L7 --steps 3 --warmup 1
unset EMBER_CUBLAS
timeout 60 $B step --device cuda --optimizer adamw --iters 20 --refreshes 0 >> $OUT/step_adamw.jsonl 2>> $OUT/step.err
echo "step adamw: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
pack
timeout 150 $B kernels --device cuda-fusion > $OUT/kernels_fusion.log 2>&1
echo "kernels fusion: exit $? at $(( $(date +%s) - T0 )) s; $(tail -1 $OUT/kernels_fusion.log)" | tee -a $OUT/summary.txt
grep -v '^ok ' $OUT/kernels_fusion.log | head -20
pack
if [ $(left) -gt 100 ]; then
  TF32=1 PYTHONUNBUFFERED=1 timeout $(( $(left) - 15 )) python3 .device/torch_anchor.py .device/whl $OUT/anchor_tf32.json > $OUT/anchor.log 2>&1
  echo "anchor: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
fi
tar -C /tmp -czf $OUT/raw.tgz $(cd /tmp && ls *.json *.err 2>/dev/null)
pack
cat $OUT/summary.txt
