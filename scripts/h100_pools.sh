#!/bin/bash
# Where the device memory of a layer-wise LLaMA-7B step goes (issue 14), on the GPU machine
# (carry [".device"] after scripts/build_for_gpu.sh). Each configuration runs once as it is and
# once with CubeCL's persistent memory enforced (`[memory] persistent_memory = "enforced"`: every
# allocation in exact-size pages, reused by size, instead of sliced pages); `measure` reports
# NVML's device peak and burn's own figures (bytes of live tensors, bytes its pools reserved).
# As in scripts/h100_memory.sh: one concurrent step of each first (kernel compilation), then the
# measurements one at a time; Q-GaLore with INT8 weights on LLaMA-7B first (issue 14's ≤ 15 GiB).
# Raw output: $OUT/pools.jsonl.
set -u
B=$(pwd)/.device/ember-bench
chmod +x $B
T0=$(date +%s); DEADLINE=$((T0 + ${BUDGET_S:-450}))
left() { echo $((DEADLINE - $(date +%s))); }
export EMBER_KERNEL_CACHE=/tmp/ember-kc CUDA_CACHE_PATH=/tmp/nv-cache CUDA_CACHE_MAXSIZE=4294967296
mkdir -p /tmp/enforced && printf '[memory]\npersistent_memory = "enforced"\n' > /tmp/enforced/cubecl.toml
L7="--model 7b --optimizer galore --rank 1024 --weights-dtype bf16 --state-dtype int8 --layerwise --batch 1 --seq 256"
E1="--model 1b --optimizer galore --rank 512 --weights-dtype bf16 --state-dtype int8 --batch 4 --seq 256"
A1="--model 1b --optimizer adamw --weights-dtype bf16 --state-dtype bf16 --batch 4 --seq 256"
# Q-GaLore, INT8 attention/MLP weights, its projector fitted on the device (`--projector auto`)
Q7="--model 7b --optimizer qgalore --rank 1024 --weights-dtype bf16 --state-dtype int8 --int8-weights --layerwise --batch 1 --seq 256 --exact-pools"
for a in "$L7" "$E1" "$A1" "$Q7"; do
  timeout ${PASS1_S:-150} $B measure --device cuda --json --quiet --steps 1 --warmup 0 $a > /dev/null 2>&1 &
done
wait
echo "pass 1 done at $(( $(date +%s) - T0 )) s" | tee $OUT/summary.txt
run() {  # name, dir, limit, args...
  local name=$1 dir=$2 limit=$3; shift 3
  local l=$(left); [ $l -lt 40 ] && { echo "$name: skipped (deadline)" | tee -a $OUT/summary.txt; return; }
  [ $limit -gt $((l - 10)) ] && limit=$((l - 10))
  local t0=$(date +%s%N)
  (cd $dir && timeout $limit $B measure --device cuda --json "$@" > /tmp/$name.json 2> /tmp/$name.err)
  local rc=$? t1=$(date +%s%N)
  python3 - "$name" "$rc" "$t0" "$t1" "/tmp/$name.json" "$*" "$dir" >> $OUT/pools.jsonl <<'PY'
import json, sys
name, rc, t0, t1, path, args, d = sys.argv[1:]
try:
    rows = json.load(open(path))
except Exception:
    rows = None
print(json.dumps({"name": name, "exit": int(rc), "wall_s": (int(t1) - int(t0)) / 1e9, "args": args,
                  "cubecl_toml": open(d + "/cubecl.toml").read() if d != "." else None, "rows": rows}))
PY
  echo "$name: exit $rc, $(( (t1 - t0) / 1000000000 )) s; $(tail -1 /tmp/$name.err)" | tee -a $OUT/summary.txt
}
run 7b-qgalore-int8-lw . 150 $Q7 --steps 3 --warmup 1
run 7b-galore8-lw . 120 $L7 --steps 3 --warmup 1
run 7b-galore8-lw-enforced /tmp/enforced 120 $L7 --steps 3 --warmup 1
run 1b-galore8-bf16 . 60 $E1 --steps 5 --warmup 2
run 1b-galore8-bf16-enforced /tmp/enforced 60 $E1 --steps 5 --warmup 2
run 1b-adamw-bf16state . 60 $A1 --steps 5 --warmup 2
run 1b-adamw-bf16state-enforced /tmp/enforced 60 $A1 --steps 5 --warmup 2
tar -C /tmp -czf $OUT/raw.tgz $(cd /tmp && ls *.err *.json 2>/dev/null)
cat $OUT/summary.txt
