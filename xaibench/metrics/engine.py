"""The batched perturbation engine every metric runs on.

A perturbed variant of an image is ``x * keep + fill * (1 - keep)`` where
``keep`` is a boolean keep-mask and ``fill`` the baseline. Variants are built
chunk by chunk (never all at once), streamed through the model under
``torch.inference_mode()`` and reduced to one score per variant, so the cost is
the forward passes and little else.

Variants that a caller declares identical (equal ``keys``; for threshold and
top-k masks, equal rank ranges, see :func:`evaluate_ranges`) are evaluated
once, so metrics planned together share their common perturbed inputs.

Shapes: images ``(N, *S)`` (``S = (C, H, W)`` for images, ``(D,)`` for tabular
rows); keep-masks ``(N, K, *S')`` with ``S'`` broadcastable to ``S`` (e.g.
``(1, H, W)`` for a heatmap broadcast over channels); scores ``(N, K)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

SCORES = ("accuracy", "confidence", "probability", "logit")

KeepFn = Callable[[Tensor, Tensor], Tensor]
"""``keep_fn(sample_idx (B,), step_idx (B,)) -> keep (B, *S')`` bool, one mask per pair."""


def scores_from_logits(logits: Tensor, targets: Tensor, score: str) -> Tensor:
    """Reduce logits ``(B, classes)`` to one score per row ``(B,)``.

    ``accuracy``: 1.0 where ``argmax == target``; ``confidence``/``probability``:
    softmax probability of the target; ``logit``: the target's raw logit.
    A callable ``score(logits, targets) -> (B, *E)`` is applied as given (e.g.
    several numbers per variant; the engine's outputs then gain the ``E`` dims).
    """
    if callable(score):
        return score(logits, targets)
    if score == "accuracy":
        return (logits.argmax(dim=1) == targets).to(logits.dtype)
    if score in ("confidence", "probability"):
        return logits.softmax(dim=1).gather(1, targets[:, None]).squeeze(1)
    if score == "logit":
        return logits.gather(1, targets[:, None]).squeeze(1)
    raise ValueError(f"score={score!r} is unknown; choose one of {list(SCORES)}")


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def forward_chunks(
    model: nn.Module, inputs: Callable[[slice], Tensor], total: int, batch_size: int
) -> Tensor:
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
    keys: Tensor | None = None,
) -> Tensor:
    """Score every variant ``(i, k)``, ``k < num_steps``, of every image; returns ``(N, K)``.

    ``keep_fn`` builds the keep-masks of one chunk of (sample, step) pairs;
    ``fill`` is :func:`~xaibench.baselines.make_baseline`'s output. The model's
    train/eval state is not touched: call it under
    :func:`~xaibench.metrics.model_state.eval_mode` (registered metrics do).

    ``keys`` ``(N, K)`` int64, optional: variants of one sample with equal keys
    are declared identical (same keep-mask) and evaluated once; the caller
    guarantees that equal keys mean equal masks (e.g. the ``[start, stop)``
    rank range of :func:`evaluate_ranges`).
    """
    n = images.shape[0]
    sample_idx = torch.arange(n, device=images.device).repeat_interleave(num_steps)
    step_idx = torch.arange(num_steps, device=images.device).repeat(n)
    if n * num_steps == 0:
        return images.new_empty((n, num_steps))
    if keys is None:
        flat = _score_pairs(
            model, images, targets, keep_fn, sample_idx, step_idx, fill, score, batch_size
        )
        return flat.view(n, num_steps, *flat.shape[1:])
    if keys.shape != (n, num_steps):
        raise ValueError(f"keys {tuple(keys.shape)} must be (N, K) = ({n}, {num_steps})")
    rows = torch.stack([sample_idx, keys.to(sample_idx.device).reshape(-1)], dim=1)
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    # one representative step per unique (sample, key): the smallest step index
    rep = torch.full((unique.shape[0],), num_steps, dtype=step_idx.dtype, device=step_idx.device)
    rep = rep.scatter_reduce(0, inverse, step_idx, reduce="amin")
    flat = _score_pairs(model, images, targets, keep_fn, unique[:, 0], rep, fill, score, batch_size)
    return flat[inverse].view(n, num_steps, *flat.shape[1:])


def count_unique_variants(keys: Tensor) -> int:
    """Forward passes :func:`evaluate_variants` makes for ``keys (N, K)`` (distinct keys per row)."""
    n, k = keys.shape
    sample_idx = torch.arange(n, device=keys.device).repeat_interleave(k)
    return int(torch.unique(torch.stack([sample_idx, keys.reshape(-1)], 1), dim=0).shape[0])


def _score_pairs(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    keep_fn: KeepFn,
    sample_idx: Tensor,
    step_idx: Tensor,
    fill: Tensor,
    score: str,
    batch_size: int,
) -> Tensor:
    """Scores ``(B,)`` of the variants named by the flat pairs ``(sample_idx, step_idx)``."""
    n = images.shape[0]
    # a callable fill(sample_idx, step_idx) -> (B, *S) gives per-variant fills (random baselines)
    per_sample = False
    if not callable(fill):
        fill = _compact(fill)
        per_sample = fill.dim() == images.dim() and fill.shape[0] == n

    def build(sl: slice) -> Tensor:
        si, ki = sample_idx[sl], step_idx[sl]
        keep = keep_fn(si, ki)
        x = images[si]
        f = fill(si, ki) if callable(fill) else (fill[si] if per_sample else fill)
        return torch.where(keep, x, f)

    logits = forward_chunks(model, build, sample_idx.shape[0], batch_size)
    return scores_from_logits(logits, targets[sample_idx], score)


def _compact(fill: Tensor) -> Tensor:
    """``fill`` with its expanded (stride-0) dimensions cut to size 1: a constant's is ``(1,) * 4``.

    :func:`~xaibench.baselines.make_baseline` returns full-shape expanded
    views; indexing the compact tensor per chunk keeps the fill free.
    """
    for d in range(fill.dim()):
        if fill.stride(d) == 0 and fill.shape[d] > 1:
            fill = fill.narrow(d, 0, 1)
    return fill


def descending_ranks(heatmaps: Tensor) -> Tensor:
    """Rank of every position in its sample's stable descending order, shape of ``heatmaps``.

    Args:
        heatmaps: ``(N, *S')`` real values.

    Returns:
        ``(N, *S')`` int64 in ``[0, P)`` with ``P = prod(S')``: 0 is the largest
        value; ties keep flattened (row-major) position order, earlier first.
    """
    flat = heatmaps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view(heatmaps.shape)


def evaluate_ranges(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    ranks: Tensor,
    ranges: Tensor,
    *,
    fill: Tensor,
    score: str = "accuracy",
    batch_size: int = 256,
    dedup: bool = True,
) -> Tensor:
    """Score variants that keep a contiguous rank range ``[start, stop)`` of each heatmap.

    Every threshold, top-k and bottom-k mask of a heatmap is such a range of
    :func:`descending_ranks`, so equal ranges are equal masks: with ``dedup``
    each distinct ``(sample, start, stop)`` is evaluated once.

    Args:
        model: classifier in eval mode, returning logits.
        images: ``(N, *S)`` model inputs.
        targets: ``(N,)`` int64 class indices.
        ranks: ``(N, *S')`` from :func:`descending_ranks`, ``S'`` broadcastable to ``S``.
        ranges: ``(N, V, 2)`` int64 ``[start, stop)`` with ``0 <= start <= stop <= P``.
        fill: :func:`~xaibench.baselines.make_baseline` output.

    Returns:
        ``(N, V)`` scores.
    """
    n, v = ranges.shape[:2]
    num_pos = ranks[0].numel()
    start, stop = ranges[..., 0], ranges[..., 1]
    tail = (1,) * (ranks.dim() - 1)

    def keep_fn(si: Tensor, ki: Tensor) -> Tensor:
        r = ranks[si]
        a, b = start[si, ki].view(-1, *tail), stop[si, ki].view(-1, *tail)
        return (r >= a) & (r < b)

    keys = start * (num_pos + 1) + stop if dedup else None
    return evaluate_variants(
        model, images, targets, keep_fn, v, fill=fill, score=score, batch_size=batch_size, keys=keys
    )
