"""Insertion / Deletion and Fid− / Fid+ in value and percent modes (LAX paper A.1.2, DESIGN §6).

``value`` mode: for α = 1, 1 − step, …, 0 insertion keeps the pixels with
``h > α`` and deletion removes them. ``percent`` mode: for k = 0, step, …, 1
insertion keeps the top ``round(k·P)`` positions and deletion removes them
(ties in the stable descending order, earlier position first). Insertion and
Deletion are the trapezoid areas of their curves on ``[0, 1]``;
``Fid− = mean_k (s(x) − ins_k)`` and ``Fid+ = mean_k (s(x) − del_k)`` over the
same points, with ``s(x)`` the clean image's score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaibench.metrics.checks import check_choice, check_step
from xaibench.metrics.plan import (
    RangePlan,
    count_greater,
    evaluate_plans,
    sorted_values,
    trapezoid_mean,
)
from xaibench.metrics.registry import register_metric

MODES = ("value", "percent")
DIRECTIONS = {
    "insertion": True,
    "deletion": False,
    "fid_minus": False,
    "fid_plus": True,
    "clean_score": None,
}


def insertion_steps(mode: str, step: float, *, device: torch.device | None = None) -> Tensor:
    """The grid ``(K,)`` float64: thresholds 1 → 0 (``value``) or fractions 0 → 1 (``percent``)."""
    check_choice("mode", mode, MODES)
    intervals = check_step(step, 1.0, what="the range [0, 1]")
    grid = torch.linspace(0.0, 1.0, intervals + 1, dtype=torch.float64, device=device)
    return grid.flip(0) if mode == "value" else grid


def plan_insertion_deletion(
    heatmaps: Tensor, *, mode: str = "value", step: float = 0.02
) -> RangePlan:
    """The ``2K + 1`` variants (insertion, deletion, clean image) and the finishing step.

    Args:
        heatmaps: ``(N, *S')``, validated (in ``[0, 1]`` for ``value`` mode).
        mode: ``"value"`` or ``"percent"``.
        step: threshold step or fraction of positions; must divide 1.
    """
    steps = insertion_steps(mode, step, device=heatmaps.device)
    k = steps.shape[0]
    n, num_pos = heatmaps.shape[0], heatmaps[0].numel()
    if mode == "value":
        cut = count_greater(sorted_values(heatmaps), steps)  # (N, K): ranks [0, cut) have h > α
    else:
        cut = torch.round(steps * num_pos).to(torch.int64).expand(n, -1)
    zeros, full = torch.zeros_like(cut), torch.full_like(cut, num_pos)
    insertion = torch.stack([zeros, cut], dim=-1)
    deletion = torch.stack([cut, full], dim=-1)
    clean = torch.stack([zeros[:, :1], full[:, :1]], dim=-1)

    def finish(scores: Tensor) -> dict[str, Tensor]:
        ins, dele, s0 = scores[:, :k], scores[:, k : 2 * k], scores[:, 2 * k :]
        return {
            "insertion": trapezoid_mean(ins),
            "deletion": trapezoid_mean(dele),
            "fid_minus": (s0 - ins).mean(dim=1),
            "fid_plus": (s0 - dele).mean(dim=1),
            "clean_score": s0[:, 0],
            "insertion_curve": ins,
            "deletion_curve": dele,
            "steps": steps.to(scores.dtype),
        }

    return RangePlan(torch.cat([insertion, deletion, clean], dim=1), finish)


@register_metric("insertion_deletion", higher_is_better=DIRECTIONS, smoke={"step": 0.1})
def insertion_deletion(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    mode: str = "value",
    step: float = 0.02,
    score: str = "accuracy",
    target: str = "label",
    baseline: float | str | Tensor = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    indices: Tensor | None = None,
) -> dict[str, Tensor]:
    """Insertion, Deletion, Fid− and Fid+ per sample, with their curves.

    Args:
        model: classifier in eval mode returning logits.
        images: ``(N, C, H, W)`` (or any ``(N, *S)``).
        heatmaps: ``(N, 1, H, W)`` or ``images.shape``; in ``[0, 1]`` for ``value``
            mode, any finite values for ``percent`` mode.
        targets: ``(N,)`` class indices.
        mode: ``"value"`` (thresholds on h) or ``"percent"`` (top-k fractions).
        step: threshold step / fraction step; must divide 1.
        score: ``"accuracy"`` or ``"confidence"``.
        target: ``"label"`` or ``"predicted"``.
        baseline: fill of removed pixels, see :func:`~xaibench.baselines.make_baseline`.
        batch_size: variants per forward pass.
        seed: seed of a random baseline (``"uniform"``, ``"noise"``).
        indices: ``(N,)`` dataset indices seeding per-sample draws (default ``arange(N)``).

    Returns:
        ``insertion``, ``deletion``, ``fid_minus``, ``fid_plus``, ``clean_score``
        ``(N,)``; ``insertion_curve``, ``deletion_curve`` ``(N, K)``; ``steps`` ``(K,)``.
    """
    check_choice("mode", mode, MODES)
    (out,) = evaluate_plans(
        model, images, heatmaps, targets, lambda h: [plan_insertion_deletion(h, mode=mode, step=step)],
        score=score, target=target, baseline=baseline, batch_size=batch_size, seed=seed, indices=indices,
        unit_range=mode == "value",
    )  # fmt: skip
    return out
