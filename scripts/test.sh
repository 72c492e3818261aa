#!/usr/bin/env bash
# Install (if needed) and run the whole test suite on CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check gor_det tools bench research tests
exec .venv/bin/python -m pytest -q "$@"
