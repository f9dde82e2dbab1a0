#!/bin/bash
# The second H100 call of issue 5 (the first, h100_kernels.sh PART=steps, ran the kernel checks,
# the PyTorch anchors and the fused steps, and ran out of its 10 minutes): the remaining fused
# step, the portable path at 4096x11008 and 2048x2048, Fira and FRUGAL, and the refresh at r512.
set -u
B=.device/ember-bench
chmod +x $B
S=$OUT/ember_step.jsonl
$B step --device cuda --optimizer galore --shapes 4096x11008 --ranks 1024 --iters 20 --refreshes 0 >> $S 2>> $OUT/ember.log
$B step --device cuda --optimizer adamw --shapes 4096x11008,2048x2048 --iters 20 --refreshes 0 --portable >> $S 2>> $OUT/ember.log
$B step --device cuda --optimizer galore --shapes 4096x11008,2048x2048 --ranks 512 --iters 20 --refreshes 0 --portable >> $S 2>> $OUT/ember.log
for mode in "" "--portable"; do
  for o in fira frugal; do
    $B step --device cuda --optimizer $o --shapes 4096x11008 --ranks 512 --iters 20 --refreshes 0 $mode >> $S 2>> $OUT/ember.log
  done
done
$B step --device cuda --optimizer galore --ranks 512 --iters 2 --refreshes 2 > $OUT/ember_refresh.jsonl 2>> $OUT/ember.log
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def lines(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
for r in lines("ember_step.jsonl"):
    mm = f" down {r['down_ms']:.3f} up {r['up_ms']:.3f}" if r.get('down_ms') else ""
    print(f"{r['optimizer']:7} {r['kernels']:8} {r['m']}x{r['n']} r{r['rank']:<5} step {r['step_ms']:.3f} ms  engine {r['engine_ms']:.3f} ms{mm}")
for r in lines("ember_refresh.jsonl"):
    print(f"refresh {r['m']}x{r['n']} r{r['rank']}: exact {r['refresh_ms']:.1f} ms device {r['refresh_device_ms']:.1f} ms energy {r['device_energy_ratio']:.5f}")
PY
tail -3 $OUT/ember.log
