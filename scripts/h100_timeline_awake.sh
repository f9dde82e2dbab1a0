#!/bin/bash
# One device call (carry [".device"]): is the time before a step's first cuBLAS window CubeCL's
# device thread waking up? (cubecl-common 0.10: an idle device thread spins, yields, then
# sleeps in 150 µs steps; a task queued meanwhile waits for the sleep to end.) The timeline of
# scripts/h100_timeline_host.sh with a probe task queued at the step's start ("device thread:
# first task"), then the same steps with EMBER_KEEP_AWAKE=1 (a thread queues an empty task every
# 50 µs, so that the device thread never sleeps; diagnosis only), GaLore r512 f32 and bf16 at
# 4096×11008 and 2048², and AdamW f32 at 4096×11008.
PACKED=1
. scripts/lib_device.sh
for awake in 0 1; do
  for dt in f32 bf16; do
    EMBER_KEEP_AWAKE=$awake EMBER_CUBLAS_TIMELINE=1 timeout 60 $B step --device cuda --optimizer galore \
      --shapes 4096x11008,2048x2048 --ranks 512 --iters 30 --refreshes 0 --weights-dtype $dt \
      > $OUT/awake${awake}_galore_$dt.jsonl 2> $OUT/awake${awake}_galore_$dt.err
    echo "awake=$awake galore $dt: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  done
  EMBER_KEEP_AWAKE=$awake timeout 60 $B step --device cuda --optimizer adamw --shapes 4096x11008,2048x5461 \
    --iters 30 --refreshes 0 > $OUT/awake${awake}_adamw_f32.jsonl 2> $OUT/awake${awake}_adamw_f32.err
  echo "awake=$awake adamw f32: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
done
python3 - $OUT <<'PY' | tee -a $OUT/summary.txt
import glob, json, os, sys
d = sys.argv[1]
for path in sorted(glob.glob(os.path.join(d, "awake*.jsonl"))):
    for line in open(path):
        r = json.loads(line)
        print(os.path.basename(path), r["m"], r["n"], r.get("rank"),
              {k: round(r[k], 3) for k in ("step_ms", "step_on_device_ms", "step_unchecked_ms", "engine_ms")})
for path in sorted(glob.glob(os.path.join(d, "awake*_galore_*.err"))):
    for line in open(path):
        if line.startswith('{"timeline": "engine"'):
            t = json.loads(line)
            first = [h for h in t["host"] if h[0].startswith("device thread: first")]
            q = [p for p in t["points"] if p[0] == "Queued"]
            print(os.path.basename(path), t["m"], t["n"], "wall", t["wall_ms"], "first task", first, "window 1 queued", q[:1])
PY
pack
cat $OUT/summary.txt
