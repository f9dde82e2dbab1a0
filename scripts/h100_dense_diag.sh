#!/bin/bash
# One device call (carry [".device"], the build of scripts/h100_dense.sh): where the LLaMA-1B
# train step's time goes once the linear layers run on cuBLAS (issues 13, 18). bf16 weights,
# 4×256 tokens, 8 timed steps, stage traces (phase times of every step, burn's pools):
#  1. GaLore-8bit r512 and AdamW (bf16 state), each with cuBLAS (default) and EMBER_CUBLAS=off;
#  2. AdamW at 8×256 (twice the tokens: a step bound by the GPU doubles, one bound by the host
#     does not) and under burn's fusion backend (`--device cuda-fusion`);
#  3. Nsight Compute (`ncu`, gpu__time_duration) over AdamW's two steps (one warm-up, one timed):
#     the GPU's busy time per step by kernel, against the step's wall time.
# Raw output: $OUT/res.tgz and summary.txt.
JSONL=measure.jsonl
PACKED=1
. scripts/lib_device.sh
M="--model 1b --rank 512 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
G8="--optimizer galore --state-dtype int8"
AW="--optimizer adamw --state-dtype bf16"
run g8_cublas 120 --device cuda $M --batch 4 $G8 --stage-trace $OUT/trace_g8_cublas.jsonl
pack
export EMBER_CUBLAS=off
run g8_burn 120 --device cuda $M --batch 4 $G8 --stage-trace $OUT/trace_g8_burn.jsonl
run adamw_burn 90 --device cuda $M --batch 4 $AW --stage-trace $OUT/trace_adamw_burn.jsonl
unset EMBER_CUBLAS
run adamw_cublas 90 --device cuda $M --batch 4 $AW --stage-trace $OUT/trace_adamw_cublas.jsonl
pack
run adamw_cublas_8x256 90 --device cuda $M --batch 8 $AW
run adamw_fusion 120 --device cuda-fusion $M --batch 4 $AW
pack
l=$(left)
if [ $l -gt 60 ]; then
  timeout $((l - 20)) /usr/local/cuda/bin/ncu --metrics gpu__time_duration.sum --csv --log-file /tmp/ncu.csv \
    $B measure --device cuda --model 1b --seq 256 --steps 1 --warmup 1 --weights-dtype bf16 --batch 4 $AW \
    > /tmp/ncu_measure.txt 2> /tmp/ncu_measure.err
  echo "ncu adamw: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  gzip -c /tmp/ncu.csv > $OUT/ncu.csv.gz; tail -5 /tmp/ncu_measure.err > $OUT/ncu_measure.err
  python3 - >> $OUT/summary.txt <<'PY'
import collections, csv
hdr, agg, total, n = None, collections.defaultdict(lambda: [0, 0.0]), 0.0, 0
for r in csv.reader(open("/tmp/ncu.csv")):
    if "Kernel Name" in r:
        hdr = r; continue
    if not hdr or len(r) != len(hdr): continue
    d = dict(zip(hdr, r))
    if d.get("Metric Name") != "gpu__time_duration.sum": continue
    v = float(d["Metric Value"].replace(",", "")) / 1e6  # ns -> ms
    name = d["Kernel Name"]
    key = "cublas/cutlass" if ("gemm" in name.lower() or "cutlass" in name.lower() or "sm90" in name) else name[:70]
    agg[key][0] += 1; agg[key][1] += v; total += v; n += 1
print(f"ncu: {n} kernels, {total:.1f} ms GPU time in all (2 steps + model init)")
for k, (c, t) in sorted(agg.items(), key=lambda x: -x[1][1])[:25]:
    print(f"{t:9.2f} ms {c:6d} launches  {k}")
PY
fi
pack
cat $OUT/summary.txt
