#!/bin/bash
# One device call (carry [".device"]) after the CUDA build: the full-rank AdamW kernel reading
# padded rows in place, four elements a thread (issue 18's AdamW ≤ 1.0×), and where LLaMA-1B's
# device memory goes outside burn's pools (issue 13's device total). Most important first:
#  1. kernel checks on CUDA (the AdamW rows on transposed and padded inputs among them);
#  2. `ember-bench step` AdamW f32, AdamW bf16 with bf16 state, GaLore r512 f32 and bf16 at the
#     table's shapes, beside the PyTorch anchor (galore-torch, torch's fused AdamW; TF32 for f32;
#     bf16 parameters) in the same call: `python3 scripts/step_table.py DIR`;
#  3. `measure --model 1b` (4×256, bf16, r512) GaLore-8bit and AdamW (bf16 state) with the
#     driver's pool high-water marks and the device memory at start, beside HF transformers +
#     galore-torch GaLoreAdamW (its memory at start, peak allocated and reserved).
# Between 2 and 3, `splitk_probe.py`: PyTorch's time for the down projection `PᵀG` as one GEMM
# and as slices of K summed (is split-K worth building?).
# Raw output: $OUT/res.tgz and summary.txt.
PACKED=1
. scripts/lib_device.sh
kernel_checks
pack
for spec in "adamw f32 f32" "adamw bf16 bf16" "galore f32 f32" "galore bf16 f32"; do
  set -- $spec
  [ $(left) -lt 200 ] && break
  timeout 100 $B step --device cuda --optimizer $1 --ranks 512 --iters 20 --refreshes 0 \
    --weights-dtype $2 --state-dtype $3 > $OUT/step_$2_$1_$3.jsonl 2>> $OUT/step.err
  echo "step $spec: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
done
DTYPE=bf16 RANKS=512 TF32=1 PYTHONUNBUFFERED=1 timeout 100 python3 .device/torch_anchor.py .device/whl \
  $OUT/anchor_bf16.json > $OUT/anchor_bf16.log 2>&1
echo "anchor bf16: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
SVD=0 RANKS=512 TF32=1 PYTHONUNBUFFERED=1 timeout 100 python3 .device/torch_anchor.py .device/whl \
  $OUT/anchor_tf32.json > $OUT/anchor_tf32.log 2>&1
echo "anchor f32 (TF32): exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
PYTHONUNBUFFERED=1 timeout 60 python3 .device/splitk_probe.py $OUT/splitk.jsonl > $OUT/splitk.log 2>&1
echo "split-K probe: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
python3 scripts/step_table.py $OUT > $OUT/step_table.md 2>&1; cat $OUT/step_table.md | tee -a $OUT/summary.txt
pack
M1B="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
run warmup 240 $M1B --optimizer galore --state-dtype int8
run g8_1 60 $M1B --optimizer galore --state-dtype int8
run adamw 60 $M1B --optimizer adamw --state-dtype bf16
# the driver's module loading made explicit (lazy: a kernel's code is loaded at its first launch)
CUDA_MODULE_LOADING=LAZY run g8_lazy 60 $M1B --optimizer galore --state-dtype int8
python3 - $OUT/measure.jsonl <<'PY' | tee -a $OUT/summary.txt
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    for r in d.get("rows") or []:
        keys = ("peak_device_bytes", "burn_reserved_bytes", "driver_pool_used_peak_bytes",
                "driver_pool_reserved_peak_bytes", "device_bytes_at_start", "cuda_stack_size_bytes",
                "train_step_ms", "optimizer_step_ms")
        print(d["name"], {k: r.get(k) for k in keys})
PY
pack
if [ $(left) -gt 100 ]; then
  DTYPE=bf16 PYTHONUNBUFFERED=1 timeout $(( $(left) - 10 )) python3 .device/hf_anchor.py .device/whl 1b 4 256 512 \
    $OUT/anchor_1b_bf16_4x256.jsonl galore > $OUT/anchor_1b.log 2>&1
  echo "anchor 1b 4x256: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  cut -c1-500 $OUT/anchor_1b_bf16_4x256.jsonl 2>/dev/null | tee -a $OUT/summary.txt
fi
pack
cat $OUT/summary.txt
