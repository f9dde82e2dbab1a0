#!/bin/bash
# Issue 5 on one GPU, in one call (run on the GPU machine with carry [".device"], after
# scripts/build_for_gpu.sh staged .device/):
#  1. the kernel checks on CUDA (every fused kernel against the portable path);
#  2. the PyTorch anchors (galore-torch GaLoreAdamW, torch AdamW fused, torch.linalg.svd), TF32 off and on;
#  3. Ember's optimizer step, fused and portable: AdamW and GaLore at every shape and rank, Fira and
#     FRUGAL at 4096x11008 r512 (each line: the whole Optimizer::step and the engine alone);
#  4. the projector refresh: device projector vs exact SVD (faer, host), with the captured energy.
set -u
B=.device/ember-bench
chmod +x $B
{
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__)"
} > $OUT/env.txt 2>&1
$B kernels --device cuda > $OUT/kernels_cuda.log 2>&1; echo "kernels exit $?" >> $OUT/kernels_cuda.log
grep -v '^ok ' $OUT/kernels_cuda.log | head -40
export PYTHONUNBUFFERED=1
python3 .device/torch_anchor.py .device/whl $OUT/anchor_tf32off.json > $OUT/anchor.log 2>&1
TF32=1 python3 .device/torch_anchor.py .device/whl $OUT/anchor_tf32on.json >> $OUT/anchor.log 2>&1
S=$OUT/ember_step.jsonl
if [ "${PART:-all}" != refresh ]; then
$B step --device cuda --optimizer adamw --iters 20 --refreshes 0 >> $S 2>> $OUT/ember.log
$B step --device cuda --optimizer galore --iters 20 --refreshes 0 >> $S 2>> $OUT/ember.log
$B step --device cuda --optimizer adamw --iters 20 --refreshes 0 --portable >> $S 2>> $OUT/ember.log
$B step --device cuda --optimizer galore --ranks 512 --iters 20 --refreshes 0 --portable >> $S 2>> $OUT/ember.log
for mode in "" "--portable"; do
  for o in fira frugal; do
    $B step --device cuda --optimizer $o --shapes 4096x11008 --ranks 512 --iters 20 --refreshes 0 $mode >> $S 2>> $OUT/ember.log
  done
done
# block size of the fused back-projection (default 2^23 elements)
for be in 4194304 16777216 67108864; do
  $B step --device cuda --optimizer galore --shapes 4096x11008 --ranks 512 --iters 20 --refreshes 0 --block-elements $be | sed "s/}$/,\"block_elements\":$be}/" >> $OUT/ember_blocks.jsonl 2>> $OUT/ember.log
done
fi
if [ "${PART:-all}" != steps ]; then
$B step --device cuda --optimizer galore --iters 2 --refreshes ${REFRESHES:-3} > $OUT/ember_refresh.jsonl 2>> $OUT/ember.log
fi
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def lines(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
for r in lines("ember_step.jsonl") + lines("ember_blocks.jsonl"):
    mm = f" down {r['down_ms']:.3f} up {r['up_ms']:.3f}" if r.get('down_ms') else ""
    print(f"{r['optimizer']:7} {r['kernels']:8} {r['m']}x{r['n']} r{r['rank']:<5} step {r['step_ms']:.3f} ms  engine {r['engine_ms']:.3f} ms{mm} {r.get('block_elements','')}")
for r in lines("ember_refresh.jsonl"):
    print(f"refresh {r['m']}x{r['n']} r{r['rank']}: exact {r['refresh_ms']:.1f} ms device {r['refresh_device_ms']:.1f} ms energy {r['device_energy_ratio']:.5f}")
PY
tail -3 $OUT/ember.log
