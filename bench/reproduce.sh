#!/bin/sh
# Re-runs the benchmark rows quoted in docs/ (seed 0). Stage 1 (FP models from scratch) uses 2 torch threads; the
# stage-2 rows were run as two single-thread streams side by side on the 2-core machine (gor.threads=1), which is what
# their s/iteration column measures. Each row's result.json is kept, so an interrupted run continues where it stopped.
set -e
cd "$(dirname "$0")/.."
S=bench/suites/synthetic.yaml
.venv/bin/python bench/run.py --suite $S --seeds 0 --only teacher_v8s fp_v8n
for r in ptq_w8a8 qat_w8a8 fp_v8n_ft qat_w4a4 ul_quantize8 ul_distill_fp kd_gor_fp ptq_w4a4 qat_w4a8 \
         kd_gor_w8a8 kd_fixed2_w8a8 kd_fixed0.5_w8a8 kd_fixed8_w8a8 kd_gornorm_w8a8 kd_gor_w4a4 kd_fixed2_w4a4; do
  .venv/bin/python bench/run.py --suite $S --seeds 0 --only $r -- gor.threads=1
done
