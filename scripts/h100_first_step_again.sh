#!/bin/bash
# Issue 18 item 6's figures after the device projector's changes, in one device call (carry
# [".device"] after scripts/build_for_gpu.sh): `measure --model 350m` and `--model 1b` (f32,
# 4×256 tokens, AdamW and GaLore rank 256/512), each configuration first with empty kernel caches
# of its own (as on a fresh machine), then a second time with those caches warm; then PyTorch's
# same models and batch (scripts/anchors/hf_anchor.py, f32, TF32 off: burn's matmul in this build
# is not autotuned) for the peak memory and step time beside.
# Raw output: $OUT/first_step.jsonl (one line per run: first-step time, peak, step times).
set -u
if [ -f .device/ember-bench.gz ]; then
  gzip -dc .device/ember-bench.gz > /tmp/ember-bench; B=/tmp/ember-bench
else
  B=$(pwd)/.device/ember-bench
fi
chmod +x $B
T0=$(date +%s); DEADLINE=$((T0 + ${BUDGET_S:-540}))
left() { echo $((DEADLINE - $(date +%s))); }
run() {  # model optimizer rank pass
  local m=$1 o=$2 r=$3 pass=$4 name=$1-$2-$4
  local l=$(left); [ $l -lt 30 ] && { echo "$name: skipped (deadline)" | tee -a $OUT/summary.txt; return; }
  local lim=150; [ $lim -gt $((l - 20)) ] && lim=$((l - 20))
  local t0=$(date +%s%N)
  EMBER_KERNEL_CACHE=/tmp/kc-$m-$o CUDA_CACHE_PATH=/tmp/nv-$m-$o CUDA_CACHE_MAXSIZE=4294967296 \
    timeout $lim $B measure --device cuda --json --model $m --optimizer $o --rank $r \
    --batch 4 --seq 256 --steps 5 --warmup 1 > /tmp/$name.json 2> /tmp/$name.err
  local rc=$? t1=$(date +%s%N)
  python3 - "$name" "$rc" "$t0" "$t1" >> $OUT/first_step.jsonl <<'PY'
import json, re, sys
name, rc, t0, t1 = sys.argv[1:]
err = open("/tmp/" + name + ".err").read()
m = re.search(r"step 1/\d+ done at ([0-9.]+) s", err)
try:
    rows = json.load(open("/tmp/" + name + ".json"))
except Exception:
    rows = None
print(json.dumps({"name": name, "exit": int(rc), "wall_s": (int(t1) - int(t0)) / 1e9,
                  "first_step_done_s": float(m.group(1)) if m else None, "rows": rows}))
PY
  echo "$name: exit $rc, $(( (t1 - t0) / 1000000000 )) s; $(grep -m1 'step 1/' /tmp/$name.err)" | tee -a $OUT/summary.txt
}
for pass in cold warm; do
  run 350m adamw 256 $pass
  run 350m galore 256 $pass
  run 1b adamw 512 $pass
  run 1b galore 512 $pass
done
for m in "350m 256" "1b 512"; do
  l=$(left); [ $l -lt 60 ] && break
  set -- $m
  timeout $((l - 15)) python3 .device/hf_anchor.py .device/whl $1 4 256 $2 $OUT/anchor.jsonl adamw,galore \
    > /tmp/anchor-$1.out 2> /tmp/anchor-$1.err
  echo "anchor $1: exit $?; $(tail -2 /tmp/anchor-$1.out | tr '\n' ' ')" | tee -a $OUT/summary.txt
done
tar -C /tmp -czf $OUT/raw.tgz $(cd /tmp && ls *.err 2>/dev/null)
cat $OUT/summary.txt
