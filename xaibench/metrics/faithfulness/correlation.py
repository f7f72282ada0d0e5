"""Row-wise Pearson and Spearman correlations in torch, NaN where undefined.

Both take ``a, b (N, K)`` and return ``(N,)``. A row with zero variance in
``a`` or ``b`` (a constant heatmap, a model that ignores every perturbation)
has no correlation: it is NaN, never a silent 0. Non-finite inputs propagate
as NaN. These match ``scipy.stats.pearsonr`` / ``spearmanr`` (average ranks
for ties), which Quantus 0.6 calls.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pearson(a: Tensor, b: Tensor, *, eps: float = 0.0) -> Tensor:
    """Pearson correlation of each row pair, ``(N,)`` in ``[-1, 1]`` or NaN.

    Args:
        a: ``(N, K)`` values.
        b: ``(N, K)`` values.
        eps: added inside each square root as DeepFaith's own ``pearson`` does
            (``compat`` mode only): it turns an undefined correlation into 0
            and shrinks defined ones slightly. ``0`` (default) gives NaN instead.
    """
    a, b = _promote(a, b)
    ac = a - a.mean(dim=1, keepdim=True)
    bc = b - b.mean(dim=1, keepdim=True)
    num = (ac * bc).sum(dim=1)
    den = torch.sqrt((ac * ac).sum(dim=1) + eps) * torch.sqrt((bc * bc).sum(dim=1) + eps)
    out = num / den
    if eps == 0.0:
        out = torch.where(den > 0, out, torch.full_like(out, float("nan")))
    return out.clamp(-1.0, 1.0)


def average_ranks(x: Tensor) -> Tensor:
    """Ranks ``1..K`` of each row of ``x (N, K)``, ties given their average rank (``scipy.stats.rankdata``)."""
    n, k = x.shape
    values, order = torch.sort(x, dim=1, stable=True)
    pos = torch.arange(k, device=x.device).expand(n, k)
    new_group = torch.ones_like(values, dtype=torch.bool)
    new_group[:, 1:] = values[:, 1:] != values[:, :-1]
    # first position of each element's tie group: running max of group starts
    first = torch.cummax(torch.where(new_group, pos, torch.zeros_like(pos)), dim=1).values
    # last position: the same from the right on the reversed row
    ends = torch.ones_like(new_group)
    ends[:, :-1] = new_group[:, 1:]
    rev = torch.where(ends, pos, torch.full_like(pos, k)).flip(1)
    last = torch.cummin(rev, dim=1).values.flip(1)
    avg = (first + last).to(torch.float64) / 2.0 + 1.0
    ranks = torch.empty_like(avg)
    ranks.scatter_(1, order, avg)
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each row pair (Pearson of average ranks), ``(N,)`` or NaN."""
    a, b = _promote(a, b)
    bad = ~(torch.isfinite(a).all(dim=1) & torch.isfinite(b).all(dim=1))
    out = pearson(average_ranks(a), average_ranks(b)).to(a.dtype)
    return torch.where(bad, torch.full_like(out, float("nan")), out)


def argsort_pearson(a: Tensor, b: Tensor) -> Tensor:
    """DeepFaith's ``spearman`` (``compat`` only): Pearson of the argsort *indices*, not of the ranks.

    The argsort of a row is the inverse permutation of its ranks, so this is
    not a rank correlation; kept only to reproduce DeepFaith's numbers.
    Constant rows give 0 there; here the argsort of a constant row is
    ``0..K-1`` for both, which is what DeepFaith computes too.
    """
    ia = torch.argsort(a, dim=1, stable=True).to(torch.float64)
    ib = torch.argsort(b, dim=1, stable=True).to(torch.float64)
    return pearson(ia, ib, eps=1e-12).to(a.dtype)


def _promote(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"correlations need two (N, K) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    dtype = torch.promote_types(a.dtype, b.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float64
    return a.to(dtype), b.to(dtype)
