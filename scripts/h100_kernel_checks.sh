#!/bin/bash
# One device call (carry [".device"]): `ember-bench kernels` on CUDA, bare and under burn's fusion
# backend — the kernel checks alone, for a build whose step-time figures come from an earlier
# call but whose checks changed since.
PACKED=1
. scripts/lib_device.sh
kernel_checks
kernel_checks cuda-fusion 100
pack
cat $OUT/summary.txt
