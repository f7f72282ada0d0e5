"""Shared plumbing of the faithfulness family: variants, inputs, scores, orders and fills.

Conventions used by every metric in this subpackage:

* **Elements.** ``quantus`` and ``deepfaith`` variants rank and perturb
  *elements* of the input: a heatmap ``(N,1,H,W)`` is broadcast to the
  images' ``(N,C,H,W)`` and flattened to ``F = C*H*W`` elements (row-major,
  channel first), as Quantus and DeepFaith do. With one value per pixel the
  ``C`` copies of a pixel are neighbours in a stable order, so a step of a
  multiple of ``C`` elements removes whole pixels.
* **Order.** Stable descending (or ascending) sort; ties keep row-major order.
  Quantus uses numpy's unstable ``argsort``, so ties may be ordered
  differently there; with distinct values (or steps that are multiples of the
  tie groups) both agree.
* **Scores.** ``quantus``: the target's logit, or its softmax probability with
  ``softmax=True``. ``deepfaith`` and ``rise``: the softmax probability of the
  class the model predicts on the clean image (the ``targets`` are validated
  but not used to pick the class, as in both sources).
* **Attributions.** ``quantus`` accepts signed real attributions (Quantus
  metrics are defined on them; only finiteness is checked); ``deepfaith`` and
  ``rise`` require heatmaps in ``[0, 1]`` like every other xaibench metric.
* **Randomness.** Every draw is a pure function of ``(seed, index[i])``
  (:func:`xaibench.metrics.seeding.counter_uniform`), so values do not depend
  on batch size, order or process count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xaibench.metrics.checks import check_choice, prepare_batch
from xaibench.metrics.engine import (
    descending_ranks,
    evaluate_variants,
    forward_chunks,
    scores_from_logits,
)
from xaibench.metrics.seeding import counter_uniform, sample_indices

QUANTUS_BASELINES = ("black", "white", "mean", "uniform")
"""Quantus's named baselines: per-sample min, max, mean; U[0, 1) per sample and perturbation."""

# draw streams: each kind of random draw has its own stream range per sample
STREAM_SUBSET, STREAM_UNIFORM, STREAM_MASK, STREAM_ORDER = 0, 1 << 20, 2 << 20, 3 << 20


@dataclass
class Prepared:
    """Validated inputs of one metric call, on the model's device.

    Attributes:
        images: ``(N, *S)`` model inputs.
        attributions: ``(N, *S)`` heatmap broadcast to the images (after ``abs``/``normalise``).
        targets: ``(N,)`` int64 class whose score is read (clean predictions for deepfaith/rise).
        score: engine score name (``"logit"`` or ``"probability"``).
        clean: ``(N,)`` score of the clean images.
        clean_pred: ``(N,)`` int64 argmax of the clean logits.
        index: ``(N,)`` int64 dataset indices seeding the random draws.
    """

    images: Tensor
    heatmaps: Tensor
    attributions: Tensor
    targets: Tensor
    score: str
    clean: Tensor
    clean_pred: Tensor
    index: Tensor


def prepare(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    variant: str,
    variants: tuple[str, ...],
    metric: str,
    indices: Tensor | None = None,
    batch_size: int = 256,
    softmax: bool = False,
    abs: bool = False,
    normalise: bool = False,
    image_only: bool = False,
) -> Prepared:
    """Validate inputs, run the clean forward pass and pick the scored class.

    Args:
        variant: the requested variant; must be one of ``variants``.
        metric: the metric's name, for messages.
        softmax: ``quantus`` only: score softmax probabilities instead of logits.
        abs: ``quantus`` only: take ``|a|`` of the attributions (Quantus's ``abs``).
        normalise: ``quantus`` only: divide each sample's attributions by their
            max ``|a|`` (Quantus's ``normalise_by_max``, but per sample: Quantus
            divides by the max over the whole batch, a positive factor that
            only changes the scale-dependent infidelity).
        image_only: require ``(N, C, H, W)`` images (patch and superpixel metrics).
    """
    check_choice(f"{metric}: variant", variant, variants)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    images, heatmaps, targets = prepare_batch(
        model, images, heatmaps, targets, unit_range=variant != "quantus", batch_size=batch_size
    )
    if image_only and images.dim() != 4:
        raise ValueError(f"{metric} needs images (N, C, H, W), got {tuple(images.shape)}")
    n = images.shape[0]
    index = sample_indices(n, indices, images.device)
    logits = forward_chunks(model, lambda sl: images[sl], n, batch_size)
    clean_pred = logits.argmax(dim=1)
    if variant == "quantus":
        score = "probability" if softmax else "logit"
        scored = targets
    else:
        score, scored = "probability", clean_pred
    a = heatmaps.expand_as(images)
    if variant == "quantus":
        if abs:
            a = a.abs()
        if normalise:
            peak = a.flatten(1).abs().amax(dim=1).view(-1, *([1] * (a.dim() - 1)))
            a = a / torch.where(peak > 0, peak, torch.ones_like(peak))
    clean = scores_from_logits(logits, scored, score)
    return Prepared(images, heatmaps, a, scored, score, clean, clean_pred, index)


def check_positive_int(name: str, value: object, default: int | None = None) -> int:
    """``value`` (``default`` if it is None) as a positive ``int``; ``ValueError`` otherwise."""
    if value is None and default is not None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def element_ranks(attributions: Tensor, *, descending: bool = True) -> Tensor:
    """Stable rank of every element, ``(N, F)`` int64 in ``[0, F)``; 0 comes first in the order."""
    flat = attributions.flatten(1)
    return descending_ranks(flat if descending else -flat)


def chunk_sums(values: Tensor, chunk: Tensor, num_chunks: int) -> Tensor:
    """Sum of ``values (N, F)`` over each chunk id in ``chunk (N, F)`` (ids ``>= num_chunks`` dropped); ``(N, K)``."""
    n = values.shape[0]
    ids = chunk.clamp(max=num_chunks)
    out = values.new_zeros((n, num_chunks + 1))
    out.scatter_add_(1, ids, values)
    return out[:, :num_chunks]


def constant_fill(images: Tensor, baseline: float | str) -> Tensor:
    """A deterministic Quantus baseline, broadcastable to ``images``: number, ``black``, ``white`` or ``mean``."""
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return images.new_full((1,) * images.dim(), float(baseline))
    flat = images.flatten(1)
    view = (-1,) + (1,) * (images.dim() - 1)
    if baseline == "black":
        return flat.amin(dim=1).view(view)
    if baseline == "white":
        return flat.amax(dim=1).view(view)
    if baseline == "mean":
        return flat.mean(dim=1).view(view)
    raise ValueError(
        f"baseline={baseline!r} is unknown; use a number or one of {list(QUANTUS_BASELINES)}"
    )


def check_baseline(baseline: object, allowed: tuple[str, ...] = QUANTUS_BASELINES) -> None:
    """A number or one of ``allowed``."""
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return
    if baseline not in allowed:
        raise ValueError(
            f"baseline={baseline!r} is unknown; use a number or one of {list(allowed)}"
        )


def resolve_baseline(
    baseline: float | str | None, variant: str, quantus_default: str = "black"
) -> float | str:
    """The variant's baseline (its default when ``baseline`` is None), checked.

    ``quantus`` takes a number or a :data:`QUANTUS_BASELINES` name (default
    ``quantus_default``); ``deepfaith`` and ``rise`` take a number (default 0).
    """
    quantus = variant == "quantus"
    if baseline is None:
        baseline = quantus_default if quantus else 0.0
    check_baseline(baseline, QUANTUS_BASELINES if quantus else ())
    return baseline


def uniform_draws(seed: int, index: Tensor, count: int, *, stream: int = STREAM_UNIFORM) -> Tensor:
    """``(N, count)`` U[0, 1) float64 draws, a function of ``(seed, index[i])`` only (Quantus's ``uniform``)."""
    s = torch.full_like(index, stream)
    return counter_uniform(seed, index, s, count)


def variant_fill(images: Tensor, draws: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """Per-variant scalar fills: variant ``(i, k)`` is filled with ``draws[i, k]`` (engine ``fill`` callable)."""
    tail = (1,) * (images.dim() - 1)
    draws = draws.to(images.dtype)
    return lambda si, ki: draws[si, ki].view(-1, *tail)


def single_fill(
    p: Prepared, baseline: float | str, seed: int, count: int
) -> Tensor | Callable[[Tensor, Tensor], Tensor]:
    """Engine ``fill`` of ``count`` separate (non-cumulative) removals.

    ``uniform``: variant ``k`` gets its sample's ``k``-th draw; otherwise the
    constant baseline fills every variant.
    """
    if baseline == "uniform":
        return variant_fill(p.images, uniform_draws(seed, p.index, count))
    return constant_fill(p.images, baseline)


def cumulative_fill(
    images: Tensor, baseline: float | str, step: Tensor, num_steps: int, seed: int, index: Tensor
) -> Tensor:
    """Per-element fill of a *cumulative* Quantus perturbation, ``(N, F)``.

    Quantus perturbs the already perturbed array step after step, and computes
    its baseline from that array. An element removed at step ``k`` keeps the
    value it got then: ``black``/``white`` and numbers are the same at every
    step (the min/max cannot change); ``uniform`` is a fresh U[0, 1) draw per
    step; ``mean`` is the mean of the array after steps ``< k``, obtained by
    the exact recursion ``m_k = m_{k-1} + (|E_{k-1}| m_{k-1} - sum_{E_{k-1}} x) / F``
    (a loop over steps of ``(N,)`` tensor ops).

    Args:
        images: ``(N, *S)`` inputs.
        step: ``(N, F)`` int64 step at which each element is removed (``>= num_steps``: never).
        num_steps: number of steps.
    """
    flat = images.flatten(1)
    n, f = flat.shape
    if baseline == "uniform":
        draws = uniform_draws(seed, index, num_steps).to(flat.dtype)
        return draws.gather(1, step.clamp(max=num_steps - 1))
    if baseline != "mean":
        return constant_fill(images, baseline).flatten(1).expand(n, f)
    counts = chunk_sums(torch.ones_like(flat), step, num_steps)  # (N, K) elements removed per step
    sums = chunk_sums(flat, step, num_steps)  # (N, K) their original values
    means = flat.new_empty((n, num_steps))
    m = flat.mean(dim=1)
    for k in range(num_steps):
        means[:, k] = m
        m = m + (counts[:, k] * m - sums[:, k]) / f
    return means.gather(1, step.clamp(max=num_steps - 1))


def probability_and_flip(logits: Tensor, targets: Tensor) -> Tensor:
    """Engine score ``(B, 2)``: softmax probability of ``targets`` and 1.0 where the argmax differs from them."""
    p = logits.softmax(dim=1).gather(1, targets[:, None]).squeeze(1)
    return torch.stack([p, (logits.argmax(dim=1) != targets).to(p.dtype)], dim=1)


def deepfaith_auc(curve: Tensor, num_elements: int, chunk: int) -> Tensor:
    """Trapezoid area ``(N,)`` of ``curve (N, K)`` on DeepFaith's axis ``arange(0, F, chunk) / F``.

    Point ``j`` is scored after removing ``min((j+1)·chunk, F)`` elements but
    sits at ``j·chunk/F``: DeepFaith's curves are shifted one chunk left and
    end before 1. Reproduced as is; it is the paper's number.
    """
    axis = torch.arange(0, num_elements, chunk, dtype=torch.float64) / num_elements
    return torch.trapezoid(curve, axis.to(curve), dim=1)


def element_chunks(ranks: Tensor, step: int) -> tuple[Tensor, int]:
    """Chunk of every element, ``ranks (N, F) // step``, and the chunk count ``ceil(F / step)``."""
    return ranks // step, math.ceil(ranks.shape[1] / step)


def cumulative_scores(
    model: nn.Module,
    p: Prepared,
    chunk: Tensor,
    num_chunks: int,
    *,
    fill: Tensor,
    batch_size: int,
    insert: bool = False,
    score: str | Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Scores ``(N, K)`` after removing (``insert``: keeping) chunks ``0..k`` of the elements.

    Args:
        chunk: ``(N, F)`` chunk of every element (:func:`element_chunks`).
        num_chunks: ``K``.
        fill: engine fill of removed elements.
        score: engine score (default ``p.score``).
    """
    keep_fn = cumulative_keep(chunk, tuple(p.images.shape[1:]), insert=insert)
    return evaluate_variants(
        model, p.images, p.targets, keep_fn, num_chunks, fill=fill, score=score or p.score,
        batch_size=batch_size,
    )  # fmt: skip


def cumulative_keep(step: Tensor, shape: tuple[int, ...], *, first: int = 0, insert: bool = False):
    """Engine ``keep_fn`` for ordered cumulative removal (or insertion).

    Variant ``k`` removes (``insert=False``) or keeps (``insert=True``) every
    position whose ``step <= k + first``; ``first=-1`` makes variant 0 the
    untouched image (RISE's start point).

    Args:
        step: ``(N, *T)`` int64 step of each position, ``T`` broadcastable to the images.
        shape: ``T`` as a tuple (the keep-mask's per-sample shape).
    """

    def keep_fn(si: Tensor, ki: Tensor) -> Tensor:
        limit = (ki + first).view(-1, *([1] * len(shape)))
        done = step[si].view(-1, *shape) <= limit
        return done if insert else ~done

    return keep_fn


def region_scores(
    model: nn.Module,
    p: Prepared,
    step: Tensor,
    num_steps: int,
    baseline: float | str,
    seed: int,
    *,
    batch_size: int,
) -> Tensor:
    """Scores ``(N, K)`` after removing pixel regions (all channels) cumulatively, Quantus's way.

    Args:
        step: ``(N, H*W)`` int64 step at which each pixel goes (``>= num_steps``: never).
        num_steps: ``K``.
        baseline: a Quantus baseline, filled as :func:`cumulative_fill` does.
    """
    c, h, w = p.images.shape[1:]
    fill = cumulative_fill(p.images, baseline, step.repeat(1, c), num_steps, seed, p.index)
    return evaluate_variants(
        model, p.images, p.targets, cumulative_keep(step, (1, h, w)), num_steps,
        fill=fill.view_as(p.images), score=p.score, batch_size=batch_size,
    )  # fmt: skip
