#!/bin/bash
# Issues 13/14 on the GPU machine, in one call (carry [".device"] after scripts/build_for_gpu.sh).
# Kernel compilation dominates a first step (NVRTC on one CPU thread per process; see
# docs/perf-notes.md), so every configuration first runs one step **concurrently** (pass 1:
# each process compiles on its own CPU core into the shared CubeCL and CUDA caches), then the
# measurements run **one at a time** (pass 2, warm caches): NVML's device-memory figure and the
# step times belong to one process. Most important first; every run under a deadline.
#  1. LLaMA-7B layer-wise, bf16 weights, GaLore-8bit rank 1024 (device projector), 1×256 tokens;
#  2. LLaMA-1B, 4×256 tokens, bf16 weights: AdamW, GaLore, GaLore-8bit (rank 512) — beside
#     PyTorch (HF transformers LLaMA, torch AdamW / galore-torch, bf16) on the same model, batch
#     and sequence;
#  3. LLaMA-1B ordinary vs layer-wise (AdamW-bf16 state, GaLore-8bit);
#  4. `plan --model 7b --budget 24GiB`; galore-torch's per-layer 8-bit GaLore on LLaMA-7B;
#  5. the CUDA kernel checks (`ember-bench kernels`).
# Raw output: $OUT/pass2.jsonl (one JSON object per run: name, exit, wall seconds, command, rows).
set -u
B=.device/ember-bench
chmod +x $B
T0=$(date +%s); DEADLINE=$((T0 + ${BUDGET_S:-570}))
left() { echo $((DEADLINE - $(date +%s))); }
export EMBER_KERNEL_CACHE=/tmp/ember-kc CUDA_CACHE_PATH=/tmp/nv-cache CUDA_CACHE_MAXSIZE=4294967296
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } > $OUT/env.txt 2>&1
L7="--model 7b --optimizer galore --rank 1024 --weights-dtype bf16 --state-dtype int8 --layerwise --batch 1 --seq 256"
A1="--model 1b --optimizer adamw --weights-dtype bf16 --state-dtype f32 --batch 4 --seq 256"
G1="--model 1b --optimizer galore --rank 512 --weights-dtype bf16 --state-dtype f32 --batch 4 --seq 256"
E1="--model 1b --optimizer galore --rank 512 --weights-dtype bf16 --state-dtype int8 --batch 4 --seq 256"
LA1="--model 1b --optimizer adamw --weights-dtype bf16 --state-dtype bf16 --layerwise --batch 4 --seq 256"
LE1="--model 1b --optimizer galore --rank 512 --weights-dtype bf16 --state-dtype int8 --layerwise --batch 4 --seq 256"
NAMES=(7b-galore8-lw 1b-adamw-bf16 1b-galore-bf16 1b-galore8-bf16 1b-adamw-bf16state-lw 1b-galore8-lw)
ARGS=("$L7" "$A1" "$G1" "$E1" "$LA1" "$LE1")
# pass 1: one step of each, concurrently (compilation)
P1=$(( ${PASS1_S:-270} ))
for k in ${!NAMES[@]}; do
  timeout $P1 $B measure --device cuda --json --steps 1 --warmup 0 ${ARGS[$k]} \
    > /tmp/p1-${NAMES[$k]}.json 2> /tmp/p1-${NAMES[$k]}.err &
done
timeout $((P1 + 20)) $B kernels --device cuda > /tmp/kernels.log 2>&1 &
KPID=$!
wait $(jobs -p | grep -v $KPID) 2>/dev/null
echo "pass 1 done at $(( $(date +%s) - T0 )) s" | tee $OUT/summary.txt
for n in ${NAMES[@]}; do echo "$n: $(grep -c . /tmp/p1-$n.err) lines; $(tail -1 /tmp/p1-$n.err)"; done | tee -a $OUT/summary.txt
# pass 2: one at a time
run() {  # name, limit, args...
  local name=$1 limit=$2; shift 2
  local l=$(left); [ $l -lt 40 ] && { echo "$name: skipped (deadline)" | tee -a $OUT/summary.txt; return; }
  [ $limit -gt $((l - 15)) ] && limit=$((l - 15))
  local t0=$(date +%s%N)
  timeout $limit $B measure --device cuda --json "$@" > /tmp/$name.json 2> /tmp/$name.err
  local rc=$? t1=$(date +%s%N)
  python3 - "$name" "$rc" "$t0" "$t1" "/tmp/$name.json" "$*" >> $OUT/pass2.jsonl <<'PY'
import json, sys
name, rc, t0, t1, path, args = sys.argv[1:]
try:
    rows = json.load(open(path))
except Exception:
    rows = None
print(json.dumps({"name": name, "exit": int(rc), "wall_s": (int(t1) - int(t0)) / 1e9, "args": args, "rows": rows}))
PY
  echo "$name: exit $rc, $(( (t1 - t0) / 1000000000 )) s; $(tail -1 /tmp/$name.err)" | tee -a $OUT/summary.txt
}
run 7b-galore8-lw 150 $L7 --steps 3 --warmup 1
run 1b-adamw-bf16 90 $A1 --steps 5 --warmup 2
run 1b-galore-bf16 90 $G1 --steps 5 --warmup 2
run 1b-galore8-bf16 90 $E1 --steps 5 --warmup 2
l=$(left); [ $l -gt 100 ] && DTYPE=bf16 timeout $((l - 60)) python3 .device/hf_anchor.py .device/whl 1b 4 256 512 $OUT/anchor_1b_bf16.jsonl adamw,galore,galore8bit > /tmp/anchor_1b.log 2>&1
echo "anchor 1b: $(tail -2 /tmp/anchor_1b.log | tr '\n' ' ')" >> $OUT/summary.txt
run 1b-adamw-bf16state-lw 60 $LA1 --steps 5 --warmup 2
run 1b-galore8-lw 60 $LE1 --steps 5 --warmup 2
$B plan --model 7b --budget 24GiB --json > /tmp/plan_7b_24GiB.json 2>&1; head -c 3000 /tmp/plan_7b_24GiB.json > $OUT/plan_7b_24GiB.json
l=$(left); [ $l -gt 80 ] && DTYPE=bf16 LAYERWISE=1 timeout $((l - 20)) python3 .device/hf_anchor.py .device/whl 7b 1 256 1024 $OUT/anchor_7b_layerwise.jsonl galore8bit > /tmp/anchor_7b.log 2>&1
echo "anchor 7b: $(tail -2 /tmp/anchor_7b.log | tr '\n' ' ')" >> $OUT/summary.txt
wait
grep -v '^ok ' /tmp/kernels.log | tail -6 > $OUT/kernels_cuda.txt; grep -c '^ok ' /tmp/kernels.log >> $OUT/kernels_cuda.txt
tail -4 $OUT/kernels_cuda.txt >> $OUT/summary.txt
tar -C /tmp -czf $OUT/raw.tgz $(cd /tmp && ls *.err *.log *.json 2>/dev/null)
cat $OUT/summary.txt
