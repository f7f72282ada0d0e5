"""Hand-built models with hand-computable answers for the metric tests (not a test module)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RegionModel(nn.Module):
    """Two classes; class 1 wins only when every pixel of ``region`` is kept (images of ones).

    ``logit_1 = sum_{region} x - (|region| - 0.5)``, ``logit_0 = 0``: with a zero
    baseline, removing any region pixel of an all-ones image flips the
    prediction to class 0; the rest of the image is ignored.
    """

    def __init__(self, region: Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.to(torch.float64))
        self.calls = 0
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        s = (x * self.region).flatten(1).sum(1) - (self.region.sum() - 0.5)
        return torch.stack([torch.zeros_like(s), s], dim=1)


class LinearModel(nn.Module):
    """A fixed random linear classifier over flattened inputs (float64), for smooth scores."""

    def __init__(self, in_features: int, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(
            torch.randn(classes, in_features, generator=g, dtype=torch.float64)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.T


def region_setup(n: int = 2, size: int = 4, channels: int = 1):
    """Images of ones ``(n, channels, size, size)``, a 2×2 region at the top-left, target 1."""
    region = torch.zeros(1, size, size, dtype=torch.bool)
    region[0, :2, :2] = True
    images = torch.ones(n, channels, size, size, dtype=torch.float64)
    targets = torch.ones(n, dtype=torch.int64)
    return RegionModel(region), images, targets, region


def heatmap_from(region: Tensor, inside: float, outside: float, n: int = 2) -> Tensor:
    """``(n, 1, H, W)`` float64 heatmap: ``inside`` on the region, ``outside`` elsewhere."""
    h = torch.where(
        region,
        torch.tensor(inside, dtype=torch.float64),
        torch.tensor(outside, dtype=torch.float64),
    )
    return h.expand(n, *region.shape).clone()
