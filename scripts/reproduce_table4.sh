#!/usr/bin/env bash
# The LAX paper's Table 4 (CUB-200, 20 classes): six methods, the paper's columns, and
# paper_comparison.{md,csv,tex} (the paper's numbers beside ours, Kendall tau) in the
# run's output folder. Needs CUB-200-2011 under data/CUB_200_2011/.
#
#   scripts/reproduce_table4.sh                  # the paper's GPU-sized settings
#   scripts/reproduce_table4.sh --cpu            # CPU-sized: ResNet18 width 0.25 for 10 epochs,
#                                                # LAX 5 epochs (lr 0.001), grids of 0.1
# Any further argument is a Hydra override passed to train.py (e.g. seed=1, trainer=gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; fi
CPU=(
  trainer=cpu
  model.net.width=0.25 model.max_epochs=10
  explainer_settings.lax.max_epochs=5 explainer_settings.lax.optimizer.lr=0.001
  explainer_settings.lax.val_samples=128
  metric.paper.step=0.1 metric.paper.percent_step=0.1
)
SIZE=()
if [[ "${1:-}" == "--cpu" ]]; then
  shift
  SIZE=("${CPU[@]}")
fi
exec "$PY" train.py experiment=table4_cub200 ${SIZE[@]+"${SIZE[@]}"} "$@"
