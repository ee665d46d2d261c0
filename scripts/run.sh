#!/usr/bin/env bash
# The main job: meta-train a constraint-aware optimizer (`cmo`), installing everything first if needed.
# Arguments are Hydra overrides, e.g.  bash scripts/run.sh meta_optimizer_type=pid device=cpu
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "${CMO_VENV:-$ROOT/.venv}/bin/cmo" "$@"
