#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh), runs ruff (lint + format check) and the default test suite.
# Slow tests are excluded by default (pyproject addopts); run them with: scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export METAFIT_DATA=${METAFIT_DATA:-$(cd .. && pwd)/shared/data}
# lint and format check first (ruff, configured in pyproject.toml), then the suite
.venv/bin/ruff check src tests benchmarks examples scripts
.venv/bin/ruff format --check src tests benchmarks examples scripts
exec .venv/bin/python -m pytest -q "$@"
