#!/bin/bash
# One device call (carry [".device", ".device4"]): do two runs of one configuration repeat bit for
# bit on CUDA? Short pretraining runs (`small`, EPOCHS×STEPS, default 1×30), each configuration
# twice: AdamW; GaLore as built; GaLore with cuBLAS's workspace fixed (CUBLAS_WORKSPACE_CONFIG,
# NVIDIA's setting for reproducible results across streams); GaLore on burn's matmul
# (EMBER_CUBLAS=off); GaLore with the host's exact SVD; Fira (SET=diag, the default). SET=methods:
# every method of the pretraining table (adamw galore fira frugal dct). Compares the final
# weights' checksums and the first training step whose loss differs (repeat_summary.txt).
PACKED=1
. scripts/lib_device.sh
EPOCHS=${EPOCHS:-1}; STEPS=${STEPS:-30}
pretrain_setup
pretrain_warmup galore
if [ "${SET:-diag}" = methods ]; then
  NAMES="adamw galore fira frugal dct"
  for k in 1 2; do
    for m in $NAMES; do pretrain ${m}_$k -- --optimizer $m; done
  done
else
  NAMES="adamw galore galore_ws galore_nocublas galore_hostsvd fira"
  for k in 1 2; do
    pretrain adamw_$k -- --optimizer adamw
    pretrain galore_$k -- --optimizer galore
    pretrain galore_ws_$k CUBLAS_WORKSPACE_CONFIG=:4096:8 -- --optimizer galore
    pretrain galore_nocublas_$k EMBER_CUBLAS=off -- --optimizer galore
    pretrain galore_hostsvd_$k -- --optimizer galore --host-svd
    pretrain fira_$k -- --optimizer fira
  done
fi
python3 - "$OUT" $NAMES > $OUT/repeat_summary.txt <<'PY'
import json, sys
out = sys.argv[1]
for name in sys.argv[2:]:
    try:
        a, b = (json.load(open(f"{out}/{name}_{k}/summary.json")) for k in (1, 2))
    except Exception as e:
        print(name, "missing:", e); continue
    la, lb = a["train_loss"], b["train_loss"]
    first = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), None)
    print(f"{name}: checksums {a['final_checksum']} {b['final_checksum']} "
          f"{'same' if a['final_checksum'] == b['final_checksum'] else 'DIFFER'}; "
          f"first differing train loss at step {first}; final valid {a['final_valid_loss']!r} {b['final_valid_loss']!r}")
PY
cat $OUT/repeat_summary.txt | tee -a $OUT/summary.txt
pack
