"""F-Fidelity (Zheng et al., ICLR 2025) on the given model: FFid+ and FFid−, accuracy-based.

For each sparsity ``s`` in ``step, 2·step, …, 1`` the explanation's top-``k``
(FFid+) or bottom-``k`` (FFid−) positions, ``k = round(s·P)``, are the
candidates; each of ``num_masks`` random masks removes every candidate
independently with probability ``p = min(0.5, max_removal·P/k)``, so at most
``max_removal`` of all positions are removed in expectation. The score drop
``s(x) − mean_m s(x̃_m)`` is averaged over the sparsities.

The random masks are a pure function of ``(seed, index, mask number,
position)`` (:func:`~xaibench.metrics.seeding.counter_uniform`), so results do
not depend on batch size or order. The paper's fine-tuned surrogate model is
not part of this function: pass the model you want evaluated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaibench.metrics.checks import check_step, prepare_perturbation
from xaibench.metrics.engine import descending_ranks, evaluate_variants
from xaibench.metrics.registry import register_metric
from xaibench.metrics.seeding import counter_uniform, sample_indices


@register_metric(
    "ffidelity",
    higher_is_better={"ffid_plus": True, "ffid_minus": False},
    random=True,
    smoke={"step": 0.5, "num_masks": 2},
)
def ffidelity(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    step: float = 0.05,
    num_masks: int = 50,
    removal_prob: float = 0.5,
    max_removal: float = 0.1,
    score: str = "accuracy",
    target: str = "label",
    baseline: float | str | Tensor = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    indices: Tensor | None = None,
) -> dict[str, Tensor]:
    """FFid+ and FFid− per sample, with their per-sparsity curves.

    Args:
        model: classifier in eval mode returning logits.
        images: ``(N, C, H, W)`` (or any ``(N, *S)``).
        heatmaps: ``(N, 1, H, W)`` or ``images.shape``; any finite values (only ranks matter).
        targets: ``(N,)`` class indices.
        step: sparsity step as a fraction of positions (0.05 = 5 %, …, 100 %); must divide 1.
        num_masks: random masks per sparsity (paper: 50).
        removal_prob: per-candidate removal probability before the cap (paper: 0.5).
        max_removal: cap on the expected removed fraction of all positions (paper: 0.1).
        score: ``"accuracy"`` (paper) or ``"confidence"``.
        target: ``"label"`` or ``"predicted"``.
        baseline: fill of removed positions, see :func:`~xaibench.baselines.make_baseline`.
        batch_size: variants per forward pass.
        seed: seed of the random masks.
        indices: ``(N,)`` dataset indices seeding per-sample draws (default ``arange(N)``).

    Returns:
        ``ffid_plus``, ``ffid_minus`` ``(N,)``; ``ffid_plus_curve``,
        ``ffid_minus_curve`` ``(N, S)``; ``sparsities`` ``(S,)``.
    """
    if not isinstance(num_masks, int) or num_masks < 1:
        raise ValueError(f"num_masks must be a positive int, got {num_masks!r}")
    if not 0.0 < removal_prob <= 1.0 or not 0.0 < max_removal <= 1.0:
        raise ValueError(
            f"removal_prob and max_removal must be in (0, 1], got {removal_prob!r}, {max_removal!r}"
        )
    images, heatmaps, targets, fill = prepare_perturbation(
        model, images, heatmaps, targets, score=score, target=target, baseline=baseline,
        batch_size=batch_size, seed=seed, indices=indices, unit_range=False,
    )  # fmt: skip
    n = images.shape[0]
    idx = sample_indices(n, indices, images.device)
    ranks = descending_ranks(heatmaps).flatten(1)  # (N, P), 0 = most relevant
    num_pos = ranks.shape[1]
    intervals = check_step(step, 1.0, what="the range [0, 1]")
    sparsities = (
        torch.arange(1, intervals + 1, device=images.device, dtype=torch.float64) / intervals
    )
    counts = torch.round(sparsities * num_pos).clamp_min(1).to(torch.int64)  # k per sparsity
    probs = torch.clamp(max_removal * num_pos / counts.to(torch.float64), max=removal_prob)
    per_side = intervals * num_masks
    # variant ki: side = ki // per_side (0: top-k, 1: bottom-k), sparsity = (ki // num_masks) % S;
    # the last variant (ki = 2 * per_side) is the clean image
    num_variants = 2 * per_side + 1

    def keep_fn(si: Tensor, ki: Tensor) -> Tensor:
        side, sp = ki // per_side, (ki // num_masks) % intervals
        k = torch.where(ki < 2 * per_side, counts[sp], 0)[:, None]
        r = ranks[si]
        candidate = torch.where(side[:, None] == 0, r < k, r >= num_pos - k)
        u = counter_uniform(seed, idx[si], ki, num_pos)
        keep = ~(candidate & (u < probs[sp][:, None]))
        return keep.view(-1, *heatmaps.shape[1:])

    scores = evaluate_variants(
        model, images, targets, keep_fn, num_variants, fill=fill, score=score, batch_size=batch_size
    )
    clean = scores[:, -1:]
    drops = (clean - scores[:, :-1]).view(n, 2, intervals, num_masks).mean(dim=3)  # (N, side, S)
    return {
        "ffid_plus": drops[:, 0].mean(dim=1),
        "ffid_minus": drops[:, 1].mean(dim=1),
        "ffid_plus_curve": drops[:, 0],
        "ffid_minus_curve": drops[:, 1],
        "sparsities": sparsities.to(scores.dtype),
    }
