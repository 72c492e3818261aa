#!/usr/bin/env bash
# The wheels bench/gpu_check.py needs on the lent GPU machine (Python 3.12, PyTorch, OpenCV, matplotlib, SciPy
# already there; nothing can be fetched there): Ultralytics and what it imports that the image lacks, and pycocotools.
# gor_det itself travels as the working tree. Downloads into .whl/ (ignored by git; ~45 MiB, under the 64 MiB a call
# may carry). On the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_check.py --out $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
py=${PYTHON:-.venv/bin/python}
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
  ultralytics==8.4.190 ultralytics-thop==2.2.3 polars==2.1.0 polars-runtime-32==2.1.0 pycocotools==2.0.11
du -sh .whl
