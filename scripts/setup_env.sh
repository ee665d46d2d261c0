#!/usr/bin/env bash
# Create .venv and install cmo_rl with everything it needs, once.
#
# Idempotent: a stamp file records a hash of this script and pyproject.toml; when neither changed
# the script returns at once. Why the install has this shape (see docs/installation.md):
#   1. torch is installed first and pinned (2.13.0). Any looser requirement, met while torch is not
#      installed yet, makes pip pull a multi-GB CUDA build.
#   2. safety-gymnasium 1.0.0 (the only release on PyPI) pins pygame==2.1.0, which does not build on
#      Python 3.11, and gymnasium-robotics asks numpy<1.24. So the safety-gymnasium family is
#      installed with --no-deps, and its real run-time needs are listed explicitly below.
#   3. numpy<2: numpy 2 breaks the Car and Doggo robots of safety-gymnasium 1.0.0.
#   4. Then cmo_rl itself, editable, with --no-deps: its pyproject lists the same pins for users who
#      install by hand, but pip's resolver would reject the safety-gymnasium family's stale pins.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CMO_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.cmo_rl-installed"
HASH="$(cat "$ROOT/scripts/setup_env.sh" "$ROOT/scripts/constraints.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
  exit 0
fi

echo "[setup] installing cmo_rl into $VENV (one time, a few minutes)" >&2
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "cmo_rl needs Python >= 3.10"'
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q -c "$ROOT/scripts/constraints.txt")

"$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip setuptools wheel
# 1. torch first, pinned.
"${PIP[@]}" "torch==2.13.0"
# 2. the safety-gymnasium family, without their stale pins ...
"${PIP[@]}" --no-deps \
  "safety-gymnasium==1.0.0" "gymnasium==0.28.1" "mujoco==2.3.3" \
  "gymnasium-robotics==1.2.2" "pettingzoo==1.23.1"
# ... plus what they really import at run time, and 3. numpy<2.
"${PIP[@]}" \
  "numpy>=1.23,<2" "pygame>=2.5" "xmltodict" "imageio" "glfw" "pyopengl" "jax-jumpy" \
  "farama-notifications" "cloudpickle" "typing-extensions" "absl-py"
# the TorchRL stack, the config/logging stack and the dev tools.
"${PIP[@]}" \
  "torchrl==0.14.1" "tensordict==0.14.3" "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" \
  "tensorboard>=2.14" "matplotlib>=3.7" "tqdm>=4.66" "pandas>=2.0" \
  "pytest>=8" "pytest-timeout" "ruff>=0.6"
# the docs extra: the site and its generated API reference (mkdocs.yml; tests/test_docs.py builds
# it with --strict). Same pins as pyproject's `docs` extra.
"${PIP[@]}" \
  "mkdocs==1.6.1" "mkdocstrings[python]==1.0.8" "mkdocstrings-python==2.0.11" "griffelib==2.4.1" \
  "mkdocs-gen-files==0.6.1" "mkdocs-literate-nav==0.6.3"
# the scaling extra (docs/scaling.md): Ray for distributed collection, Hydra's joblib (local)
# and submitit (SLURM) launchers for multirun sweeps. Same list as pyproject's `scale` extra.
"${PIP[@]}" "ray>=2.40,<3" "hydra-joblib-launcher>=1.2,<1.3" "hydra-submitit-launcher>=1.2,<1.3"
# 4. the project itself.
"${PIP[@]}" --no-deps -e "$ROOT"

"$VENV/bin/python" - <<'PY'
import cmo_rl.envs.compat  # noqa: F401  (installs the Python 3.11 import shim)
import safety_gymnasium, torchrl, tensordict, torch
import ray, hydra_plugins.hydra_joblib_launcher, hydra_plugins.hydra_submitit_launcher  # noqa: F401
import mkdocs, mkdocstrings_handlers.python, mkdocs_gen_files, mkdocs_literate_nav  # noqa: F401
print(f"[setup] ok: torch {torch.__version__}, torchrl {torchrl.__version__}, "
      f"tensordict {tensordict.__version__}, safety-gymnasium {safety_gymnasium.__version__}, "
      f"ray {ray.__version__}")
PY
echo "$HASH" > "$STAMP"
