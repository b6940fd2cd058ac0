#!/usr/bin/env bash
# One prepared GPU run (device tool): the speed table on CUDA and a truncated paper-protocol
# MAML Omniglot run. Expects the two Omniglot zips in .gpudata/omniglot/ (carried, git-ignored).
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 METAFIT_DATA=$PWD/.gpudata METAFIT_CACHE=/tmp/mfcache
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
timeout 110 python3 benchmarks/speed.py --device cuda --tasknorm --setups omniglot5 omniglot20 sinusoid protonet \
  --rounds 5 --out "$OUT/speed_cuda.json" 2>&1 | grep -v -i gym | tee "$OUT/speed_cuda.log"
timeout 430 python3 benchmarks/omniglot.py --device cuda --protocol paper --minutes-paper --minutes 2.5 \
  --learners maml --settings 5:1 20:1 --path auto --threads 8 --out "$OUT/omniglot_maml_cuda.json" 2>&1 | tee "$OUT/omniglot_maml_cuda.log"
