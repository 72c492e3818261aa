#!/bin/sh
# Re-runs the benchmark rows quoted in docs/ (seed 0), in the order they were made. Each row's result.json is kept, so
# an interrupted run continues where it stopped. Add seeds with: SEEDS="0 1" sh bench/reproduce.sh
set -e
cd "$(dirname "$0")/.."
S=bench/suites/synthetic.yaml
SEEDS=${SEEDS:-0}
run() { .venv/bin/python bench/run.py --suite $S --seeds $SEEDS --only "$@"; }
run teacher_v8s fp_v8n
run ptq_w8a8 qat_w8a8 kd_gor_w8a8 fp_v8n_ft
run kd_fixed0.5_w8a8 kd_fixed8_w8a8 kd_fixed2_w8a8
run kd_gornorm_w8a8 ul_quantize8 ul_distill_fp kd_gor_fp
run qat_w4a4 kd_gor_w4a4 ptq_w4a4
.venv/bin/python bench/run.py --suite $S --seeds 0 --only teacher_v11s -- epochs=8   # shortened: see docs/gor.md
run ekd_gor_w8a8
run qat_w4a8 kd_fixed2_w4a4
