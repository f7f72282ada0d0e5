#!/usr/bin/env bash
# The LAX paper's Table 5 (CIFAR-10): six methods, the paper's columns, and
# paper_comparison.{md,csv,tex} (the paper's numbers beside ours, Kendall tau) in the
# run's output folder. Needs the CIFAR-10 python batches under data/cifar-10-batches-py/.
#
#   scripts/reproduce_table5.sh                  # the paper's GPU-sized settings
#   scripts/reproduce_table5.sh --cpu            # CPU-sized: ResNet18 width 0.25 for 5 epochs,
#                                                # LAX 5 epochs, grids of 0.1, the first
#                                                # 1,000 test images, six methods each
# Any further argument is a Hydra override passed to train.py (e.g. seed=1, trainer=gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; fi
CPU=(
  trainer=cpu
  model.net.width=0.25 model.max_epochs=5
  explainer_settings.lax.max_epochs=5 explainer_settings.lax.val_samples=256
  metric.paper.step=0.1 metric.paper.percent_step=0.1
  evaluation.n_test=1000
)
SIZE=()
if [[ "${1:-}" == "--cpu" ]]; then
  shift
  SIZE=("${CPU[@]}")
fi
exec "$PY" train.py experiment=table5_cifar10 ${SIZE[@]+"${SIZE[@]}"} "$@"
