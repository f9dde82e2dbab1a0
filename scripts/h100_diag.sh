#!/bin/bash
# Diagnostics on the GPU machine (carry [".device"] after scripts/build_for_gpu.sh):
#  1. which precision burn's autotuned matmul ran the projections in (sampled error against f64,
#     and the kernel the autotuner picked, from CubeCL's autotune log);
#  2. where the optimizer step's time goes besides the engine: the kernels one AdamW and one
#     GaLore step launch, with their durations (CubeCL's profiling log).
set -u
B=.device/ember-bench
chmod +x $B
S=$OUT/diag_step.jsonl
# autotune log for every run (the cache lives in target/, so a shape is tuned once per machine)
cat > cubecl.toml <<TOML
[autotune.logger]
level = "minimal"
file = "$OUT/autotune.log"
TOML
for o in adamw galore; do
  $B step --device cuda --optimizer $o --ranks 512 --iters 20 --refreshes 0 >> $S 2>> $OUT/diag.log
done
# one config with the per-kernel profile (profiling syncs each kernel: durations, not step time)
cat > cubecl.toml <<TOML
[profiling.logger]
level = "basic"
file = "$OUT/profile_PLACE.log"
TOML
for o in adamw galore; do
  sed -i "s#profile_[a-z]*.log#profile_$o.log#" cubecl.toml
  $B step --device cuda --optimizer $o --shapes 4096x11008 --ranks 512 --iters 3 --warmup 1 --refreshes 0 > $OUT/profiled_$o.jsonl 2>> $OUT/diag.log
done
rm -f cubecl.toml
python3 .device/step_summary.py $OUT/diag_step.jsonl
grep -c . $OUT/autotune.log 2>/dev/null; grep -o "Fastest result [a-z_]*" $OUT/autotune.log 2>/dev/null | sort | uniq -c
tail -3 $OUT/diag.log
