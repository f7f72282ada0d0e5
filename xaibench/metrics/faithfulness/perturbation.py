"""Negative / positive perturbation (NEG higher is better, POS lower is better), DeepFaith's definition.

Elements are set to 0 cumulatively, chunk by chunk: least relevant first
(NEG) or most relevant first (POS). The curve is the softmax probability of
the clean prediction; once the prediction flips to another class the curve is
frozen at the probability of the step where it flipped. The value is the
trapezoid area over DeepFaith's axis ``arange(0, F, chunk) / F``. Quantus 0.6
has no such metric, so ``deepfaith`` is the only variant.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaibench.metrics.faithfulness.common import (
    check_positive_int,
    cumulative_scores,
    deepfaith_auc,
    element_chunks,
    element_ranks,
    prepare,
    probability_and_flip,
)
from xaibench.metrics.registry import MetricFn, register_metric


def _frozen_curve(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    positive: bool,
    variant: str,
    features_in_step: int,
    indices: Tensor | None,
    batch_size: int,
    name: str,
) -> dict[str, Tensor]:
    p = prepare(
        model, images, heatmaps, targets, variant=variant, variants=("deepfaith",), metric=name,
        indices=indices, batch_size=batch_size,
    )  # fmt: skip
    step = check_positive_int("features_in_step", features_in_step)
    f = p.images[0].numel()
    ranks = element_ranks(p.attributions)
    if not positive:  # DeepFaith flips the descending order: least relevant first, ties reversed
        ranks = f - 1 - ranks
    chunk, k = element_chunks(ranks, step)
    fill = p.images.new_zeros((1,) * p.images.dim())
    out = cumulative_scores(
        model, p, chunk, k, fill=fill, score=probability_and_flip, batch_size=batch_size
    )  # (N, K, 2): probability, flipped
    prob, flipped = out[..., 0], out[..., 1] > 0.5
    steps = torch.arange(k, device=prob.device)
    # (N,) first flip, K if none
    first = torch.where(flipped, steps, torch.full_like(steps, k)).amin(dim=1)
    frozen = prob.gather(1, first.clamp(max=k - 1)[:, None])
    curve = torch.where(steps[None, :] >= first[:, None], frozen, prob)
    return {
        name: deepfaith_auc(curve, f, step),
        f"{name}_curve": curve,
        "flip_step": first.to(curve.dtype),
    }


_NEG_DOC = """NEG: remove the least relevant elements first; the probability should stay high.

    Args:
        model: classifier returning logits (evaluated in eval mode).
        images: ``(N, C, H, W)`` (or ``(N, *S)``) inputs.
        heatmaps: ``(N, 1, H, W)`` or ``(N, C, H, W)`` in ``[0, 1]``.
        targets: ``(N,)`` class indices (validated; the clean prediction is scored).
        variant: ``"deepfaith"``.
        features_in_step: elements set to 0 per step (DeepFaith's ``pixel_batch_size``).
        seed, indices: unused (deterministic); accepted for the common call shape.
        batch_size: perturbed images per forward pass.

    Returns:
        ``negative_perturbation`` ``(N,)`` area (probability units, higher is
        better); ``negative_perturbation_curve`` ``(N, K)`` frozen curve;
        ``flip_step`` ``(N,)`` (float) first step whose prediction differs (``K`` if never).
    """

_POS_DOC = """POS: remove the most relevant elements first; the probability should fall fast.

    Same arguments as :func:`negative_perturbation`. Returns
    ``positive_perturbation`` ``(N,)`` (lower is better),
    ``positive_perturbation_curve`` ``(N, K)`` and ``flip_step`` ``(N,)``.
    """


def _register(name: str, *, positive: bool, doc: str) -> MetricFn:
    """Register NEG (``positive=False``: higher is better) or POS (lower is better) as ``name``."""

    def metric(
        model: nn.Module,
        images: Tensor,
        heatmaps: Tensor,
        targets: Tensor,
        *,
        variant: str = "deepfaith",
        features_in_step: int = 3136,
        seed: int = 0,
        indices: Tensor | None = None,
        batch_size: int = 256,
    ) -> dict[str, Tensor]:
        return _frozen_curve(
            model, images, heatmaps, targets, positive=positive, variant=variant,
            features_in_step=features_in_step, indices=indices, batch_size=batch_size, name=name,
        )  # fmt: skip

    metric.__name__ = metric.__qualname__ = name
    metric.__doc__ = doc
    # an early flip is good for POS (relevant pixels removed first) and bad for NEG
    directions = {name: not positive, "flip_step": not positive}
    return register_metric(name, higher_is_better=directions)(metric)


negative_perturbation = _register("negative_perturbation", positive=False, doc=_NEG_DOC)
positive_perturbation = _register("positive_perturbation", positive=True, doc=_POS_DOC)
