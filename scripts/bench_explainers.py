"""Explainer throughput (images/s) on the demo model, for ``make bench``.

Demo model: ``resnet18(10, width=0.25, stem="stride2")`` (untrained weights:
throughput does not depend on them), 64×64 inputs, each method with its
config defaults. Slow methods get fewer images so the whole run stays near a
minute on 2 CPU cores. Learned explainers (LAX, DeepFaith) are attached to
the classifier untrained (``explainer.attach(model, size)``): throughput does
not depend on their weights. ``scripts/bench.py`` calls :func:`bench_explainers`.
"""

from __future__ import annotations

import time

import torch

from xaibench.explainers import get_explainer, list_explainers
from xaibench.explainers.learned import LearnedExplainer
from xaibench.models import resnet18

# images per method: fewer for the ones that run many forward passes per image
N_IMAGES = {
    "lime": 4,
    "kernel_shap": 4,
    "occlusion": 8,
    "scorecam": 8,
    "ablationcam": 8,
    "deeplift_shap": 8,
    "integrated_gradients": 16,
    "gradient_shap": 16,
    "kpcacam": 16,
}
DEFAULT_N = 64


def bench_explainers(
    names: list[str] | None = None, *, device: str = "cpu", size: int = 64, repeats: int = 1
) -> dict[str, float]:
    """Time each explainer on the demo model; print and return images/s per name.

    Args:
        names: explainers to time (default: all registered).
        device: torch device for model and images.
        size: input side in pixels.
        repeats: timed calls per method (after one untimed warm-up on 1 image).

    Returns:
        ``{name: images per second}``.
    """
    torch.manual_seed(0)
    model = resnet18(10, width=0.25, stem="stride2").to(device).eval()
    results: dict[str, float] = {}
    print(f"explainer throughput: resnet18 width 0.25 stride2, {size}x{size}, {device}")
    for name in names or list_explainers():
        n = N_IMAGES.get(name, DEFAULT_N)
        x = torch.rand(n, 3, size, size, device=device)
        y = torch.arange(n, device=device) % 10
        explainer = get_explainer(name)
        if isinstance(explainer, LearnedExplainer):  # LAX, DeepFaith: untrained heads, same cost
            explainer.attach(model, size)
        explainer(model, x[:1], y[:1])  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            explainer(model, x, y)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        results[name] = n * repeats / (time.perf_counter() - start)
        print(f"  {name:22s} {results[name]:9.1f} img/s  ({n} images)")
    return results


if __name__ == "__main__":
    bench_explainers()
