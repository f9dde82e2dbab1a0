#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18): kernel checks bare and under burn's
# fusion backend (with Fira's repeat check: the fused update at the pretraining shapes, run again
# and again on the same inputs, bit for bit), then RUNS (default 4) Fira pretraining runs of the
# same configuration (f32, `small`, after a warm-up) and each run's final weights' checksum and
# loss: runs of one build should repeat bit for bit.
PACKED=1
. scripts/lib_device.sh
kernel_checks_both
grep -i "repeats\|bit for bit" $OUT/kernels_cuda.log | head -8 | tee -a $OUT/summary.txt
pretrain_setup
pretrain_warmup fira
runs=(); for k in $(seq 1 ${RUNS:-4}); do runs+=(fira); done
pretrain_runs "${runs[@]}"
for d in $OUT/fira*/; do
  python3 -c "import json,sys; s=json.load(open(sys.argv[1]+'/summary.json')); print(sys.argv[1].rstrip('/').split('/')[-1], s['final_checksum'], s['final_valid_loss'])" $d
done | tee -a $OUT/summary.txt
pack
cat $OUT/summary.txt
