#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh) and runs the default test suite.
# Slow tests are excluded by default (pyproject addopts); run them with: scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export METAFIT_DATA=${METAFIT_DATA:-$(cd .. && pwd)/shared/data}
exec .venv/bin/python -m pytest -q "$@"
