#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18, ≤ 0.6× at 4096×11008 r512): what is
# left of the f32 GaLore step there, measured on the current build.
#  1. cuBLASLt's candidates timed (EMBER_CUBLASLT=tune) for every GEMM signature of the f32 GaLore
#     step at 4096×11008 and 4096² (r128/512/1024) — the update GEMM now on f16 operands into an
#     f32 W, a signature the timing of call 1 (2026-11-25, third session) never saw;
#  2. three rounds at 4096×11008 r512 of: the default, EMBER_SYNC=device-thread (the step's
#     synchronization on CubeCL's device thread), EMBER_KEEP_AWAKE=1 (a thread that keeps it from
#     sleeping), EMBER_CUBLASLT=tune — medians of 60, each with the last step's timeline.
PACKED=1
. scripts/lib_device.sh
mkdir -p $OUT/x
EMBER_CUBLASLT=tune timeout 120 $B step --device cuda --optimizer galore --shapes 4096x11008,4096x4096 \
  --ranks 128,512,1024 --iters 30 --refreshes 0 > $OUT/x/lt_tune.jsonl 2> $OUT/x/lt_tune.err
echo "lt tune: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
grep -h cublas_tuning $OUT/x/lt_tune.err | tee -a $OUT/summary.txt
pack
for round in 1 2 3; do
  for v in default sync awake lt; do
    case $v in
      default) envs="EMBER_CUBLAS_TIMELINE=1" ;;
      sync) envs="EMBER_CUBLAS_TIMELINE=1 EMBER_SYNC=device-thread" ;;
      awake) envs="EMBER_CUBLAS_TIMELINE=1 EMBER_KEEP_AWAKE=1" ;;
      lt) envs="EMBER_CUBLAS_TIMELINE=1 EMBER_CUBLASLT=tune" ;;
    esac
    env $envs timeout 60 $B step --device cuda --optimizer galore --shapes 4096x11008 --ranks 512 \
      --iters 60 --refreshes 0 > $OUT/x/${v}_$round.jsonl 2> $OUT/x/${v}_$round.err
    echo "$v round $round: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  done
done
python3 - $OUT/x >> $OUT/summary.txt <<'PY'
import json, sys, glob, os
for f in sorted(glob.glob(sys.argv[1] + "/*_[123].jsonl")):
    for line in open(f):
        try:
            r = json.loads(line)
        except Exception:
            continue
        if isinstance(r, dict) and "m" in r:
            print(os.path.basename(f), {k: r.get(k) for k in ("step_unchecked_ms", "engine_ms", "down_ms", "up_ms")})
PY
pack
cat $OUT/summary.txt
