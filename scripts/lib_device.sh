# Shared helpers of the device-call scripts (source it from the repository root on the GPU
# machine, after `FEATURES=cuda-fusion bash scripts/build_for_gpu.sh` and carrying [".device"]).
#   B          the unpacked ember-bench binary
#   left       seconds left before the call's deadline (BUDGET_S, default 550)
#   run NAME LIMIT ARGS...   `ember-bench measure --json $MEASURE_PREFIX ARGS` with a time limit
#              (at most `left` − RUN_MARGIN seconds, skipped under RUN_MIN; both default 20);
#              appends {"name","exit","wall_s","args","rows"} to $OUT/$JSONL and a line to
#              $OUT/summary.txt
#   step_run STEM [ENV=VALUE…] -- ARGS...   `ember-bench step --device cuda ARGS` with those
#              variables (limit STEP_LIMIT, default 90 s) into STEM.jsonl / STEM.err, a line to
#              $OUT/summary.txt
#   step_summary DIR KEY...   one line a row of DIR's *.jsonl (`step` output: shape, rank, KEYs)
#              to $OUT/summary.txt
#   step_table_reps          the step table REPS times (default 2) in $OUT/rep1…, each packed
#   pretrain_runs METHOD...   pretraining runs after pretrain_setup (a repeated method is NAME_2, …)
#   PACKED=1   (set before sourcing) results go to /tmp/res and `pack` writes them to the call's
#              $OUT/res.tgz (a call returns at most 8 files) with summary.txt beside it; $REAL_OUT
#              is the call's $OUT; env.txt records the machine
set -u
if [ "${PACKED:-0}" = 1 ]; then
  # a machine may keep /tmp from an earlier session's call: the first script of a call starts
  # from an empty /tmp/res (a script it runs, sourcing this again, adds to it)
  REAL_OUT=$OUT; OUT=/tmp/res
  [ -z "${EMBER_DEVICE_CALL:-}" ] && rm -rf $OUT
  export EMBER_DEVICE_CALL=1
  mkdir -p $OUT
  pack() { tar -C /tmp/res -czf $REAL_OUT/res.tgz . ; cp $OUT/summary.txt $REAL_OUT/ 2>/dev/null; }
  {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch; print('torch', torch.__version__)"
  } > $OUT/env.txt 2>&1
fi
if [ -f .device/ember-bench.xz ]; then
  xz -dc .device/ember-bench.xz > /tmp/ember-bench; B=/tmp/ember-bench
elif [ -f .device/ember-bench.gz ]; then
  gzip -dc .device/ember-bench.gz > /tmp/ember-bench; B=/tmp/ember-bench
else
  B=$(pwd)/.device/ember-bench
fi
chmod +x "$B"
T0=$(date +%s); DEADLINE=$((T0 + ${BUDGET_S:-550}))
JSONL=${JSONL:-measure.jsonl}
RUN_MARGIN=${RUN_MARGIN:-20}; RUN_MIN=${RUN_MIN:-20}; MEASURE_PREFIX=${MEASURE_PREFIX:-}
left() { echo $((DEADLINE - $(date +%s))); }
export EMBER_KERNEL_CACHE=/tmp/ember-kc CUDA_CACHE_PATH=/tmp/nv-cache CUDA_CACHE_MAXSIZE=4294967296
run() {  # name, limit, args...
  local name=$1 lim=$2; shift 2
  local l=$(left); [ $lim -gt $((l - RUN_MARGIN)) ] && lim=$((l - RUN_MARGIN))
  [ $lim -lt $RUN_MIN ] && { echo "$name: skipped (deadline)" | tee -a $OUT/summary.txt; return; }
  local t0=$(date +%s%N)
  timeout $lim $B measure $MEASURE_PREFIX --json "$@" > /tmp/$name.json 2> /tmp/$name.err
  local rc=$? t1=$(date +%s%N)
  python3 - "$name" "$rc" "$t0" "$t1" "$*" >> $OUT/$JSONL <<'PY'
import json, sys
name, rc, t0, t1, args = sys.argv[1:]
try:
    rows = json.load(open("/tmp/" + name + ".json"))
except Exception:
    rows = None
print(json.dumps({"name": name, "exit": int(rc), "wall_s": (int(t1) - int(t0)) / 1e9, "args": args,
                  "rows": rows}))
PY
  echo "$name: exit $rc, $(( (t1 - t0) / 1000000000 )) s; $(grep -m1 'step 1/' /tmp/$name.err); $(tail -1 /tmp/$name.err)" | tee -a $OUT/summary.txt
}
# kernel_checks [DEVICE [LIMIT]]: `ember-bench kernels --device DEVICE` (default cuda; cuda-fusion:
#   under burn's fusion backend) into $OUT/kernels_DEVICE.log, its exit status and count of
#   passed checks and every line that is not a pass appended to $OUT/summary.txt
kernel_checks() {
  local dev=${1:-cuda} lim=${2:-150}
  timeout $lim $B kernels --device $dev > $OUT/kernels_$dev.log 2>&1
  echo "kernels $dev: exit $? at $(( $(date +%s) - T0 )) s; $(grep -c '^ok ' $OUT/kernels_$dev.log) ok" | tee -a $OUT/summary.txt
  grep -v '^ok ' $OUT/kernels_$dev.log | head -20 | tee -a $OUT/summary.txt
}
# kernel_checks_both: kernel_checks bare and under burn's fusion backend, packed, and $OUT/x made
#   for the step points that follow
kernel_checks_both() {
  kernel_checks
  kernel_checks cuda-fusion 100
  pack
  mkdir -p $OUT/x
}
# pretrain_setup: unpacks the pretraining binary ($P, from .device4/) and sets $COMMON, the
#   arguments of docs/benchmarks.md's pretraining table (`small`, EPOCHS×STEPS, default 6×100)
# pretrain_warmup OPTIMIZER…: a short run (1 epoch of 20 steps, not a result) per optimizer that
#   compiles the model's and the optimizer's kernels into the call's CubeCL cache, so that no
#   timed run is a cold start's (a method's first run otherwise compiles its own kernels)
# pretrain NAME [VAR=VALUE…] -- ARGS…: one run of the table with that environment and
#   `$COMMON ARGS…` (e.g. `--optimizer fira`), its log and results in $OUT/NAME, a line in
#   summary.txt (skipped when less than 45 s are left), packed
pretrain_setup() {
  if [ -f .device4/pretrain.xz ]; then xz -dc .device4/pretrain.xz > /tmp/pretrain; P=/tmp/pretrain
  elif [ -f .device4/pretrain.gz ]; then gzip -dc .device4/pretrain.gz > /tmp/pretrain; P=/tmp/pretrain
  else P=.device4/pretrain; fi
  chmod +x $P
  COMMON="--device cuda --model small --batch 32 --seq 256 --epochs ${EPOCHS:-6} --steps-per-epoch ${STEPS:-100} --valid-windows 256 --lr 2e-3 --warmup 40 --gap 200 --seed 42"
}
pretrain_warmup() {  # OPTIMIZER… (each once, in order: the first's log is warmup.log)
  local m log seen=" "
  for m in "$@"; do
    case "$seen" in *" $m "*) continue ;; esac
    seen="$seen$m "
    log=$OUT/warmup.log; [ "$seen" != " $m " ] && log=$OUT/warmup_$m.log
    timeout 150 $P train --device cuda --model small --batch 32 --seq 256 --epochs 1 --steps-per-epoch 20 \
      --valid-windows 16 --lr 2e-3 --warmup 5 --gap 200 --seed 42 --optimizer $m --out /tmp/warmup > $log 2>&1
    echo "warmup $m: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  done
}
pretrain() {
  local name=$1; shift
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  local lim=$(( $(left) - 15 )); [ $lim -lt 45 ] && { echo "$name: skipped (deadline)" | tee -a $OUT/summary.txt; return; }
  env "${envs[@]}" timeout $lim $P train $COMMON "$@" --out $OUT/$name > $OUT/$name.log 2>&1
  echo "$name: exit $? at $(( $(date +%s) - T0 )) s; $(tail -1 $OUT/$name.log | cut -c1-300)" | tee -a $OUT/summary.txt
  rm -rf $OUT/$name/checkpoint
  pack
}
# step_tables DIR: issue 18's step table into DIR — `ember-bench step` (f32: GaLore
#   r128/512/1024 and AdamW; bf16: GaLore r512 and AdamW with bf16 state), then the PyTorch
#   anchors of the same shapes (TF32 for f32) right after it, and DIR/step_table.md
#   (scripts/step_table.py), appended to summary.txt
step_tables() {
  local R=$1; mkdir -p $R
  for o in galore adamw; do
    timeout 120 $B step --device cuda --optimizer $o --ranks 128,512,1024 --iters 40 --refreshes 0 \
      > $R/step_f32_$o.jsonl 2>> $R/step.err
  done
  timeout 60 $B step --device cuda --optimizer galore --ranks 512 --iters 40 --refreshes 0 --weights-dtype bf16 \
    > $R/step_bf16_galore.jsonl 2>> $R/step.err
  timeout 60 $B step --device cuda --optimizer adamw --iters 40 --refreshes 0 --weights-dtype bf16 --state-dtype bf16 \
    > $R/step_bf16_adamw_bf16.jsonl 2>> $R/step.err
  echo "steps: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  SVD=0 RANKS=128,512,1024 TF32=1 PYTHONUNBUFFERED=1 timeout 100 python3 .device/torch_anchor.py .device/whl \
    $R/anchor_tf32.json > $R/anchor_tf32.log 2>&1
  DTYPE=bf16 RANKS=512 TF32=1 PYTHONUNBUFFERED=1 timeout 80 python3 .device/torch_anchor.py .device/whl \
    $R/anchor_bf16.json > $R/anchor_bf16.log 2>&1
  echo "anchors: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  python3 scripts/step_table.py $R > $R/step_table.md 2>&1; cat $R/step_table.md | tee -a $OUT/summary.txt
}
step_run() {  # stem, [ENV=VALUE…], --, step args…
  local stem=$1; shift
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  env "${envs[@]}" timeout ${STEP_LIMIT:-90} $B step --device cuda "$@" > $stem.jsonl 2> $stem.err
  echo "$(basename $stem): exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
}
step_summary() {  # dir, keys…
  python3 - "$@" >> $OUT/summary.txt <<'PY'
import json, sys, glob, os
d, keys = sys.argv[1], sys.argv[2:]
for f in sorted(glob.glob(d + "/*.jsonl")):
    for line in open(f):
        try:
            r = json.loads(line)
        except Exception:
            continue
        if isinstance(r, dict) and "m" in r:
            print(os.path.basename(f), "%dx%d r%s" % (r["m"], r["n"], r.get("rank")), {k: r.get(k) for k in keys})
PY
}
pretrain_runs() {  # methods… (a repeated method's run is NAME_2, …)
  declare -A seen
  local m name
  for m in "$@"; do
    seen[$m]=$(( ${seen[$m]:-0} + 1 ))
    name=$m; [ ${seen[$m]} -gt 1 ] && name=${m}_${seen[$m]}
    pretrain $name -- --optimizer $m
  done
}
# pretrain_counted "NAME [VAR=VALUE…]"…: a pretraining run of method NAME (up to its first `_`)
#   for each argument, with its count of in-place outputs found held (CUDA) in summary.txt; then
#   every run's final checksum, validation loss and tokens/s
pretrain_counted() {
  local r name m d
  for r in "$@"; do
    set -- $r; name=$1; shift
    m=${name%%_*}
    pretrain $name "$@" -- --optimizer $m
    grep -h "in-place outputs" $OUT/$name.log | sed "s/^/$name: /" | tee -a $OUT/summary.txt
  done
  for d in $OUT/*/; do
    [ -f $d/summary.json ] || continue
    python3 -c "import json,sys; s=json.load(open(sys.argv[1]+'/summary.json')); print(sys.argv[1].rstrip('/').split('/')[-1], s['final_checksum'], s['final_valid_loss'], round(s['tokens_per_second']))" $d
  done | tee -a $OUT/summary.txt
}
step_table_reps() {  # the step table REPS times (default ${1:-2}), each beside its own PyTorch run
  local rep
  for rep in $(seq 1 ${REPS:-${1:-2}}); do
    step_tables $OUT/rep$rep
    pack
  done
}
