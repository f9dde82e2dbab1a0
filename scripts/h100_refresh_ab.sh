#!/bin/bash
# One device call (carry [".device", ".device4"]): the device projector's refresh with one read-back
# per matrix and the r×r eigendecomposition on one thread, against the build before.
#   .device/ember-bench.{xz,gz}, .device4/pretrain.{xz,gz}     the build under test
#   .device/old/ember-bench.xz, .device4/pretrain-old.xz        the build before (`strip`ped)
# (a call carries at most 64 MiB with the working tree: PRETRAIN=0 leaves step 2 out, so that
# only the two ember-bench binaries travel; PRETRAIN_ONLY=1 leaves steps 1 and 3 out)
# 1. `ember-bench step --refreshes 20` at the pretraining model's shapes (512×512, 512×1376, r128),
#    alternating new / old / new with EMBER_EIG_PAR=global, twice ($OUT/x/refresh_*.jsonl:
#    refresh_device_ms, the device projector's warm refresh);
# 2. pretraining (the table's run) alternating new and old: fira, galore, adamw, fira;
# 3. TABLES=1 (after step 1): issue 18's step table once on the new build (carry the anchors and the wheel).
PACKED=1
. scripts/lib_device.sh
mkdir -p $OUT/x
if [ "${PRETRAIN_ONLY:-0}" != 1 ]; then
xz -dc .device/old/ember-bench.xz > /tmp/ember-bench-old && chmod +x /tmp/ember-bench-old
for k in 1 2; do
  for v in new old global; do
    bin=$B; envs=(EMBER_NONE=1)
    [ $v = old ] && bin=/tmp/ember-bench-old
    [ $v = global ] && envs=(EMBER_EIG_PAR=global)
    env "${envs[@]}" timeout 90 $bin step --device cuda --optimizer galore --shapes 512x512,512x1376 \
      --ranks 128 --iters 5 --warmup 2 --refreshes 20 > $OUT/x/refresh_${v}_$k.jsonl 2> $OUT/x/refresh_${v}_$k.err
    echo "refresh $v $k: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  done
done
step_summary $OUT/x refresh_device_ms refresh_ms device_energy_ratio
pack
[ "${TABLES:-0}" = 1 ] && step_table_reps 1
fi
if [ "${PRETRAIN:-1}" = 1 ]; then
  pretrain_setup
  xz -dc .device4/pretrain-old.xz > /tmp/pretrain-old && chmod +x /tmp/pretrain-old
  pretrain_warmup galore
  P_NEW=$P
  for m in fira galore adamw fira; do
    n=$m; [ -d $OUT/$n ] && n=${m}_2
    P=$P_NEW; pretrain $n -- --optimizer $m
    P=/tmp/pretrain-old; pretrain ${n}_old -- --optimizer $m
  done
fi
pack
cat $OUT/summary.txt
