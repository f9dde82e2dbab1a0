#!/bin/bash
# One device call (carry [".device4"]) after the CUDA build (the pretraining binary in .device4/):
# issue 18's pretraining run (f32, `small`) with Fira's and FRUGAL's `R = down(G)` computed before
# the step's NaN/Inf check (`EmberOptimizer::with_early_projection`, the default) and inside each
# update (`EMBER_EARLY_PROJECTION=off`), alternated twice, then GaLore and DCT for the table.
PACKED=1
. scripts/lib_device.sh
if [ -f .device4/pretrain.gz ]; then gzip -dc .device4/pretrain.gz > /tmp/pretrain; P=/tmp/pretrain; else P=.device4/pretrain; fi
chmod +x $P
COMMON="--device cuda --model small --batch 32 --seq 256 --epochs 6 --steps-per-epoch 100 --valid-windows 256 --lr 2e-3 --warmup 40 --gap 200 --seed 42"
timeout 150 $P train --device cuda --model small --batch 32 --seq 256 --epochs 1 --steps-per-epoch 20 \
  --valid-windows 16 --lr 2e-3 --warmup 5 --gap 200 --seed 42 --optimizer fira --out /tmp/warmup > $OUT/warmup.log 2>&1
echo "warmup: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
train() {  # name, optimizer, EMBER_EARLY_PROJECTION ("" = default)
  local name=$1 o=$2 early=$3
  local lim=$(( $(left) - 15 )); [ $lim -lt 45 ] && { echo "$name: skipped (deadline)" | tee -a $OUT/summary.txt; return; }
  if [ -n "$early" ]; then export EMBER_EARLY_PROJECTION=$early; else unset EMBER_EARLY_PROJECTION; fi
  timeout $lim $P train $COMMON --optimizer $o --out $OUT/$name > $OUT/$name.log 2>&1
  echo "$name: exit $? at $(( $(date +%s) - T0 )) s; $(tail -1 $OUT/$name.log | cut -c1-300)" | tee -a $OUT/summary.txt
  rm -rf $OUT/$name/checkpoint
  unset EMBER_EARLY_PROJECTION
  pack
}
for m in ${METHODS:-adamw frugal frugal:late fira fira:late adamw.2 frugal:late.2 frugal.2 fira:late.2 fira.2 galore dct}; do
  o=${m%%[.:]*}
  case $m in
    *:late*) train ${m/:late/-late} $o off ;;
    *) train $m $o "" ;;
  esac
done
cat $OUT/summary.txt
