"""The batched perturbation engine every metric runs on.

A perturbed variant of an image is ``x * keep + fill * (1 - keep)`` where
``keep`` is a boolean keep-mask and ``fill`` the baseline. Variants are built
chunk by chunk (never all at once), streamed through the model under
``torch.inference_mode()`` and reduced to one score per variant, so the cost is
the forward passes and little else.

Shapes: images ``(N, *S)`` (``S = (C, H, W)`` for images, ``(D,)`` for tabular
rows); keep-masks ``(N, K, *S')`` with ``S'`` broadcastable to ``S`` (e.g.
``(1, H, W)`` for a heatmap broadcast over channels); scores ``(N, K)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SCORES = ("accuracy", "confidence", "probability", "logit")
BASELINES = ("mean", "min", "max", "blur", "uniform", "noise")

KeepFn = Callable[[Tensor, Tensor], Tensor]
"""``keep_fn(sample_idx (B,), step_idx (B,)) -> keep (B, *S')`` bool, one mask per pair."""


def scores_from_logits(logits: Tensor, targets: Tensor, score: str) -> Tensor:
    """Reduce logits ``(B, classes)`` to one score per row ``(B,)``.

    ``accuracy``: 1.0 where ``argmax == target``; ``confidence``/``probability``:
    softmax probability of the target; ``logit``: the target's raw logit.
    """
    if score == "accuracy":
        return (logits.argmax(dim=1) == targets).to(logits.dtype)
    if score in ("confidence", "probability"):
        return logits.softmax(dim=1).gather(1, targets[:, None]).squeeze(1)
    if score == "logit":
        return logits.gather(1, targets[:, None]).squeeze(1)
    raise ValueError(f"score={score!r} is unknown; choose one of {list(SCORES)}")


def make_baseline(
    images: Tensor, baseline: float | str | Tensor = 0.0, *, generator: torch.Generator | None = None
) -> Tensor:
    """The fill value for removed positions, broadcastable to ``images (N, *S)``.

    ``float``: that constant (0 = ``X ⊙ M`` in model-input space). ``"mean"``/
    ``"min"``/``"max"``: per-sample statistic over all positions (``"min"`` is
    Quantus's "black"). ``"blur"``: Gaussian blur (σ = 5 px, images only).
    ``"uniform"``: U[min, max] of each sample. ``"noise"``: ``x + N(0, 0.1²)``.
    A tensor is used as given (must broadcast to ``images``).
    """
    if isinstance(baseline, Tensor):
        try:
            return torch.broadcast_to(baseline.to(images), images.shape)
        except RuntimeError as e:
            raise ValueError(
                f"baseline tensor {tuple(baseline.shape)} does not broadcast to images {tuple(images.shape)}"
            ) from e
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return images.new_full((1,) * images.dim(), float(baseline))
    flat = images.flatten(1)
    view = (-1,) + (1,) * (images.dim() - 1)
    if baseline == "mean":
        return flat.mean(1).view(view)
    if baseline == "min":
        return flat.amin(1).view(view)
    if baseline == "max":
        return flat.amax(1).view(view)
    if baseline == "blur":
        if images.dim() != 4:
            raise ValueError(f"baseline='blur' needs images (N,C,H,W), got {tuple(images.shape)}")
        return gaussian_blur(images, sigma=5.0)
    if baseline == "uniform":
        lo, hi = flat.amin(1).view(view), flat.amax(1).view(view)
        u = torch.rand(images.shape, generator=generator, device="cpu").to(images)
        return lo + (hi - lo) * u
    if baseline == "noise":
        eps = torch.randn(images.shape, generator=generator, device="cpu").to(images)
        return images + 0.1 * eps
    raise ValueError(f"baseline={baseline!r} is unknown; use a number, a tensor or one of {list(BASELINES)}")


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with reflect padding (kernel 4σ+1)."""
    radius = max(1, int(2 * sigma))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = images.shape[1]
    pad_h, pad_w = min(radius, images.shape[2] - 1), min(radius, images.shape[3] - 1)
    out = F.pad(images, (pad_w, pad_w, 0, 0), mode="reflect" if pad_w else "replicate")
    kw = k[radius - pad_w : radius + pad_w + 1]
    out = F.conv2d(out, kw.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.pad(out, (0, 0, pad_h, pad_h), mode="reflect" if pad_h else "replicate")
    kh = k[radius - pad_h : radius + pad_h + 1]
    return F.conv2d(out, kh.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def forward_chunks(model: nn.Module, inputs: Callable[[slice], Tensor], total: int, batch_size: int) -> Tensor:
    """Logits for ``total`` rows produced lazily by ``inputs(slice)``, ``batch_size`` at a time."""
    outs = []
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            outs.append(model(inputs(slice(start, min(start + batch_size, total)))))
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate_variants(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    keep_fn: KeepFn,
    num_steps: int,
    *,
    fill: Tensor,
    score: str = "accuracy",
    batch_size: int = 256,
) -> Tensor:
    """Score every variant ``(i, k)``, ``k < num_steps``, of every image; returns ``(N, K)``.

    ``keep_fn`` builds the keep-masks of one chunk of (sample, step) pairs;
    ``fill`` is :func:`make_baseline`'s output. The model's train/eval state is
    not touched: put it in eval mode before calling.
    """
    n = images.shape[0]
    total = n * num_steps
    sample_idx = torch.arange(n, device=images.device).repeat_interleave(num_steps)
    step_idx = torch.arange(num_steps, device=images.device).repeat(n)
    fill_full = fill.expand_as(images) if fill.shape[0] == n else None

    def build(sl: slice) -> Tensor:
        si, ki = sample_idx[sl], step_idx[sl]
        keep = keep_fn(si, ki)
        x = images[si]
        f = fill_full[si] if fill_full is not None else fill
        return torch.where(keep, x, f)

    if total == 0:
        return images.new_empty((n, num_steps))
    logits = forward_chunks(model, build, total, batch_size)
    return scores_from_logits(logits, targets[sample_idx], score).view(n, num_steps)
