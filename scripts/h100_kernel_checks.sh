#!/bin/bash
# One device call (carry [".device"]): `ember-bench kernels` on CUDA, bare and under burn's fusion
# backend — the kernel checks alone, for a build whose step-time figures come from an earlier
# call but whose checks changed since.
PACKED=1
. scripts/lib_device.sh
kernel_checks
timeout 100 $B kernels --device cuda-fusion > $OUT/kernels_cuda-fusion.log 2>&1
echo "kernels cuda-fusion: exit $? at $(( $(date +%s) - T0 )) s; $(grep -c '^ok ' $OUT/kernels_cuda-fusion.log) ok" | tee -a $OUT/summary.txt
grep -v '^ok ' $OUT/kernels_cuda-fusion.log | head -10 | tee -a $OUT/summary.txt
pack
cat $OUT/summary.txt
