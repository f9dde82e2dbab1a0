#!/bin/bash
# One device call (issue 18): PyTorch's products at an odd width on views against the full padded
# width (scripts/anchors/extent_probe.py) — whether an extent rounded up to the pitch takes cuBLAS
# off its slow path at 2048×5461.
mkdir -p $OUT
timeout 120 python3 scripts/anchors/extent_probe.py $OUT/extent_probe.jsonl > $OUT/extent_probe.log 2>&1
echo "extent probe: exit $?"; cat $OUT/extent_probe.jsonl; tail -3 $OUT/extent_probe.log
