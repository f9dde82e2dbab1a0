#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build, the follow-up of
# scripts/h100_softmax_1b.sh: the softmax kernels read their products through strides (no
# copies) and a skip-guarded GEMM's `α, β` are written by our kernel on cuBLAS's stream.
# 1. the CUDA kernel checks (strided softmax, the guarded bf16 update);
# 2. LLaMA-1B bf16, 4×256, rank 512: warm-up, GaLore-8bit default / `EMBER_FUSED_SOFTMAX=off`
#    alternated twice, AdamW (bf16 state) default / off; `EMBER_STEP_TIMING=4`;
# 3. HF transformers + galore-torch GaLoreAdamW on the same model (the same call's PyTorch side);
# 4. the pretraining table (f32, `small`): every method with the fused softmax, AdamW and
#    GaLore again with burn's composition;
# 5. the launches of one GaLore-8bit step by kernel name (`python3 scripts/launch_table.py DIR`).
PACKED=1
. scripts/lib_device.sh
kernel_checks; pack
M1B="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
G8="--optimizer galore --state-dtype int8"
AW="--optimizer adamw --state-dtype bf16"
export EMBER_STEP_TIMING=4
run warmup 240 $M1B $G8
for pair in 1 2; do
  run g8_$pair 60 $M1B $G8
  EMBER_FUSED_SOFTMAX=off run g8_composed_$pair 60 $M1B $G8
done
run adamw 90 $M1B $AW
EMBER_FUSED_SOFTMAX=off run adamw_composed 60 $M1B $AW
cp /tmp/g8_*.err /tmp/adamw*.err $OUT/ 2>/dev/null; pack
unset EMBER_STEP_TIMING
if [ $(left) -gt 300 ]; then
  DTYPE=bf16 PYTHONUNBUFFERED=1 timeout 90 python3 .device/hf_anchor.py .device/whl 1b 4 256 512 \
    $OUT/anchor_1b_bf16_4x256.jsonl galore > $OUT/anchor_1b.log 2>&1
  echo "anchor 1b 4x256: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  cut -c1-400 $OUT/anchor_1b_bf16_4x256.jsonl 2>/dev/null | tee -a $OUT/summary.txt
fi
pack
pretrain_setup
for m in adamw galore fira frugal dct adamw:off galore:off; do
  o=${m%%:*}; n=${m/:off/_composed}
  case $m in
    *:off) pretrain $n EMBER_FUSED_SOFTMAX=off -- --optimizer $o ;;
    *) pretrain $n EMBER_FUSED_SOFTMAX=on -- --optimizer $o ;;
  esac
done
ROOT=$(pwd); mkdir -p /tmp/prof
for steps in 2 6; do
  printf '[profiling.logger]\nlevel = "minimal"\nfile = "%s"\nappend = false\n' \
    "$OUT/launches_g8_$steps.log" > /tmp/prof/cubecl.toml
  (cd /tmp/prof && run g8_log$steps 40 --device cuda --model 1b --rank 512 --batch 4 --seq 256 \
    --warmup 1 --weights-dtype bf16 --steps $steps $G8)
  gzip -f "$OUT/launches_g8_$steps.log" 2>/dev/null
done
cd "$ROOT"
grep -H "step timing" $OUT/*.err | tee -a $OUT/summary.txt >/dev/null
pack
cat $OUT/summary.txt
