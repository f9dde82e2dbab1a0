#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18) on a build whose kernel checks ran in
# an earlier call: the step table REPS times (default 2), each beside its own PyTorch run (CUDA
# events and the host's clock, `ms_wall`), then pretraining (f32, `small`) after a warm-up run of
# every method it times (WARM=galore: only GaLore's, as before 2026-11-25) — PRETRAIN names the
# runs in order (a repeated method's run is NAME_2, …).
PACKED=1
. scripts/lib_device.sh
step_table_reps
pretrain_setup
RUNS=${PRETRAIN:-adamw galore fira frugal dct}
pretrain_warmup ${WARM:-$RUNS}
pretrain_runs $RUNS
pack
cat $OUT/summary.txt
