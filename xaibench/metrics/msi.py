"""MSI: Minimality-Sufficiency Integration (LAX paper §3.1, DESIGN §6).

For a heatmap ``h`` in ``[0, 1]``, ``Δα = 1 - α_min`` and the grid
``α_min, α_min + step, …, 1``:

* ``Show(>α)`` keeps the pixels with ``h > α`` (strict);
  ``Show(<α_min)`` keeps the complement ``h <= α_min``;
* ``Hide(>α)`` keeps ``α_min <= h <= α`` (below-``α_min`` removed first, then
  deleted from the top down);
* ``AUC = (1/Δα) ∫ curve dα`` by the trapezoid rule on the grid;
* ``BaseScore = ½[(Show(>α_min) - Show(<α_min)) + (AUC_show - AUC_hide)]``,
  ``MaskPenalty = mean(h >= α_min)``, ``MSI = BaseScore - MaskPenalty`` in ``[-2, 1]``.

Heatmap values within ``GRID_TOL`` (1e-6) of ``α_min`` or of a grid point count
as on it, so a float32 ``0.7`` sits on the grid point ``0.7``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaibench.metrics.checks import check_alpha_min, check_step
from xaibench.metrics.plan import (
    RangePlan,
    count_at_least,
    count_greater,
    evaluate_plans,
    sorted_values,
    trapezoid_mean,
)
from xaibench.metrics.registry import register_metric


def msi_alphas(alpha_min: float, step: float, *, device: torch.device | None = None) -> Tensor:
    """The α grid ``(K,)`` float64 from ``alpha_min`` to 1; ``step`` must divide ``1 - alpha_min``."""
    check_alpha_min(alpha_min)
    intervals = check_step(step, 1.0 - alpha_min, what=f"1 - alpha_min = {1.0 - alpha_min:g}")
    return torch.linspace(alpha_min, 1.0, intervals + 1, dtype=torch.float64, device=device)


def plan_msi(heatmaps: Tensor, *, alpha_min: float = 0.5, step: float = 0.02) -> RangePlan:
    """The ``2K + 1`` variants of MSI (Show grid, Hide grid, complement) and its finishing step.

    Args:
        heatmaps: ``(N, *S')`` in ``[0, 1]``, already validated.
        alpha_min: threshold in ``(0, 1)``.
        step: grid spacing, dividing ``1 - alpha_min``.
    """
    alphas = msi_alphas(alpha_min, step, device=heatmaps.device)
    k = alphas.shape[0]
    srt = sorted_values(heatmaps)
    num_pos = srt.shape[1]
    gt = count_greater(srt, alphas)  # (N, K): ranks [0, gt) are h > α
    ge_min = count_at_least(srt, alphas[:1])  # (N, 1): ranks [0, ge_min) are h >= α_min
    show = torch.stack([torch.zeros_like(gt), gt], dim=-1)
    hide = torch.stack([gt, ge_min.expand_as(gt)], dim=-1)  # α_min <= h <= α
    complement = torch.stack([gt[:, :1], torch.full_like(gt[:, :1], num_pos)], dim=-1)  # h <= α_min
    penalty = ge_min[:, 0].to(heatmaps.dtype) / num_pos

    def finish(scores: Tensor) -> dict[str, Tensor]:
        show_curve, hide_curve, show_low = scores[:, :k], scores[:, k : 2 * k], scores[:, 2 * k]
        base = 0.5 * (
            (show_curve[:, 0] - show_low)
            + (trapezoid_mean(show_curve) - trapezoid_mean(hide_curve))
        )
        return {
            "msi": base - penalty,
            "base_score": base,
            "mask_penalty": penalty,
            "show_curve": show_curve,
            "hide_curve": hide_curve,
            "alphas": alphas.to(scores.dtype),
        }

    return RangePlan(torch.cat([show, hide, complement], dim=1), finish)


@register_metric(
    "msi",
    higher_is_better={"msi": True, "base_score": True, "mask_penalty": False},
    smoke={"step": 0.1},
)
def msi(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    alpha_min: float = 0.5,
    step: float = 0.02,
    score: str = "accuracy",
    target: str = "label",
    baseline: float | str | Tensor = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    indices: Tensor | None = None,
) -> dict[str, Tensor]:
    """MSI of each heatmap, per sample.

    Args:
        model: classifier in eval mode returning logits ``(B, classes)``.
        images: ``(N, C, H, W)`` model inputs (or any ``(N, *S)``).
        heatmaps: ``(N, 1, H, W)`` (broadcast over channels) or ``images.shape``, in ``[0, 1]``.
        targets: ``(N,)`` class indices (labels).
        alpha_min: importance threshold in ``(0, 1)`` (paper: 0.5; CIFAR-10, Table 5: 0.4).
        step: α grid spacing; must divide ``1 - alpha_min``.
        score: ``"accuracy"`` (paper) or ``"confidence"`` (softmax probability of the target).
        target: ``"label"`` to score ``targets``; ``"predicted"`` for the model's predictions.
        baseline: fill of removed pixels (0 = ``X ⊙ M``), see :func:`~xaibench.baselines.make_baseline`.
        batch_size: variants per forward pass.
        seed: seed of a random baseline (``"uniform"``, ``"noise"``).
        indices: ``(N,)`` dataset indices seeding per-sample draws (default ``arange(N)``).

    Returns:
        ``msi``, ``base_score``, ``mask_penalty`` ``(N,)``; ``show_curve``,
        ``hide_curve`` ``(N, K)``; ``alphas`` ``(K,)``.
    """
    (out,) = evaluate_plans(
        model, images, heatmaps, targets, lambda h: [plan_msi(h, alpha_min=alpha_min, step=step)],
        score=score, target=target, baseline=baseline, batch_size=batch_size, seed=seed, indices=indices,
    )  # fmt: skip
    return out
