"""Turning raw attributions into heatmaps: channel reduction and normalisation.

Every explainer ends with these two steps, and anything else that holds raw
attributions (a DeepFaith prior cache, a figure) can reuse them:

- :func:`reduce_channels` ``(N, C, H, W) -> (N, 1, H, W)``
- :func:`normalize_maps` ``(N, 1, H, W) -> (N, 1, H, W) in [0, 1]``, per sample.

All ops are batched torch on the input's device.
"""

from __future__ import annotations

import torch
from torch import Tensor

REDUCTIONS = ("sum_abs", "abs_sum", "sum", "max_abs", "l2")
NORMALIZATIONS = ("minmax", "abs_max", "percentile", "none")


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` or raise a ``ValueError`` naming the choices."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is unknown; choose one of {list(REDUCTIONS)}")
    return reduction


def check_normalization(normalize: str, percentile: float = 99.0) -> str:
    """Return ``normalize`` or raise a ``ValueError`` naming the choices."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"normalize={normalize!r} is unknown; choose one of {list(NORMALIZATIONS)}"
        )
    if not (0.0 < float(percentile) <= 100.0):
        raise ValueError(f"percentile={percentile!r} must be in (0, 100], e.g. 99.0")
    return normalize


def reduce_channels(attributions: Tensor, reduction: str = "sum_abs") -> Tensor:
    """Collapse the channel axis of per-pixel attributions.

    Args:
        attributions: ``(N, C, H, W)`` raw attributions, any sign.
        reduction: ``"sum_abs"`` (Σ_c |a_c|, default), ``"abs_sum"`` (|Σ_c a_c|),
            ``"sum"`` (Σ_c a_c, signed), ``"max_abs"`` (max_c |a_c|) or
            ``"l2"`` (‖a‖₂ over channels).

    Returns:
        ``(N, 1, H, W)``, same dtype and device.
    """
    check_reduction(reduction)
    if attributions.dim() != 4:
        raise ValueError(
            f"attributions {tuple(attributions.shape)} must be (N, C, H, W) to reduce channels"
        )
    if reduction == "sum_abs":
        return attributions.abs().sum(1, keepdim=True)
    if reduction == "abs_sum":
        return attributions.sum(1, keepdim=True).abs()
    if reduction == "sum":
        return attributions.sum(1, keepdim=True)
    if reduction == "max_abs":
        return attributions.abs().amax(1, keepdim=True)
    return attributions.pow(2).sum(1, keepdim=True).sqrt()


def normalize_maps(maps: Tensor, method: str = "minmax", *, percentile: float = 99.0) -> Tensor:
    """Map each sample's heatmap into [0, 1].

    Args:
        maps: ``(N, ...)`` heatmaps (usually ``(N, 1, H, W)``), any sign.
        method: per sample, over all non-batch positions:
            ``"minmax"`` — ``(h - min) / (max - min)`` (a constant map becomes 0);
            ``"abs_max"`` — ``|h| / max |h|`` (keeps 0 at 0; the sign is dropped);
            ``"percentile"`` — ``min(|h| / q, 1)`` with ``q`` the ``percentile``-th
            percentile of ``|h|`` (clips outliers, as Captum's visualiser);
            ``"none"`` — no rescaling; the maps must already lie in [0, 1].
        percentile: the clipping percentile for ``"percentile"``, in (0, 100].

    Returns:
        Heatmaps of the same shape in [0, 1].

    Raises:
        ValueError: unknown method, or ``"none"`` with values outside [0, 1].
    """
    check_normalization(method, percentile)
    if maps.dim() < 2:
        raise ValueError(f"maps {tuple(maps.shape)} must have a batch axis and at least one more")
    flat = maps.flatten(1)  # (N, P): one row per sample
    if method == "none":
        if flat.numel() and (not bool(flat.isfinite().all()) or flat.min() < 0 or flat.max() > 1):
            raise ValueError(
                f"normalize='none' needs heatmaps in [0, 1], got range "
                f"[{flat.min().item():.4g}, {flat.max().item():.4g}]; use normalize='minmax'"
            )
        return maps
    if method == "minmax":
        lo = flat.amin(1, keepdim=True)
        span = flat.amax(1, keepdim=True) - lo
        out = (flat - lo) / span.clamp_min(_tiny(flat))
        out = out.masked_fill(span <= 0, 0.0)  # constant map -> 0, not NaN
    elif method == "abs_max":
        mag = flat.abs()
        top = mag.amax(1, keepdim=True)
        out = (mag / top.clamp_min(_tiny(flat))).masked_fill(top <= 0, 0.0)
    else:  # percentile
        mag = flat.abs()
        q = mag.float().quantile(float(percentile) / 100.0, dim=1, keepdim=True).to(mag.dtype)
        # fall back to the max where the percentile is 0 (a sparse map)
        q = q.where(q > 0, mag.amax(1, keepdim=True))
        out = (mag / q.clamp_min(_tiny(flat))).clamp(max=1.0).masked_fill(q <= 0, 0.0)
    return out.clamp(0.0, 1.0).view_as(maps)


def _tiny(x: Tensor) -> float:
    """Smallest positive normal number of ``x``'s dtype (guards divisions)."""
    return float(torch.finfo(x.dtype).tiny) if x.is_floating_point() else 1e-12
