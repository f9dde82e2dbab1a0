#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build: attention's causal
# softmax as one kernel each way (`EmberBackend::causal_softmax`, default) against burn's
# composition (`EMBER_FUSED_SOFTMAX=off`), and the 8-bit Adam kernel writing `N` in the bf16
# weight's dtype (default) against f32 `N` cast by the update (`EMBER_N_IN_WEIGHT_DTYPE=off`).
# 1. the CUDA kernel checks (the new softmax and `adam_8bit_into` checks among them);
# 2. LLaMA-1B bf16, 4×256, rank 512 (issue 13's run): a warm-up run that compiles, then
#    GaLore-8bit default / softmax off / N off alternated twice, AdamW (bf16 state) default /
#    softmax off; `EMBER_STEP_TIMING=4` in each stderr;
#    then HF transformers + galore-torch on the same model (GaLoreAdamW, GaLoreAdamW8bit);
# 3. the launches of one GaLore-8bit train step by kernel name (CubeCL's profiling logger, as
#    `scripts/h100_launches_1b.sh`; `python3 scripts/launch_table.py DIR`);
# 4. with time left (LAYERS_PRETRAIN=1): the pretraining run (f32, `small`) for AdamW and
#    GaLore with the fused softmax and without.
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
  EMBER_N_IN_WEIGHT_DTYPE=off run g8_n32_$pair 60 $M1B $G8
  cp /tmp/g8_*$pair.err $OUT/ 2>/dev/null
  pack
done
run adamw 90 $M1B $AW
EMBER_FUSED_SOFTMAX=off run adamw_composed 60 $M1B $AW
cp /tmp/adamw*.err $OUT/ 2>/dev/null; pack
# the same call's PyTorch side: HF transformers' LLaMA-1B, galore-torch GaLoreAdamW and
# GaLoreAdamW8bit, rank 512, bf16, 4×256 (scripts/anchors/hf_anchor.py)
if [ $(left) -gt 260 ]; then
  DTYPE=bf16 PYTHONUNBUFFERED=1 timeout 130 python3 .device/hf_anchor.py .device/whl 1b 4 256 512 \
    $OUT/anchor_1b_bf16_4x256.jsonl galore,galore8bit > $OUT/anchor_1b.log 2>&1
  echo "anchor 1b 4x256: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  cut -c1-400 $OUT/anchor_1b_bf16_4x256.jsonl 2>/dev/null | tee -a $OUT/summary.txt
fi
pack
unset EMBER_STEP_TIMING
ROOT=$(pwd); mkdir -p /tmp/prof
for steps in 2 6; do
  printf '[profiling.logger]\nlevel = "minimal"\nfile = "%s"\nappend = false\n' \
    "$OUT/launches_g8_$steps.log" > /tmp/prof/cubecl.toml
  (cd /tmp/prof && run g8_log$steps 60 --device cuda --model 1b --rank 512 --batch 4 --seq 256 \
    --warmup 1 --weights-dtype bf16 --steps $steps $G8)
  gzip -f "$OUT/launches_g8_$steps.log" 2>/dev/null
done
cd "$ROOT"; pack
if [ "${LAYERS_PRETRAIN:-1}" = 1 ] && [ -f .device4/pretrain.gz ]; then
  pretrain_setup
  pretrain adamw_pre EMBER_FUSED_SOFTMAX=on -- --optimizer adamw
  pretrain galore_pre EMBER_FUSED_SOFTMAX=on -- --optimizer galore
  pretrain adamw_pre_composed EMBER_FUSED_SOFTMAX=off -- --optimizer adamw
  pretrain galore_pre_composed EMBER_FUSED_SOFTMAX=off -- --optimizer galore
fi
grep -H "step timing" $OUT/*.err | tee -a $OUT/summary.txt >/dev/null
pack
cat $OUT/summary.txt
