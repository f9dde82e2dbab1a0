#!/bin/bash
# Side by side on one H100: PyTorch anchors (galore-torch, torch AdamW fused, torch.linalg.svd) and
# Ember's step and refresh times on the same shapes.
set -u
B=.device/ember-bench
chmod +x $B
{
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__)"
} > $OUT/env.txt 2>&1
export PYTHONUNBUFFERED=1
python3 .device/torch_anchor.py .device/whl $OUT/anchor_tf32off.json > $OUT/anchor.log 2>&1
TF32=1 python3 .device/torch_anchor.py .device/whl $OUT/anchor_tf32on.json >> $OUT/anchor.log 2>&1
$B step --device cuda --optimizer adamw --iters 30 --refreshes 0 > $OUT/ember_step.jsonl 2>> $OUT/ember.log
$B step --device cuda --optimizer galore --iters 30 --refreshes 0 >> $OUT/ember_step.jsonl 2>> $OUT/ember.log
$B step --device cuda --optimizer galore --ranks 512 --iters 3 --refreshes 2 >> $OUT/ember_step.jsonl 2>> $OUT/ember.log
cat $OUT/ember_step.jsonl
tail -5 $OUT/anchor.log
