"""Localization against ground-truth region masks: pointing game, relevance mass and rank, IoU.

Masks are ``(N, 1, H, W)`` bool (True = object). All four are tensor ops over
the batch; a sample with an empty mask or an all-zero heatmap has no defined
value and gets NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaibench.metrics.checks import (
    GRID_TOL,
    check_alpha_min,
    check_heatmaps,
    check_images,
    check_masks,
)
from xaibench.metrics.engine import descending_ranks
from xaibench.metrics.registry import register_metric


def _nan_where(values: Tensor, undefined: Tensor) -> Tensor:
    return torch.where(undefined, torch.full_like(values, float("nan")), values)


@register_metric(
    "localization",
    higher_is_better={
        "pointing_game": True,
        "relevance_mass": True,
        "relevance_rank": True,
        "iou": True,
    },
    needs=("masks",),
    nan_when="empty mask, or all-zero heatmap (relevance_mass)",
)
def localization(
    model: nn.Module | None,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    masks: Tensor,
    alpha_min: float = 0.5,
) -> dict[str, Tensor]:
    """Localization scores per sample (the model is not queried).

    Args:
        model: unused (kept for the common metric call shape).
        images: ``(N, C, H, W)``; only the shape is checked.
        heatmaps: ``(N, 1, H, W)`` in ``[0, 1]``.
        targets: ``(N,)``; unused.
        masks: ``(N, 1, H, W)`` bool ground-truth regions.
        alpha_min: threshold for the IoU mask ``h >= alpha_min`` (as MSI's penalty).

    Returns:
        ``pointing_game`` (1.0 if a maximum of ``h`` lies in the mask),
        ``relevance_mass`` (share of ``sum h`` inside the mask),
        ``relevance_rank`` (share of the top-``|mask|`` positions inside the mask;
        stable ties), ``iou`` (IoU of ``h >= alpha_min`` and the mask), each ``(N,)``.
    """
    check_images(images)
    check_heatmaps(heatmaps, images)
    check_masks(masks, heatmaps)
    check_alpha_min(alpha_min)
    masks = masks.to(heatmaps.device)
    h, m = heatmaps.flatten(1), masks.flatten(1)
    area = m.sum(dim=1)
    empty = area == 0
    is_max = h == h.amax(dim=1, keepdim=True)
    pointing = (is_max & m).any(dim=1).to(h.dtype)
    total = h.sum(dim=1)
    mass = (h * m).sum(dim=1) / total.clamp_min(torch.finfo(h.dtype).tiny)
    top = descending_ranks(h) < area[:, None]  # the |mask| highest-ranked positions
    rank = (top & m).sum(dim=1).to(h.dtype) / area.clamp_min(1).to(h.dtype)
    pred = h >= alpha_min - GRID_TOL
    union = (pred | m).sum(dim=1)
    iou = (pred & m).sum(dim=1).to(h.dtype) / union.clamp_min(1).to(h.dtype)
    return {
        "pointing_game": _nan_where(pointing, empty),
        "relevance_mass": _nan_where(mass, empty | (total == 0)),
        "relevance_rank": _nan_where(rank, empty),
        "iou": _nan_where(iou, empty),
    }
