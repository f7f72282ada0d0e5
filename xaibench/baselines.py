"""The "absent" input that explainers compare with and metrics fill removed positions with.

One definition shared by :mod:`xaibench.explainers` (Integrated Gradients,
DeepLIFT, Occlusion, LIME, KernelSHAP references) and :mod:`xaibench.metrics`
(the perturbation engine's fill). Only torch is imported here, so neither
package pulls in the other's libraries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BASELINES = ("mean", "min", "max", "blur", "uniform", "noise")
BLUR_SIGMA = 5.0
"""Standard deviation in pixels of the ``"blur"`` baseline."""


def make_baseline(
    images: Tensor,
    baseline: float | str | Tensor = 0.0,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    indices: Tensor | None = None,
) -> Tensor:
    """The reference input of every sample, shape of ``images (N, *S)``.

    ``float``: that constant (0 = ``X ⊙ M`` in model-input space). ``"mean"``/
    ``"min"``/``"max"``: per-sample statistic over all positions and channels
    (``"min"`` is Quantus's "black"). ``"blur"``: Gaussian blur (σ = 5 px,
    images ``(N, C, H, W)`` only). ``"uniform"``: U[min, max] of each sample.
    ``"noise"``: ``x + N(0, 0.1²)``. A tensor is used as given (it must
    broadcast to ``images``).

    Constants and per-sample statistics come back as expanded (stride-0) views,
    so they cost no memory: read them, or ``.clone()`` before writing.

    Random baselines draw from ``generator`` when given; with ``seed`` they
    draw per sample from generators seeded by ``(seed, indices[i])``
    (``indices`` defaults to ``arange(N)``), so the fill of a sample does not
    depend on the batch it is in.
    """
    if isinstance(baseline, Tensor):
        try:
            return torch.broadcast_to(baseline.to(images), images.shape)
        except RuntimeError as e:
            raise ValueError(
                f"baseline tensor {tuple(baseline.shape)} does not broadcast to images {tuple(images.shape)}"
            ) from e
    return _named_baseline(images, baseline, generator, seed, indices).expand(images.shape)


def _named_baseline(
    images: Tensor,
    baseline: float | str,
    generator: torch.Generator | None,
    seed: int | None,
    indices: Tensor | None,
) -> Tensor:
    """A number or a :data:`BASELINES` name, broadcastable to ``images`` (compact shape)."""
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return images.new_full((1,) * images.dim(), float(baseline))
    flat = images.flatten(1)
    view = (-1,) + (1,) * (images.dim() - 1)  # (N,) statistic -> (N, 1, ..., 1)
    if baseline == "mean":
        return flat.mean(1).view(view)
    if baseline == "min":
        return flat.amin(1).view(view)
    if baseline == "max":
        return flat.amax(1).view(view)
    if baseline == "blur":
        if images.dim() != 4:
            raise ValueError(f"baseline='blur' needs images (N,C,H,W), got {tuple(images.shape)}")
        return gaussian_blur(images, sigma=BLUR_SIGMA)
    if baseline == "uniform":
        lo, hi = flat.amin(1).view(view), flat.amax(1).view(view)
        return lo + (hi - lo) * _draw(images, "uniform", generator, seed, indices)
    if baseline == "noise":
        return images + 0.1 * _draw(images, "normal", generator, seed, indices)
    raise ValueError(
        f"baseline={baseline!r} is unknown; give a number, a tensor or one of {list(BASELINES)}"
    )


def _draw(
    images: Tensor,
    kind: str,
    generator: torch.Generator | None,
    seed: int | None,
    indices: Tensor | None,
) -> Tensor:
    """Random tensor shaped like ``images``: per-sample when ``seed`` is given, else from ``generator``."""
    if seed is not None:
        # imported here: xaibench.metrics imports this module
        from xaibench.metrics.seeding import per_sample_rand, sample_indices

        idx = sample_indices(images.shape[0], indices)
        return per_sample_rand(
            seed, idx, tuple(images.shape[1:]), kind=kind, dtype=images.dtype
        ).to(images)
    draw = torch.rand if kind == "uniform" else torch.randn
    return draw(images.shape, generator=generator, device="cpu").to(images)


def gaussian_blur(images: Tensor, sigma: float, *, kernel_size: int | None = None) -> Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with reflect padding, same shape.

    The kernel has ``4σ+1`` taps, or ``kernel_size`` (odd) when given, which
    then matches ``torchvision.transforms.GaussianBlur(kernel_size, sigma)``.
    Along a side shorter than the kernel (where torchvision refuses) the
    kernel is cut to the taps reflection can pad and renormalised, so a
    constant image stays constant.
    """
    if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    radius = max(1, int(2 * sigma)) if kernel_size is None else kernel_size // 2
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = images.shape[1]
    pad_h, pad_w = min(radius, images.shape[2] - 1), min(radius, images.shape[3] - 1)
    out = F.pad(images, (pad_w, pad_w, 0, 0), mode="reflect" if pad_w else "replicate")
    kw = _cut(k, radius, pad_w)
    out = F.conv2d(out, kw.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)  # along W
    out = F.pad(out, (0, 0, pad_h, pad_h), mode="reflect" if pad_h else "replicate")
    kh = _cut(k, radius, pad_h)
    return F.conv2d(out, kh.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)  # along H


def _cut(kernel: Tensor, radius: int, keep: int) -> Tensor:
    """The central ``2 * keep + 1`` taps of ``kernel`` (``radius`` each side), renormalised."""
    if keep == radius:
        return kernel
    cut = kernel[radius - keep : radius + keep + 1]
    return cut / cut.sum()
