#!/bin/bash
# One device call (carry [".device", ".device4"]): an f32 weight's update GEMM on f16 tensor
# cores (issue 18; `EmberBackend::f16_update_operands`, `EMBER_UPDATE_OPERANDS=tf32` for the
# comparison). Most important first:
#  1. kernel checks on CUDA, bare (the f16-N Adam and update rows are new);
#  2. GaLore r512 steps at 4096×11008, 2048×5461, 4096², 2048², f32: f16 operands (default),
#     TF32 operands, and f16 with the host's synchronization (EMBER_SYNC=host; the default now
#     waits on CubeCL's device thread, `ember_kernels::device_thread::sync`), each with the last
#     step's window timeline (EMBER_CUBLAS_TIMELINE=1) on stderr; bf16 with both synchronizations;
#  3. the step table (f32: GaLore r128/512/1024, AdamW; bf16: GaLore r512, AdamW with bf16
#     state) beside the PyTorch anchor of the same call;
#  4. pretraining (f32, `small`): AdamW, GaLore, Fira, FRUGAL, DCT after a warm-up run, and
#     GaLore with TF32 operands (losses and tokens/s);
#  5. kernel checks under burn's fusion backend.
PACKED=1
. scripts/lib_device.sh
kernel_checks
grep -E 'f16' $OUT/kernels_cuda.log | head -8 | tee -a $OUT/summary.txt
pack
for v in f16 tf32 hostsync bf16 bf16_hostsync; do
  envs="EMBER_CUBLAS_TIMELINE=1"; dt=f32
  case $v in
    tf32) envs="$envs EMBER_UPDATE_OPERANDS=tf32" ;;
    hostsync) envs="$envs EMBER_SYNC=host" ;;
    bf16) dt=bf16 ;;
    bf16_hostsync) envs="$envs EMBER_SYNC=host"; dt=bf16 ;;
  esac
  env $envs timeout 90 $B step --device cuda --optimizer galore \
    --shapes 4096x11008,2048x5461,4096x4096,2048x2048 --ranks 512 --iters 30 --refreshes 0 \
    --weights-dtype $dt > $OUT/ops_${v}_galore.jsonl 2> $OUT/ops_${v}_galore.err
  echo "variant $v galore: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
done
python3 - $OUT <<'PY' | tee -a $OUT/summary.txt
import glob, json, os, sys
d = sys.argv[1]
for ops in ("f16", "tf32", "hostsync", "bf16", "bf16_hostsync"):
    for line in open(os.path.join(d, f"ops_{ops}_galore.jsonl")):
        r = json.loads(line)
        print(ops, r["m"], r["n"], {k: (round(r[k], 3) if isinstance(r.get(k), float) else r.get(k))
              for k in ("step_ms", "step_unchecked_ms", "engine_ms", "up_rel_err", "update_rel_err", "update_operands")})
    for line in open(os.path.join(d, f"ops_{ops}_galore.err")):
        if line.startswith('{"timeline": "engine"'):
            t = json.loads(line)
            p = t["points"]
            gemms = [round(p[i + 2][1] - p[i + 1][1], 4) for i in range(0, len(p) - 2, 3)]
            print(ops, t["m"], t["n"], "engine wall", t["wall_ms"], "GEMMs (signaled to done)", gemms)
PY
pack
step_tables $OUT
pack
pretrain_setup
pretrain_warmup galore
pretrain adamw -- --optimizer adamw
pretrain galore -- --optimizer galore
pretrain galore_tf32 EMBER_UPDATE_OPERANDS=tf32 -- --optimizer galore
pretrain fira -- --optimizer fira
pretrain frugal -- --optimizer frugal
pretrain dct -- --optimizer dct
pack
if [ $(left) -gt 100 ]; then
  kernel_checks cuda-fusion 90
fi
pack
cat $OUT/summary.txt
