#!/bin/bash
# One device call (carry [".device"]) after the CUDA build: issue 13's device total counted the
# same way on both sides. NVML's used memory includes the driver's own reserve, which CUDA's
# `cuMemGetInfo` (and so `torch.cuda.mem_get_info`, the HF anchor's `device_used_max`) leaves
# out; `measure` now polls both. Most important first:
#  1. the idle device as nvidia-smi and as PyTorch count it (`idle.txt`);
#  2. `measure --model 1b` (4×256, bf16, r512) GaLore-8bit twice and AdamW (bf16 state), beside
#     HF transformers + galore-torch GaLoreAdamW and torch's fused AdamW in the same call;
#  3. the step table's f32 rows again with 60 timed steps a point (call 1 had two outliers).
# Raw output: $OUT/res.tgz and summary.txt.
PACKED=1
. scripts/lib_device.sh
{
  nvidia-smi --query-gpu=memory.total,memory.reserved,memory.used,memory.free --format=csv
  python3 -c "import torch; f, t = torch.cuda.mem_get_info(); print('torch.cuda.mem_get_info: total', t, 'free', f, 'used', t - f)"
} > $OUT/idle.txt 2>&1
cat $OUT/idle.txt | tee -a $OUT/summary.txt
M1B="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
run warmup 240 $M1B --optimizer galore --state-dtype int8
run g8_1 60 $M1B --optimizer galore --state-dtype int8
run adamw 60 $M1B --optimizer adamw --state-dtype bf16
run g8_2 60 $M1B --optimizer galore --state-dtype int8
python3 - $OUT/measure.jsonl <<'PY' | tee -a $OUT/summary.txt
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    for r in d.get("rows") or []:
        keys = ("peak_device_bytes", "peak_device_bytes_cuda", "burn_reserved_bytes",
                "driver_pool_used_peak_bytes", "driver_pool_reserved_peak_bytes",
                "device_bytes_at_start", "device_bytes_at_start_cuda", "nvml_total_bytes",
                "cuda_total_bytes", "train_step_ms", "optimizer_step_ms")
        print(d["name"], {k: r.get(k) for k in keys})
PY
pack
if [ $(left) -gt 150 ]; then
  DTYPE=bf16 PYTHONUNBUFFERED=1 timeout 140 python3 .device/hf_anchor.py .device/whl 1b 4 256 512 \
    $OUT/anchor_1b_bf16_4x256.jsonl galore,adamw > $OUT/anchor_1b.log 2>&1
  echo "anchor 1b 4x256: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  cut -c1-500 $OUT/anchor_1b_bf16_4x256.jsonl 2>/dev/null | tee -a $OUT/summary.txt
fi
pack
for o in adamw galore; do
  [ $(left) -lt 90 ] && break
  timeout 80 $B step --device cuda --optimizer $o --ranks 512 --iters 60 --refreshes 0 \
    > $OUT/step_f32_$o.jsonl 2>> $OUT/step.err
  echo "step f32 $o: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
done
if [ $(left) -gt 60 ]; then
  SVD=0 RANKS=512 TF32=1 PYTHONUNBUFFERED=1 timeout 50 python3 .device/torch_anchor.py .device/whl \
    $OUT/anchor_tf32.json > $OUT/anchor_tf32.log 2>&1
  echo "anchor f32 (TF32): exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
fi
python3 scripts/step_table.py $OUT > $OUT/step_table.md 2>&1; cat $OUT/step_table.md | tee -a $OUT/summary.txt
pack
cat $OUT/summary.txt
