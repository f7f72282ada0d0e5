"""Metrics as plans of rank-range variants, so several metrics share one evaluation.

A :class:`RangePlan` lists the variants a metric needs as ``[start, stop)``
ranges of :func:`~xaibench.metrics.engine.descending_ranks` and how to turn
their scores into results. :func:`run_plans` concatenates plans, evaluates each
distinct ``(sample, range)`` once (MSI's Show grid and value-mode Insertion
keep the same pixels; the full image appears in several metrics), then hands
every plan its own columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xaibench.metrics.checks import GRID_TOL, prepare_perturbation
from xaibench.metrics.engine import count_unique_variants, descending_ranks, evaluate_ranges


@dataclass(frozen=True)
class RangePlan:
    """The variants of one metric call and how to finish it.

    Attributes:
        ranges: ``(N, V, 2)`` int64 ``[start, stop)`` rank ranges to keep.
        finish: maps the scores ``(N, V)`` of those variants to the result dict.
    """

    ranges: Tensor
    finish: Callable[[Tensor], dict[str, Tensor]]


def sorted_values(heatmaps: Tensor) -> Tensor:
    """Heatmap values per sample in ascending order, ``(N, P)`` float64."""
    return heatmaps.flatten(1).to(torch.float64).sort(dim=1).values


def count_greater(sorted_asc: Tensor, thresholds: Tensor) -> Tensor:
    """``(N, K)`` int64: positions with ``h > t`` (values within ``GRID_TOL`` of ``t`` count as equal)."""
    t = (thresholds.to(sorted_asc) + GRID_TOL).expand(sorted_asc.shape[0], -1).contiguous()
    return sorted_asc.shape[1] - torch.searchsorted(sorted_asc, t, right=True)


def count_at_least(sorted_asc: Tensor, thresholds: Tensor) -> Tensor:
    """``(N, K)`` int64: positions with ``h >= t`` (values within ``GRID_TOL`` of ``t`` count as equal)."""
    t = (thresholds.to(sorted_asc) - GRID_TOL).expand(sorted_asc.shape[0], -1).contiguous()
    return sorted_asc.shape[1] - torch.searchsorted(sorted_asc, t, right=False)


def trapezoid_mean(curves: Tensor) -> Tensor:
    """Trapezoid area under ``curves (N, K)`` on a uniform grid, normalised to a unit range: ``(N,)``."""
    return (curves[:, :-1] + curves[:, 1:]).sum(dim=1) / (2 * (curves.shape[1] - 1))


def run_plans(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    plans: Sequence[RangePlan],
    *,
    fill: Tensor,
    score: str,
    batch_size: int,
    dedup: bool = True,
) -> list[dict[str, Tensor]]:
    """Evaluate the plans' variants in one pass (shared ones once) and finish each plan."""
    ranks = descending_ranks(heatmaps)
    ranges = torch.cat([p.ranges for p in plans], dim=1)
    scores = evaluate_ranges(
        model,
        images,
        targets,
        ranks,
        ranges,
        fill=fill,
        score=score,
        batch_size=batch_size,
        dedup=dedup,
    )
    sizes = [p.ranges.shape[1] for p in plans]
    return [p.finish(s) for p, s in zip(plans, scores.split(sizes, dim=1), strict=True)]


def evaluate_plans(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    make_plans: Callable[[Tensor], Sequence[RangePlan]],
    *,
    score: str,
    target: str,
    baseline: float | str | Tensor,
    batch_size: int,
    seed: int,
    indices: Tensor | None,
    unit_range: bool = True,
) -> list[dict[str, Tensor]]:
    """A whole plan-based metric call: validate the inputs, plan, build the fill, run the plans.

    Args:
        make_plans: the metric's plans from the validated heatmaps ``(N, *S')``
            on the model's device.
        score, target, baseline, batch_size, seed, indices, unit_range: as in
            :func:`~xaibench.metrics.checks.prepare_perturbation`.

    Returns:
        One result dict per plan, in order.
    """
    images, heatmaps, targets, fill = prepare_perturbation(
        model, images, heatmaps, targets, score=score, target=target, baseline=baseline,
        batch_size=batch_size, seed=seed, indices=indices, unit_range=unit_range,
    )  # fmt: skip
    plans = make_plans(heatmaps)
    return run_plans(
        model, images, heatmaps, targets, plans, fill=fill, score=score, batch_size=batch_size
    )


def forward_counts(plans: Sequence[RangePlan], heatmaps: Tensor) -> dict[str, int]:
    """Forward passes for the plans: one per variant (``naive``), per plan after de-duplication
    (``per_metric``, each metric called alone) and across all plans (``shared``)."""
    num_pos = heatmaps[0].numel()

    def unique(ranges: Tensor) -> int:
        return count_unique_variants(ranges[..., 0] * (num_pos + 1) + ranges[..., 1])

    ranges = torch.cat([p.ranges for p in plans], dim=1)
    return {
        "naive": int(ranges.shape[0] * ranges.shape[1]),
        "per_metric": sum(unique(p.ranges) for p in plans),
        "shared": unique(ranges),
    }
