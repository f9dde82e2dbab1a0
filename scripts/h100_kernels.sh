#!/bin/bash
# Issue 5 on one GPU, in one call (run on the GPU machine with carry [".device"], after
# scripts/build_for_gpu.sh staged .device/):
#  1. the kernel checks on CUDA (every fused kernel against the portable path);
#  2. the PyTorch anchors (galore-torch GaLoreAdamW, torch AdamW fused, torch.linalg.svd), TF32 off and on;
#  3. Ember's optimizer step, fused and portable, AdamW and GaLore at every shape and rank;
#     Fira and FRUGAL at 4096x11008 r512; projector refresh: device projector vs exact (faer).
set -u
B=.device/ember-bench
chmod +x $B
{
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__)"
} > $OUT/env.txt 2>&1
$B kernels --device cuda > $OUT/kernels_cuda.txt 2>&1; echo "kernels exit $?" >> $OUT/kernels_cuda.txt
tail -2 $OUT/kernels_cuda.txt
export PYTHONUNBUFFERED=1
python3 .device/torch_anchor.py .device/whl $OUT/anchor_tf32off.json > $OUT/anchor.log 2>&1
TF32=1 python3 .device/torch_anchor.py .device/whl $OUT/anchor_tf32on.json >> $OUT/anchor.log 2>&1
S=$OUT/ember_step.jsonl
for mode in "" "--portable"; do
  $B step --device cuda --optimizer adamw --iters 30 --refreshes 0 $mode >> $S 2>> $OUT/ember.log
  $B step --device cuda --optimizer galore --iters 30 --refreshes 0 $mode >> $S 2>> $OUT/ember.log
  for o in fira frugal; do
    $B step --device cuda --optimizer $o --shapes 4096x11008 --ranks 512 --iters 30 --refreshes 0 $mode >> $S 2>> $OUT/ember.log
  done
done
$B step --device cuda --optimizer galore --iters 2 --refreshes 1 > $OUT/ember_refresh.jsonl 2>> $OUT/ember.log
cat $S $OUT/ember_refresh.jsonl
tail -3 $OUT/ember.log
