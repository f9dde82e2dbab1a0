#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build (`scripts/build_for_gpu.sh`,
# the pretraining binary in .device4/ with its symbols: `strip --strip-debug`):
# 1. issue 13: `measure --model 1b` GaLore-8bit (bf16) with the fits' pool blocks given back after
#    the first step (`EmberOptimizer::with_release_after_refresh`, the default) and kept
#    (`EMBER_RELEASE_AFTER_REFRESH=off`), AdamW (bf16 state); stage traces with the heap by size
#    class and the resident set;
# 2. issue 18: where a Fira step's host time goes — `perf record` of 40 pretraining steps (when the
#    machine has perf), its report's top entries in perf_fira.txt;
# 3. issue 18: the pretraining table (f32, `small`), every method, after a warm-up run.
PACKED=1
. scripts/lib_device.sh
kernel_checks
pack
M1B="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
run g8 150 $M1B --optimizer galore --state-dtype int8 --stage-trace $OUT/trace_g8.jsonl
EMBER_RELEASE_AFTER_REFRESH=off run g8_keep 120 $M1B --optimizer galore --state-dtype int8 \
  --stage-trace $OUT/trace_g8_keep.jsonl
run adamw 90 $M1B --optimizer adamw --state-dtype bf16 --stage-trace $OUT/trace_adamw.jsonl
pack
if [ -f .device4/pretrain.gz ]; then gzip -dc .device4/pretrain.gz > /tmp/pretrain; P=/tmp/pretrain; else P=.device4/pretrain; fi
chmod +x $P
COMMON="--device cuda --model small --batch 32 --seq 256 --epochs 6 --steps-per-epoch 100 --valid-windows 256 --lr 2e-3 --warmup 40 --gap 200 --seed 42"
SHORT="--device cuda --model small --batch 32 --seq 256 --epochs 1 --steps-per-epoch 40 --valid-windows 16 --lr 2e-3 --warmup 5 --gap 200 --seed 42"
timeout 120 $P train $SHORT --optimizer fira --out /tmp/warmup > $OUT/warmup.log 2>&1
echo "warmup: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
if command -v perf > /dev/null; then
  timeout 90 perf record -F 2000 -g -o /tmp/perf.data -- $P train $SHORT --optimizer fira --out /tmp/perf_fira > $OUT/perf_record.log 2>&1
  echo "perf record: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  timeout 60 perf report -i /tmp/perf.data --stdio --no-children --sort symbol --percent-limit 0.4 -g none 2>/dev/null | head -150 > $OUT/perf_fira.txt
  timeout 60 perf report -i /tmp/perf.data --stdio --children --sort symbol --percent-limit 2 -g none 2>/dev/null | head -150 > $OUT/perf_fira_children.txt
else
  echo "perf: not installed" | tee -a $OUT/summary.txt
fi
pack
train() {  # name, optimizer
  local name=$1 o=$2
  local lim=$(( $(left) - 15 )); [ $lim -lt 45 ] && { echo "$name: skipped (deadline)" | tee -a $OUT/summary.txt; return; }
  timeout $lim $P train $COMMON --optimizer $o --out $OUT/$name > $OUT/$name.log 2>&1
  echo "$name: exit $? at $(( $(date +%s) - T0 )) s; $(tail -1 $OUT/$name.log | cut -c1-300)" | tee -a $OUT/summary.txt
  rm -rf $OUT/$name/checkpoint
  pack
}
for m in ${METHODS:-adamw frugal fira galore dct}; do train $m $m; done
cat $OUT/summary.txt
