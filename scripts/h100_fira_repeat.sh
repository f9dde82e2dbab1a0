#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18): kernel checks bare and under burn's
# fusion backend (with Fira's repeat check: the fused update at the pretraining shapes, run again
# and again on the same inputs, bit for bit), then RUNS (default 4) Fira pretraining runs of the
# same configuration (f32, `small`, after a warm-up) and each run's final weights' checksum and
# loss: runs of one build should repeat bit for bit. CHECKS=0 skips the kernel checks; FIRA_ENV
# (e.g. EMBER_RESIDUAL_WITH_DOWN=off) sets variables for every run.
PACKED=1
. scripts/lib_device.sh
if [ "${CHECKS:-1}" = 1 ]; then
  kernel_checks_both
  grep -i "repeats\|bit for bit" $OUT/kernels_cuda.log | head -8 | tee -a $OUT/summary.txt
fi
pretrain_setup
pretrain_warmup fira
for k in $(seq 1 ${RUNS:-4}); do
  name=fira; [ $k -gt 1 ] && name=fira_$k
  pretrain $name ${FIRA_ENV:-} -- --optimizer fira
done
for d in $OUT/fira*/; do
  python3 -c "import json,sys; s=json.load(open(sys.argv[1]+'/summary.json')); print(sys.argv[1].rstrip('/').split('/')[-1], s['final_checksum'], s['final_valid_loss'])" $d
done | tee -a $OUT/summary.txt
pack
cat $OUT/summary.txt
