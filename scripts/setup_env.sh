#!/usr/bin/env bash
# Create .venv/ in the repo root (if missing) and install gor_det with its pinned dependencies.
# Re-running is cheap: the install is skipped while pyproject.toml and the constraints are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.gor_det_installed
want=$(cat pyproject.toml .ci/constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install --disable-pip-version-check -q -c .ci/constraints.txt -e ".[export,dev]"
  echo "$want" > "$stamp"
fi
