#!/bin/sh
# Re-runs every benchmark row that research/REPORT.md and the tables in docs/ show, each at the seeds the suite gives
# it, then rebuilds those tables (research/report.py). Each row's result.json under research/results/synthetic/ is
# kept, so an interrupted run continues where it stopped; delete a row's folder there (and under
# research/out/synthetic/) to redo it. Rows re-made on another machine do not pair with committed rows of the same
# seed (research/README.md, "Reproducibility"): redo every row that reads a re-made stage-1 model.
#
# Two single-thread jobs at a time fill a 2-core machine (--jobs 2, gor.threads=1); a row starts when the rows it
# reads are trained (its seed's FP student, the teachers): about 27 h on the 2-core VM the committed rows ran on.
set -e
cd "$(dirname "$0")/.."
S=research/suites/synthetic.yaml
PY=.venv/bin/python
bash scripts/setup_env.sh
# the peer rows (Ultralytics quantize=8) need NVIDIA ModelOpt, the report's intervals scipy: the bench extra
.venv/bin/pip install --disable-pip-version-check -q -c .ci/constraints.txt -e ".[export,dev,bench]"
$PY research/run.py --suite $S --jobs 2 --reported -- gor.threads=1
$PY research/report.py
# docs/evaluation.md, "Quantizer placement": conv vs full, on this suite's own FP students
$PY research/run.py --suite research/suites/placement.yaml --jobs 2 -- gor.threads=1
$PY research/report.py --suite research/suites/placement.yaml
# research/REPORT.md, "Teacher ensembles": the teachers and their fused predictions scored on a fresh split (seed 1)
T=research/out/synthetic
$PY bench/teacher_ensemble.py --teachers $T/teacher_v8s/seed0/weights/best.pt $T/teacher_v11s/seed0/weights/best.pt \
  --data-seed 1 --static 0.75 0.6
