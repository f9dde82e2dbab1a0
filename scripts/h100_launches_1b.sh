#!/bin/bash
# One device call (carry [".device"]) after the CUDA build: which CubeCL kernels an LLaMA-1B
# bf16 train step (4×256 tokens, rank 512) launches, by name, for GaLore-8bit and AdamW with
# bf16 state. CubeCL's profiling logger at level "minimal" (a `cubecl.toml` in the working
# directory; it logs "Executing <kernel>" per launch, without timing) over two runs of the same
# model, 2 and 6 measured steps after one warm-up step: the difference over 4 steps is one train
# step's launches (forward, backward, optimizer; cuBLAS's GEMMs are not CubeCL launches and are
# counted by `EMBER_STEP_TIMING`'s windows instead). Then the same runs without the logger for
# their step times. Summarize with `python3 scripts/launch_table.py DIR`.
PACKED=1
. scripts/lib_device.sh
M1B="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --warmup 1 --weights-dtype bf16"
ROOT=$(pwd)
mkdir -p /tmp/prof
export EMBER_STEP_TIMING=2
for who in g8 adamw; do
  case $who in
    g8) OPT="--optimizer galore --state-dtype int8" ;;
    adamw) OPT="--optimizer adamw --state-dtype bf16" ;;
  esac
  for steps in 2 6; do
    printf '[profiling.logger]\nlevel = "minimal"\nfile = "%s"\nappend = false\n' \
      "$OUT/launches_${who}_$steps.log" > /tmp/prof/cubecl.toml
    (cd /tmp/prof && run ${who}_log$steps 200 $M1B --steps $steps $OPT)
    cp /tmp/${who}_log$steps.err $OUT/ 2>/dev/null
    gzip -f "$OUT/launches_${who}_$steps.log" 2>/dev/null
    pack
  done
  run ${who} 150 $M1B --steps 8 $OPT
  cp /tmp/$who.err $OUT/ 2>/dev/null; pack
done
cd "$ROOT"
grep -h "step timing" $OUT/*.err | tee -a $OUT/summary.txt
cat $OUT/summary.txt
