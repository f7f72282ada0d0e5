"""Model-free reference maps for sanity tables: ``random`` and ``center``.

A metric that cannot tell a real explanation from these is not measuring the
explanation. Neither looks at the model (beyond the shared input checks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xaibench.explainers.base import Explainer, register_explainer


@register_explainer("random")
class RandomExplainer(Explainer):
    """I.i.d. uniform noise, optionally at a coarse resolution and upsampled.

    Args:
        seed: seed of the noise (drawn on the CPU, so equal on every device);
            the same seed gives the same maps for the same batch shape.
        resolution: side of the coarse noise grid upsampled bilinearly to the
            image (smooth blobs); ``None`` draws one value per pixel.
    """

    needs_grad = False
    uses_model = False
    uses_targets = False

    def __init__(self, *, seed: int = 0, resolution: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if resolution is not None and not (isinstance(resolution, int) and resolution >= 1):
            raise ValueError(f"resolution={resolution!r} must be None or an integer >= 1")
        self.seed, self.resolution = int(seed), resolution

    def explain(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        n, _, h, w = images.shape
        size = (h, w) if self.resolution is None else (self.resolution, self.resolution)
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.rand((n, 1, *size), generator=g, dtype=torch.float64)
        return noise.to(device=images.device, dtype=images.dtype)  # resized in postprocess


@register_explainer("center")
class CenterExplainer(Explainer):
    """A centred isotropic Gaussian, the same for every image (a centre-bias baseline).

    Args:
        sigma: standard deviation as a fraction of the image side.
    """

    needs_grad = False
    uses_model = False
    uses_targets = False

    def __init__(self, *, sigma: float = 0.25, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (isinstance(sigma, (int, float)) and sigma > 0):
            raise ValueError(
                f"sigma={sigma!r} must be > 0 (a fraction of the image side, e.g. 0.25)"
            )
        self.sigma = float(sigma)

    def explain(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        n, _, h, w = images.shape
        opts = {"device": images.device, "dtype": images.dtype}
        ys = (torch.arange(h, **opts) + 0.5) / h - 0.5  # (H,) centred pixel coordinates
        xs = (torch.arange(w, **opts) + 0.5) / w - 0.5  # (W,)
        r2 = ys[:, None] ** 2 + xs[None, :] ** 2  # (H, W)
        g = torch.exp(-0.5 * r2 / self.sigma**2)
        return g.expand(n, 1, h, w).clone()
