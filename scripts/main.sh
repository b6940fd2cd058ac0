#!/usr/bin/env bash
# Sets up the environment and runs the main job end to end: meta-trains MAML and Meta-SGD on
# sinusoid regression (MAML §5.1) and prints their evaluation (MSE ± 95% CI over held-out tasks).
# Extra arguments go to benchmarks/sinusoid.py, e.g. `--iterations 40000` for the full protocol.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python benchmarks/sinusoid.py --iterations 8000 --eval-tasks 1000 --shots 5 --out results/main_sinusoid.json "$@"
