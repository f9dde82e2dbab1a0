#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18, ≤ 0.6× at 4096×11008 r512): call 4 of
# this session found the f16-operand update GEMM at 0.26 ms where its scalars are read on the
# device (the checked policies) against 0.20 with host scalars (the unchecked step), and a
# cuBLASLt candidate at 0.158 ms for the device-scalar signature.
#  1. kernel checks on CUDA (the committed code's padded-R condition);
#  2. cuBLASLt's candidates timed with their configurations (tile, split-K, stages, cluster, …)
#     at 4096×11008 r128/512/1024, host scalars and EMBER_UPDATE_SCALARS=device;
#  3. three rounds at 4096×11008 r512: the default, EMBER_UPDATE_SCALARS=device, and that with
#     EMBER_CUBLASLT=tune — medians of 60, the last step's timeline each.
PACKED=1
. scripts/lib_device.sh
kernel_checks
pack
mkdir -p $OUT/x
for sc in host device; do
  EMBER_UPDATE_SCALARS=$sc EMBER_CUBLASLT=tune timeout 100 $B step --device cuda --optimizer galore \
    --shapes 4096x11008 --ranks 128,512,1024 --iters 30 --refreshes 0 > $OUT/x/lt_$sc.jsonl 2> $OUT/x/lt_$sc.err
  echo "lt tune scalars=$sc: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  grep -h cublas_tuning $OUT/x/lt_$sc.err | grep '"scratch": true' | tee -a $OUT/summary.txt
done
pack
for round in 1 2 3; do
  for v in default device device_lt; do
    case $v in
      default) envs="EMBER_CUBLAS_TIMELINE=1" ;;
      device) envs="EMBER_CUBLAS_TIMELINE=1 EMBER_UPDATE_SCALARS=device" ;;
      device_lt) envs="EMBER_CUBLAS_TIMELINE=1 EMBER_UPDATE_SCALARS=device EMBER_CUBLASLT=tune" ;;
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
            print(os.path.basename(f), {k: r.get(k) for k in ("step_ms", "step_on_device_ms", "step_unchecked_ms", "engine_ms")})
PY
pack
cat $OUT/summary.txt
