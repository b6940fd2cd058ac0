#!/usr/bin/env bash
# One prepared GPU run (device tool): MAML paper protocol on Omniglot, 5-way 1-shot and 20-way
# 1-shot side by side on one GPU (vmap path), each truncated to MINUTES of training.
# Expects the two Omniglot zips in .gpudata/omniglot/ (carried, git-ignored).
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 METAFIT_DATA=$PWD/.gpudata METAFIT_CACHE=/tmp/mfcache
OUT=${OUT:-results/gpu}
MINUTES=${MINUTES:-7}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu2.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')" >> "$OUT/gpu2.txt"
cat "$OUT/gpu2.txt"
# decode the zips once, before the two runs share the cache
python3 -c "from metafit.data.omniglot import load_omniglot; load_omniglot()"
for s in 5:1 20:1; do
  tag=${s/:/w}s
  timeout $(awk "BEGIN{print int($MINUTES*60+140)}") python3 benchmarks/omniglot.py --device "$DEVICE" --protocol paper --minutes-paper \
    --minutes "$MINUTES" --learners maml --settings "$s" --path vmap --threads 6 \
    --out "$OUT/omniglot_maml_paper_${tag}.json" > "$OUT/omniglot_maml_paper_${tag}.log" 2>&1 &
done
wait
tail -n 8 "$OUT"/omniglot_maml_paper_*.log
