#!/bin/bash
# Time to the first step on CUDA (issue 18 item 6), on the GPU machine (carry [".device"] after
# scripts/build_for_gpu.sh). One call, most important first, every run under a deadline:
#  1. CUDA kernel checks (`ember-bench kernels`, the fused 8-bit Adam kernels included);
#  2. `measure --model 350m` (AdamW, f32) with CubeCL's compilation log and a stack sample of the
#     process every 20 s (cuda-gdb attaches; the binary keeps its symbols): where the first step's
#     time goes, and how many kernels it compiles;
#  3. the same run again in a fresh process (CubeCL's PTX cache and the driver's JIT cache warm);
#  4. LLaMA-1B, bf16 weights, GaLore-8bit rank 512 (device projector), 4×256 tokens;
#  5. the caches packed into $OUT (cache.tar.xz.*), so that a later call can carry them.
set -u
B=.device/ember-bench
chmod +x $B
T0=$(date +%s); DEADLINE=$((T0 + ${BUDGET_S:-540}))
left() { echo $((DEADLINE - $(date +%s))); }
export EMBER_KERNEL_CACHE=/tmp/ember-kc CUDA_CACHE_PATH=/tmp/nv-cache CUDA_CACHE_MAXSIZE=4294967296
[ -d .device/cache ] && cp -r .device/cache/ember-kc .device/cache/nv-cache /tmp/ 2>/dev/null
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; } > $OUT/env.txt 2>&1
M=$OUT/runs.jsonl
run() {  # name, limit, command...
  local name=$1 limit=$2; shift 2
  local l=$(left); [ $l -lt 30 ] && { echo "$name: skipped (deadline)" | tee -a $OUT/summary.txt; return; }
  [ $limit -gt $((l - 10)) ] && limit=$((l - 10))
  local t0=$(date +%s.%N)
  timeout $limit "$@" > $OUT/$name.out 2> $OUT/$name.err &
  local pid=$!
  if [ -n "${SAMPLE:-}" ]; then
    ( sleep 15; while kill -0 $pid 2>/dev/null; do
        c=$(pgrep -P $pid -n ember-bench || echo $pid)
        echo "=== $(date +%s) pid $c" >> $OUT/$name.stacks
        timeout 40 cuda-gdb -q -batch -p $c -ex "thread apply all bt 14" 2>/dev/null \
          | grep -E '^(Thread|#)' | cut -c1-220 >> $OUT/$name.stacks
        sleep 20; done ) &
  fi
  wait $pid; local rc=$?
  local t1=$(date +%s.%N)
  echo "{\"name\":\"$name\",\"exit\":$rc,\"wall_s\":$(echo "$t1 - $t0" | bc),\"cmd\":\"$*\"}" >> $M
  echo "$name: exit $rc in $(echo "$t1 - $t0" | bc) s; $(tail -2 $OUT/$name.err | tr '\n' ' ')" | tee -a $OUT/summary.txt
}
run kernels 120 $B kernels --device cuda
grep -v '^ok ' $OUT/kernels.out | tail -4
cat > cubecl.toml <<TOML
[compilation.logger]
level = "basic"
file = "/tmp/compile_350m.log"
TOML
SAMPLE=1 run 350m-adamw-cold 220 $B measure --device cuda --model 350m --optimizer adamw --batch 4 --seq 256 --steps 2 --warmup 1 --json
rm -f cubecl.toml
python3 - > $OUT/compile_summary.txt <<'PY'
import collections
try:
    lines = [l for l in open("/tmp/compile_350m.log", errors="replace") if "[Compiling kernel]" in l]
except OSError:
    lines = []
c = collections.Counter(l.split("]", 1)[1].strip() or "?" for l in lines)
print("kernels compiled", len(lines), "distinct names", len(c))
for k, v in c.most_common(40): print(v, k)
PY
head -5 $OUT/compile_summary.txt
run 350m-adamw-warm 150 $B measure --device cuda --model 350m --optimizer adamw --batch 4 --seq 256 --steps 2 --warmup 1 --json
run 1b-galore8-bf16 300 $B measure --device cuda --model 1b --optimizer galore --rank 512 --weights-dtype bf16 --state-dtype int8 --batch 4 --seq 256 --steps 3 --warmup 2 --json
du -sh /tmp/ember-kc /tmp/nv-cache >> $OUT/summary.txt 2>&1
tar -C /tmp -cf - ember-kc nv-cache 2>/dev/null | xz -1 -T0 | split -b 15M - $OUT/cache.tar.xz.
ls -la $OUT >> $OUT/summary.txt
