#!/usr/bin/env bash
# The LAX paper's Table 3 (Synthetic MNIST): six methods, the paper's columns, and
# paper_comparison.{md,csv,tex} (the paper's numbers beside ours, Kendall tau) in the
# run's output folder. Needs the MNIST IDX files under data/MNIST/raw/.
#
#   scripts/reproduce_table3.sh                  # the paper's GPU-sized settings
#   scripts/reproduce_table3.sh --cpu            # CPU-sized: demo classifier (ResNet18 width
#                                                # 0.25, stride2, 4,000 images, 6 epochs), LAX
#                                                # 8 epochs, 500 test images, grids of 0.05
#   scripts/reproduce_table3.sh --cpu dataset=synthetic_digits   # no MNIST files: the same
#                                                # recipe over scikit-learn's embedded digits
# Any further argument is a Hydra override passed to train.py (e.g. seed=1, trainer=gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; fi
CPU=(
  trainer=cpu
  dataset.n_train=4000 dataset.n_test=500 dataset.batch_size=64
  model.net.width=0.25 model.net.stem=stride2 model.optimizer.lr=0.005 model.max_epochs=6
  explainer_settings.lax.max_epochs=8 explainer_settings.lax.optimizer.lr=0.003
  explainer_settings.lax.val_samples=256
  metric.paper.step=0.05 metric.paper.percent_step=0.05
)
SIZE=()
if [[ "${1:-}" == "--cpu" ]]; then
  shift
  SIZE=("${CPU[@]}")
fi
exec "$PY" train.py experiment=table3_synthetic_mnist ${SIZE[@]+"${SIZE[@]}"} "$@"
