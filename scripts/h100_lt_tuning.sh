#!/bin/bash
# One device call (carry [".device", ".device4"]): cuBLAS algorithms timed per GEMM signature
# (cublasGemmEx's default against cuBLASLt's heuristic candidates, issue 18). Most important first:
#  1. kernel checks on CUDA, bare (the products on the chosen algorithms);
#  2. GaLore r512 steps at 4096×11008, 2048×5461, 4096², 2048², f32 and bf16, with the timing on
#     (EMBER_CUBLASLT=tune) and off, each with its tuning records and the last step's
#     window timeline (EMBER_CUBLAS_TIMELINE=1) on stderr;
#  3. the step table (f32: GaLore r128/512/1024, AdamW; bf16: GaLore r512, AdamW with bf16
#     state) beside the PyTorch anchor of the same call;
#  4. LLaMA-1B GaLore-8bit and AdamW (bf16, 4×256), the model's products timed too;
#  5. pretraining (f32, `small`): AdamW and GaLore after a warm-up run.
# (Call 1 of 2026-11-25 ran this when the timing was on by default; it is opt-in since, so the
# script sets EMBER_CUBLASLT=tune for every run of the timing.)
PACKED=1
. scripts/lib_device.sh
export EMBER_CUBLASLT=tune
kernel_checks
pack
for lt in on off; do
  for dt in f32 bf16; do
    [ $lt = off ] && unset EMBER_CUBLASLT
    envs="EMBER_CUBLAS_TIMELINE=1"; [ $lt = on ] && envs="$envs EMBER_CUBLASLT=tune"
    env $envs timeout 90 $B step --device cuda --optimizer galore \
      --shapes 4096x11008,2048x5461,4096x4096,2048x2048 --ranks 512 --iters 30 --refreshes 0 \
      --weights-dtype $dt > $OUT/lt${lt}_galore_$dt.jsonl 2> $OUT/lt${lt}_galore_$dt.err
    echo "lt $lt galore $dt: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  done
done
export EMBER_CUBLASLT=tune
python3 - $OUT <<'PY' | tee -a $OUT/summary.txt
import glob, json, os, sys
d = sys.argv[1]
for lt in ("on", "off"):
    for path in sorted(glob.glob(os.path.join(d, f"lt{lt}_galore_*.jsonl"))):
        for line in open(path):
            r = json.loads(line)
            print(os.path.basename(path), r["m"], r["n"],
                  {k: round(r[k], 3) for k in ("step_ms", "step_on_device_ms", "step_unchecked_ms", "engine_ms")})
for path in sorted(glob.glob(os.path.join(d, "lton_galore_*.err"))):
    for line in open(path):
        if line.startswith('{"cublas_tuning"'):
            t = json.loads(line)
            c = [x for x in t["candidates_ms"] if x is not None]
            print(os.path.basename(path), t["cublas_tuning"], t["dtype"], "scratch" if t["scratch"] else "fresh",
                  "default", t["default_ms"], "best", min(c) if c else None, "chosen", t["chosen"])
PY
pack
step_tables $OUT
pack
M1B="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
run warmup 120 $M1B --optimizer galore --state-dtype int8
run g8_1 60 $M1B --optimizer galore --state-dtype int8
run adamw 60 $M1B --optimizer adamw --state-dtype bf16
EMBER_CUBLASLT=off run g8_off 60 $M1B --optimizer galore --state-dtype int8
python3 - $OUT/measure.jsonl <<'PY' | tee -a $OUT/summary.txt
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    for r in d.get("rows") or []:
        print(d["name"], {k: r.get(k) for k in ("peak_device_bytes_cuda", "driver_pool_used_peak_bytes", "train_step_ms", "optimizer_step_ms")})
PY
pack
if [ $(left) -gt 150 ]; then
  pretrain_setup
  pretrain_warmup galore
  pretrain adamw -- --optimizer adamw
  pretrain galore -- --optimizer galore
fi
pack
cat $OUT/summary.txt
