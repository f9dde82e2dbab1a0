#!/bin/bash
# Issue 5 on one GPU, in one call (run on the GPU machine with carry [".device"], after
# scripts/build_for_gpu.sh staged .device/), most important first so that a call cut at its time
# limit still returns the rest:
#  1. the kernel checks on CUDA (every fused kernel against the portable path);
#  2. Ember's AdamW step (the whole Optimizer::step, the engine alone and the NaN/Inf check alone);
#  3. the PyTorch anchors (galore-torch GaLoreAdamW, torch AdamW fused, torch.linalg.svd), with
#     TF32 on: burn's autotuned f32 matmul runs on TF32 tensor cores, which each Ember line
#     confirms with the sampled error of its projections (`matmul_precision`); ANCHORS="on off"
#     adds TF32 off;
#  4. Ember's GaLore step at rank 512 on every shape, then Fira and FRUGAL at 4096x11008 r512,
#     then GaLore at ranks 128 and 1024.
set -u
B=.device/ember-bench
chmod +x $B
{
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__)"
} > $OUT/env.txt 2>&1
$B kernels --device cuda > $OUT/kernels_cuda.log 2>&1; echo "kernels exit $?" >> $OUT/kernels_cuda.log
grep -v '^ok ' $OUT/kernels_cuda.log | head -20
S=$OUT/ember_step.jsonl
$B step --device cuda --optimizer adamw --iters 20 --refreshes 0 >> $S 2>> $OUT/ember.log
export PYTHONUNBUFFERED=1
for a in ${ANCHORS:-on}; do
  if [ $a = on ]; then export TF32=1; else unset TF32; fi
  python3 .device/torch_anchor.py .device/whl $OUT/anchor_tf32$a.json >> $OUT/anchor.log 2>&1
done
$B step --device cuda --optimizer galore --ranks 512 --iters 20 --refreshes 0 >> $S 2>> $OUT/ember.log
for o in fira frugal; do
  $B step --device cuda --optimizer $o --shapes 4096x11008 --ranks 512 --iters 20 --refreshes 0 >> $S 2>> $OUT/ember.log
done
$B step --device cuda --optimizer galore --ranks 128,1024 --iters 20 --refreshes 0 >> $S 2>> $OUT/ember.log
python3 .device/step_summary.py $OUT/ember_step.jsonl
tail -3 $OUT/ember.log
