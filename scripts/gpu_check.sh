#!/usr/bin/env bash
# GPU check for cmo_rl on a CUDA machine whose python3 already has torch (e.g. the workplace's
# H200: python 3.12, torch 2.11+cu130, numpy 2.x) but not the project's other packages.
# Run from the repo root:  bash scripts/gpu_check.sh
# The missing packages come as wheels in .whl/ (not in git), fetched on a machine with PyPI:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     torchrl==0.14.1 tensordict==0.14.3 hydra-core==1.3.8 omegaconf==2.3.1 orjson pyvers \
#     hoptorch lazy_importer importlib_metadata   (+ antlr4-python3-runtime==4.9.3, built as a wheel)
# Measured on 2026-12-04: docs/performance.md, section "On a GPU".
#
# 1. installs the carried wheels (.whl/*.whl: torchrl, tensordict, hydra-core, omegaconf, antlr4,
#    pyvers, hoptorch, orjson, importlib_metadata, lazy-importer) into /tmp/site;
# 2. makes a throw-away venv /tmp/v on the same interpreter whose site-packages holds one .pth that
#    adds /tmp/site and the image's site-packages. tests/test_cuda.py starts `recipes/*.py` with
#    sys.executable and `cmo` from Path(sys.executable).with_name("cmo"), with PYTHONPATH replaced
#    by the repo root, so the packages must come from a .pth (PYTHONPATH does not reach them) and
#    `cmo` must sit next to the interpreter: /tmp/v/bin/cmo (nothing under /opt is written).
#    Where `python3 -m venv` fails, the .pth and `cmo` go into the image's own venv instead;
# 3. runs tests/test_cuda.py, then benchmarks/meta_vmap.py --device cuda (short arguments).
# Everything it prints lands in $OUT/{env,test_cuda,meta_vmap}.txt as well.
#
# Knobs for dry runs elsewhere (defaults are the device run): CMO_WHL (wheel folder),
# CMO_TESTS (pytest targets), CMO_DEVICE (benchmark device), CMO_VENV (shim venv path).
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
OUT="${OUT:-/tmp/cmo_out}"; mkdir -p "$OUT"
W="${CMO_WHL:-.whl}"; TESTS="${CMO_TESTS:-tests/test_cuda.py}"; DEV="${CMO_DEVICE:-cuda}"
V="${CMO_VENV:-/tmp/v}"; SITE="$V-site"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "$W"/*.whl || { echo "pip install of the carried wheels failed"; exit 10; }
# every site-packages folder of the image's python (its venv's, and the system ones if it includes them)
PTH="$(python3 -c "import site; print('import site; ' + '; '.join(f'site.addsitedir({p!r})' for p in ['$SITE', *site.getsitepackages()]))")"
if python3 -m venv --without-pip "$V"; then PY="$V/bin/python3"; else
  echo "python3 -m venv failed: writing the .pth and cmo into the image's venv"
  PY="$(python3 -c 'import sys; print(sys.executable)')"; fi
VSP="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$PTH" > "$VSP/zz_cmo_carry.pth" || exit 11
CMO="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")/cmo"
printf '#!%s\nimport sys\nfrom cmo_rl.cli import main\nsys.exit(main())\n' "$PY" > "$CMO" && chmod +x "$CMO" || exit 12
export PYTHONPATH="$PWD"

{ nvidia-smi -L 2>&1 | head -2
  "$PY" - <<'EOF'
import sys, numpy, torch, tensordict, torchrl, hydra, omegaconf, pandas
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "numpy", numpy.__version__,
      "pandas", pandas.__version__, "tensordict", tensordict.__version__, "torchrl",
      torchrl.__version__, "hydra", hydra.__version__, "omegaconf", omegaconf.__version__)
try:
    import torchrl._torchrl  # noqa: F401
    print("torchrl C++ extension: loaded")
except Exception as e:  # prioritized replay only; cmo_rl does not use it
    print("torchrl C++ extension: NOT loaded:", repr(e)[:300])
import cmo_rl, cmo_rl.envs.compat as c
print("cmo_rl", cmo_rl.__file__, "compat shim active:", c._finder in sys.meta_path)
EOF
} 2>&1 | tee "$OUT/env.txt"

TO=""; "$PY" -c 'import pytest_timeout' 2>/dev/null && TO="--timeout=240"
timeout 330 "$PY" -m pytest -q -p no:cacheprovider $TO $TESTS 2>&1 | tee "$OUT/test_cuda.txt"
RT=$?
timeout 150 "$PY" benchmarks/meta_vmap.py --device "$DEV" --tasks 1 4 16 --episode-length 1000 \
  --repeats 3 --meta-batch 4 --share-env MockCMDP-v0 2>&1 | tee "$OUT/meta_vmap.txt"
RB=$?
echo "== test_cuda rc=$RT  meta_vmap rc=$RB  (124 = stopped by timeout)" | tee -a "$OUT/env.txt"
[ "$RT" = 0 ] && [ "$RB" = 0 ]
