#!/bin/bash
# One device call (carry [".device", ".device4"]): Fira's residual `G − α·up(R)` computed with
# the down projection (one cuBLAS window for both products, in place over `G`) against the
# residual's `up(R)` at the update (EMBER_RESIDUAL_WITH_DOWN=off) — kernel checks bare and under
# fusion; Fira's step at 4096×11008 r512 both ways; pretraining (f32, `small`, after a warm-up
# run) alternating the two with AdamW around them.
PACKED=1
. scripts/lib_device.sh
kernel_checks_both
step_run $OUT/x/fira_on -- --optimizer fira --shapes 4096x11008,2048x2048 --ranks 512 --iters 30 --refreshes 0
step_run $OUT/x/fira_off EMBER_RESIDUAL_WITH_DOWN=off -- --optimizer fira --shapes 4096x11008,2048x2048 --ranks 512 --iters 30 --refreshes 0
step_summary $OUT/x step_ms step_unchecked_ms engine_ms
pack
pretrain_setup
pretrain_warmup fira
pretrain adamw -- --optimizer adamw
pretrain fira -- --optimizer fira
pretrain fira_off EMBER_RESIDUAL_WITH_DOWN=off -- --optimizer fira
pretrain fira_2 -- --optimizer fira
pretrain fira_off_2 EMBER_RESIDUAL_WITH_DOWN=off -- --optimizer fira
pretrain adamw_2 -- --optimizer adamw
pack
cat $OUT/summary.txt
