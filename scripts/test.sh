#!/usr/bin/env bash
# The test suite: installs everything first if needed, then lint + format check + pytest.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -m "not slow" -k lagrangian
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
PY="${CMO_VENV:-$ROOT/.venv}/bin/python"
"$PY" -m ruff check .
"$PY" -m ruff format --check .
exec "$PY" -m pytest "$@"
