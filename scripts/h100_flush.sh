#!/bin/bash
# One device call (carry [".device", ".device4"]) on the session's final build: queued cuBLAS
# windows flush CubeCL's task queue (issue 18). Most important first:
#  1. kernel checks on CUDA, bare;
#  2. the GaLore r512 step timeline (EMBER_CUBLAS_TIMELINE=1) at 4096×11008 and 2048², f32 and
#     bf16: the default (flush), EMBER_CUBLAS_FLUSH=off, and EMBER_KEEP_AWAKE=1 (diagnosis);
#  3. the step table (f32: GaLore r128/512/1024, AdamW; bf16: GaLore r512, AdamW with bf16
#     state) beside the PyTorch anchor of the same call;
#  4. LLaMA-1B GaLore-8bit and AdamW (bf16, 4×256) beside HF transformers + galore-torch;
#  5. pretraining (f32, `small`): AdamW and GaLore after a warm-up run.
PACKED=1
. scripts/lib_device.sh
kernel_checks
pack
for variant in flush noflush awake; do
  case $variant in
    flush) envs="EMBER_CUBLAS_TIMELINE=1" ;;
    noflush) envs="EMBER_CUBLAS_TIMELINE=1 EMBER_CUBLAS_FLUSH=off" ;;
    awake) envs="EMBER_CUBLAS_TIMELINE=1 EMBER_KEEP_AWAKE=1" ;;
  esac
  for dt in f32 bf16; do
    env $envs timeout 60 $B step --device cuda --optimizer galore --shapes 4096x11008,2048x2048 \
      --ranks 512 --iters 30 --refreshes 0 --weights-dtype $dt \
      > $OUT/${variant}_galore_$dt.jsonl 2> $OUT/${variant}_galore_$dt.err
    echo "$variant galore $dt: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  done
done
python3 - $OUT <<'PY' | tee -a $OUT/summary.txt
import glob, json, os, sys
d = sys.argv[1]
for v in ("flush", "noflush", "awake"):
    for path in sorted(glob.glob(os.path.join(d, v + "_galore_*.jsonl"))):
        for line in open(path):
            r = json.loads(line)
            print(os.path.basename(path), r["m"], r["n"],
                  {k: round(r[k], 3) for k in ("step_ms", "step_on_device_ms", "step_unchecked_ms", "engine_ms")})
    for path in sorted(glob.glob(os.path.join(d, v + "_galore_*.err"))):
        for line in open(path):
            if line.startswith('{"timeline": "engine"'):
                t = json.loads(line)
                q = [p for p in t["points"] if p[0] == "Queued"]
                print(os.path.basename(path), t["m"], t["n"], "engine wall", t["wall_ms"], "window 1 ran", q[:1])
PY
pack
for o in galore adamw; do
  timeout 120 $B step --device cuda --optimizer $o --ranks 128,512,1024 --iters 40 --refreshes 0 \
    > $OUT/step_f32_$o.jsonl 2>> $OUT/step.err
  echo "step f32 $o: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
done
timeout 60 $B step --device cuda --optimizer galore --ranks 512 --iters 40 --refreshes 0 --weights-dtype bf16 \
  > $OUT/step_bf16_galore.jsonl 2>> $OUT/step.err
timeout 60 $B step --device cuda --optimizer adamw --iters 40 --refreshes 0 --weights-dtype bf16 --state-dtype bf16 \
  > $OUT/step_bf16_adamw_bf16.jsonl 2>> $OUT/step.err
echo "step bf16: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
SVD=0 RANKS=128,512,1024 TF32=1 PYTHONUNBUFFERED=1 timeout 100 python3 .device/torch_anchor.py .device/whl \
  $OUT/anchor_tf32.json > $OUT/anchor_tf32.log 2>&1
DTYPE=bf16 RANKS=512 TF32=1 PYTHONUNBUFFERED=1 timeout 80 python3 .device/torch_anchor.py .device/whl \
  $OUT/anchor_bf16.json > $OUT/anchor_bf16.log 2>&1
echo "anchors: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
python3 scripts/step_table.py $OUT > $OUT/step_table.md 2>&1; cat $OUT/step_table.md | tee -a $OUT/summary.txt
pack
M1B="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
run warmup 120 $M1B --optimizer galore --state-dtype int8
run g8_1 60 $M1B --optimizer galore --state-dtype int8
run adamw 60 $M1B --optimizer adamw --state-dtype bf16
run g8_2 60 $M1B --optimizer galore --state-dtype int8
python3 - $OUT/measure.jsonl <<'PY' | tee -a $OUT/summary.txt
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    for r in d.get("rows") or []:
        print(d["name"], {k: r.get(k) for k in ("peak_device_bytes_cuda", "peak_device_bytes", "driver_pool_used_peak_bytes", "train_step_ms", "optimizer_step_ms")})
PY
pack
if [ $(left) -gt 150 ]; then
  DTYPE=bf16 PYTHONUNBUFFERED=1 timeout 100 python3 .device/hf_anchor.py .device/whl 1b 4 256 512 \
    $OUT/anchor_1b_bf16_4x256.jsonl galore > $OUT/anchor_1b.log 2>&1
  echo "anchor 1b 4x256: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  cut -c1-400 $OUT/anchor_1b_bf16_4x256.jsonl 2>/dev/null | tee -a $OUT/summary.txt
fi
pack
if [ $(left) -gt 150 ]; then
  pretrain_setup
  pretrain_warmup galore
  pretrain adamw -- --optimizer adamw
  pretrain galore -- --optimizer galore
fi
pack
cat $OUT/summary.txt
