#!/bin/sh
# Re-runs every benchmark row whose numbers docs/ quote from bench/results/synthetic/ (bench/fill_docs.py rebuilds
# the tables from there). Each row's result.json is kept, so an interrupted run continues where it stopped; delete a
# row's folder under bench/results/synthetic/ (and bench/out/synthetic/) to redo it.
#
# Two single-thread jobs at a time fill the 2-core machine (--jobs 2, gor.threads=1); a row starts when the rows it
# reads are trained (its seed's FP student, the teachers). Time on the 2-core VM: about 9.5 h for the key rows at
# five seeds, 3 h for their two more seeds, 1 h for fixed-at-GoR and Ultralytics' KD at seven, 1.5 h for EKD with
# the default balance and the falling fixed weight at seven, 5 h for the W4A4 rows, 4.5 h for the W4A4 8-epoch rows
# at five seeds (and two at a sixth), 2 h for the rest at two seeds.
set -e
cd "$(dirname "$0")/.."
S=bench/suites/synthetic.yaml
PY=.venv/bin/python
bash scripts/setup_env.sh
# the peer rows (Ultralytics quantize=8) need NVIDIA ModelOpt: the bench extra
.venv/bin/pip install --disable-pip-version-check -q -c .ci/constraints.txt -e ".[export,dev,bench]"
# The key comparisons of the issues' targets, seeds 0-4 (the teachers are trained once, seed 0)
$PY bench/run.py --suite $S --jobs 2 --seeds 0 1 2 3 4 --only teacher_v8s fp_v8n fp_v8n_ft ptq_w8a8 qat_w8a8 \
  ul_quantize8 kd_fixed0.2_w8a8 kd_fixed0.5_w8a8 kd_fixed1_w8a8 kd_fixed2_w8a8 kd_fixed8_w8a8 kd_gorgrad_w8a8 \
  kd_gorlook_w8a8 kd_gor_w8a8 kd_gorlooksplit_w8a8 teacher_v11s ekd_gorgrad_w8a8 ekd_gorgrad_mt_w8a8 \
  ekd_gorgrad_mtw_w8a8 ekd_gorgrad_mtw_v8sfeat_w8a8 kd_gorgradslow_w8a8 ekd_gorgradslow_mtw_v8sfeat_w8a8 \
  -- gor.threads=1
# The main target's rows (GoR as it ships against the whole fixed-weight sweep, FP and QAT without KD), the
# recommended EKD, the lookahead forms and Ultralytics' quantize=8 at two more seeds: each needs its own stage-1 FP
# student
$PY bench/run.py --suite $S --jobs 2 --seeds 5 6 --only fp_v8n fp_v8n_ft qat_w8a8 kd_fixed0.2_w8a8 kd_fixed0.5_w8a8 \
  kd_fixed1_w8a8 kd_fixed2_w8a8 kd_fixed8_w8a8 kd_gorgradslow_w8a8 ekd_gorgradslow_mtw_v8sfeat_w8a8 \
  kd_gorlooksplit_w8a8 kd_gorlook_w8a8 ul_quantize8 -- gor.threads=1
# Where GoR's W8A8 shortfall comes from (fixed at the weights it settles at) and Ultralytics' KD + quantize=8 (the
# peer of the GoR >= Ultralytics + 1 target), seeds 0-6
$PY bench/run.py --suite $S --jobs 2 --seeds 0 1 2 3 4 5 6 --only kd_fixedgor_w8a8 ul_distill_q8 -- gor.threads=1
# EKD with the default balance (gor_lookahead, next): the recommended ensemble; a fixed KD weight falling from 1 to
# 0.2 (is a falling weight what GoR gains by?); seeds 0-6
$PY bench/run.py --suite $S --jobs 2 --seeds 0 1 2 3 4 5 6 --only ekd_gorlook_mtw_v8sfeat_w8a8 kd_fixed1to0.2_w8a8 \
  -- gor.threads=1
# EKD with per-anchor label-agreement shares: four seeds (below the fixed shares on each of them)
$PY bench/run.py --suite $S --jobs 2 --seeds 0 1 2 3 --only ekd_gorgrad_gtw_w8a8 -- gor.threads=1
# W4A4: QAT, the sweep, gor_grad at lr 0.001 and both lookaheads (next: GoR as it ships), seeds 0-6; fixed at the
# weights gor_grad settles at, seeds 0-6; gor_grad at lr 0.01, seeds 0-3
$PY bench/run.py --suite $S --jobs 2 --seeds 0 1 2 3 4 5 6 --only qat_w4a4 kd_fixed0.2_w4a4 kd_fixed0.5_w4a4 \
  kd_fixed1_w4a4 kd_fixed2_w4a4 kd_gorgradslow_w4a4 kd_gorlooksplit_w4a4 kd_gorlook_w4a4 -- gor.threads=1
$PY bench/run.py --suite $S --jobs 2 --seeds 0 1 2 3 4 5 6 --only kd_fixedgor_w4a4 -- gor.threads=1
$PY bench/run.py --suite $S --jobs 2 --seeds 0 1 2 3 --only kd_gorgrad_w4a4 -- gor.threads=1
# W4A4 with 8 fine-tuning epochs instead of 4: QAT, the sweep w_kd 0.2 / 0.5 / 1 and GoR as it ships, seeds 0-4;
# GoR and w_kd 0.2 at seed 5 too (the others' seed 5 was cut short; docs/gor.md compares on the seeds rows share)
$PY bench/run.py --suite $S --jobs 2 --seeds 0 1 2 3 4 --only qat_w4a4_e8 kd_fixed0.2_w4a4_e8 kd_fixed0.5_w4a4_e8 \
  kd_fixed1_w4a4_e8 kd_gorlook_w4a4_e8 -- gor.threads=1
$PY bench/run.py --suite $S --jobs 2 --seeds 5 --only kd_fixed0.2_w4a4_e8 kd_gorlook_w4a4_e8 -- gor.threads=1
# The other rows, seeds 0-1: bit widths, FP KD, Ultralytics' KD, W4A4 EKD, EKD at a fixed weight
$PY bench/run.py --suite $S --jobs 2 --seeds 0 1 --only qat_w4a8 ptq_w4a4 ul_distill_fp kd_gorgrad_fp \
  ekd_gorgrad_mtw_w4a4 ekd_gorgradslow_mtw_v8sfeat_w4a4 ekd_fixed0.5_mtw_w8a8 \
  -- gor.threads=1
$PY bench/fill_docs.py
# docs/gor.md, "Teacher ensembles": the teachers and their fused predictions scored on a fresh split (seed 1)
T=bench/out/synthetic
$PY bench/teacher_ensemble.py --teachers $T/teacher_v8s/seed0/weights/best.pt $T/teacher_v11s/seed0/weights/best.pt \
  --data-seed 1 --static 0.75 0.6
