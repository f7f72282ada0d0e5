#!/usr/bin/env bash
# The metric-throughput table on a CUDA device: torchvision ResNet-18 and ResNet-50 at 224 px
# (random weights), each metric's img/s with its % of the model's own forward img/s (the roofline).
# One command, <= 5 minutes on one modern GPU:  bash scripts/bench_gpu.sh [extra bench.py args]
# The fast-forward rows (plain, channels_last, bf16 autocast) come with each table; compile is
# left out (--no-compile) to stay within the 5 minutes.
# Output: outputs/bench/gpu-<timestamp>/<model>/bench.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "bench_gpu.sh: no CUDA device visible to torch ($PY); run it on a machine with a GPU" \
       "(or use 'make bench' for the CPU table)" >&2
  exit 2
fi
OUT=outputs/bench/gpu-$(date +%Y-%m-%d_%H-%M-%S)
"$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
for MODEL in resnet18 resnet50; do
  echo "=== $MODEL 224px ==="
  timeout 150 "$PY" scripts/bench.py --device cuda --model "$MODEL" --size 224 --threads 0 --no-compile \
    --out "$OUT/$MODEL" "$@"
done
echo "tables: $OUT/resnet18/bench.md $OUT/resnet50/bench.md"
