#!/usr/bin/env bash
# Creates a virtual environment and installs metafit into it.
#
# The pinned CPU build of torch goes in FIRST: on these machines `pip install torch==2.13.0`
# takes a local CPU wheel in seconds, while a bare `torch` requirement with no torch installed
# would pull a multi-GB CUDA build. Override for your machine, e.g.
#   METAFIT_TORCH="torch==2.5.1" bash scripts/setup.sh
#   METAFIT_TORCH="torch --index-url https://download.pytorch.org/whl/cu124" bash scripts/setup.sh
#   METAFIT_TORCH=skip bash scripts/setup.sh      # keep the torch that is already installed
# Environment: VENV (default .venv), METAFIT_EXTRAS (default "all,test").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${METAFIT_TORCH:-torch==2.13.0}
EXTRAS=${METAFIT_EXTRAS:-all,test}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$TORCH_SPEC" != "skip" ]; then
  # shellcheck disable=SC2086
  $PIP install -q $TORCH_SPEC 2>&1 | grep -v "^WARNING: Location" || true
fi
$VENV/bin/python -c "import torch; print('torch', torch.__version__)"
$PIP install -q -e ".[${EXTRAS}]" 2>&1 | grep -v "^WARNING: Location" || true
# Parquet support (the `parquet` extra) on its own line: an index without pyarrow must not stop the
# rest of the set-up; the Parquet tests skip without it
$PIP install -q "pyarrow>=12" 2>&1 | grep -v "^WARNING: Location" || true
$VENV/bin/python -c "import metafit; print('metafit', metafit.__version__)"
