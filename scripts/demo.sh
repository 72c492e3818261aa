#!/usr/bin/env bash
# The main job on built-in synthetic data, offline, on CPU:
#   synthetic data -> FP YOLOv8s teacher -> FP YOLOv8n baseline -> W8A8 QAT+KD+GoR YOLOv8n student
#   -> COCO eval (pycocotools) of every model -> export of the student (ONNX Q/DQ, ONNX FP, NCNN FP/INT8,
#   ONNX Runtime CPU INT8) + eval.
# Extra arguments are passed to every training run (e.g. `bash scripts/demo.sh epochs=2` for a smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
DATA=datasets/synth_demo/data.yaml
$PY tools/make_synthetic.py --preset demo --out datasets/synth_demo
$PY tools/train_det.py --cfg cfg/demo_teacher.yaml "$@"
$PY tools/train_det.py --cfg cfg/demo_student_fp.yaml "$@"
$PY tools/train_det.py --cfg cfg/demo_student.yaml "$@"
STUDENT=runs/demo/student_qat_kd_gor/weights/best.pt
$PY -c "from gor_det.engine.plots import plot_gor_curves as p; p('runs/demo/student_qat_kd_gor/results.csv', 'runs/demo/student_qat_kd_gor/gor_curves.png')"
$PY tools/export_det.py --model "$STUDENT" --data "$DATA" --out runs/demo/export
$PY tools/val_det.py --data "$DATA" --out runs/demo/eval --table runs/demo/results.md \
  --model runs/demo/teacher/weights/best.pt runs/demo/student_fp/weights/best.pt "$STUDENT" \
          runs/demo/export/best_qdq.onnx runs/demo/export/best_fp32.onnx runs/demo/export/best_ncnn_int8 \
          runs/demo/export/best_ort_int8.onnx
echo "mAP table: runs/demo/results.md"
