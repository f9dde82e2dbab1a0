#!/bin/bash
# ember-bench measure on CUDA: the real LLaMA-style model, measured bytes, peak device memory, step times.
set -u
B=.device/ember-bench
chmod +x $B
$B measure --device cuda --model 130m --optimizer all --steps 5 --warmup 2 --batch 8 --seq 256 > $OUT/measure_130m.md 2>> $OUT/measure.log
for o in adamw galore dct; do
  $B measure --device cuda --model 350m --optimizer $o --steps 5 --warmup 2 --batch 8 --seq 256 --json > $OUT/measure_350m_$o.json 2>> $OUT/measure.log
done
cat $OUT/measure_130m.md; tail -3 $OUT/measure.log
