"""Faithfulness Correlation (Bhatt et al., IJCAI 2020): FC, higher is better.

Remove a random subset of elements many times; correlate (Pearson) the sum of
the attributions of each subset with the drop in the model's score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaibench.metrics.engine import evaluate_variants
from xaibench.metrics.faithfulness.common import (
    STREAM_SUBSET,
    check_positive_int,
    prepare,
    resolve_baseline,
    single_fill,
)
from xaibench.metrics.faithfulness.correlation import pearson
from xaibench.metrics.registry import register_metric
from xaibench.metrics.seeding import counter_uniform

VARIANTS = ("quantus", "deepfaith")


def random_subsets(
    seed: int,
    index: Tensor,
    runs: int,
    size: int,
    num_elements: int,
    *,
    stream: int = STREAM_SUBSET,
) -> Tensor:
    """``(N, runs, size)`` int64: per sample and run, ``size`` distinct element indices drawn uniformly.

    Run ``r`` of sample ``i`` takes the ``size`` smallest of ``num_elements``
    counter-based uniforms keyed by ``(seed, index[i], stream + r)`` (ties
    broken by position), so the subsets depend on nothing else. Built ``64``
    rows at a time to bound memory at ``64 · num_elements`` floats.
    """
    n = index.shape[0]
    rows_i = index.repeat_interleave(runs)
    rows_r = torch.arange(runs, device=index.device).repeat(n) + stream
    pos = torch.arange(num_elements, device=index.device)
    out = []
    for start in range(0, n * runs, 64):
        sl = slice(start, min(start + 64, n * runs))
        u = counter_uniform(seed, rows_i[sl], rows_r[sl], num_elements)
        key = (u * float(1 << 24)).to(torch.int64) * num_elements + pos  # unique keys: no ties
        out.append(torch.topk(key, size, dim=1, largest=False, sorted=True).indices)
    if not out:
        return torch.empty((n, runs, size), dtype=torch.int64, device=index.device)
    return torch.cat(out).view(n, runs, size)


@register_metric(
    "faithfulness_correlation", higher_is_better=True, random=True, smoke={"nr_runs": 10}
)
def faithfulness_correlation(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    variant: str = "quantus",
    nr_runs: int | None = None,
    subset_size: int | None = None,
    baseline: float | str | None = None,
    softmax: bool = False,
    abs: bool = False,
    normalise: bool = True,
    compat: bool = False,
    seed: int = 0,
    indices: Tensor | None = None,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Pearson correlation between subset attribution sums and score drops.

    For runs ``r = 1..R``: remove a random subset ``S_r`` of ``subset_size``
    elements (fill with the baseline), and pair ``Σ_{j∈S_r} a_j`` with
    ``y(x) - y(x∖S_r)``; the value is the Pearson correlation of the ``R`` pairs.

    Variants:
        ``quantus`` (Quantus 0.6 ``FaithfulnessCorrelation``): ``y`` the
        target's logit (softmax probability with ``softmax=True``); baseline
        ``"black"`` (per-sample min) by default; ``R = 100``, ``|S| = 224``.
        ``deepfaith``: ``y`` the softmax probability of the clean predicted
        class; baseline 0; ``R = 50``, ``|S| = 3136`` (its ImageNet config).
        ``compat=True`` adds DeepFaith's ``1e-5`` inside the Pearson square
        roots (undefined correlations become 0 instead of NaN).

    Args:
        model: classifier in eval mode returning logits.
        images: ``(N, C, H, W)`` (or ``(N, *S)``) model inputs.
        heatmaps: ``(N, 1, H, W)`` or ``(N, C, H, W)``; in ``[0, 1]`` except for
            ``quantus``, which takes signed attributions.
        targets: ``(N,)`` class indices (``quantus``; the others score the clean prediction).
        nr_runs: number of random subsets ``R`` (variant default if None).
        subset_size: elements per subset, ``< C·H·W`` (variant default if None).
        baseline: a number or ``black``/``white``/``mean``/``uniform`` (``quantus``); a number (``deepfaith``).
        softmax, abs, normalise: Quantus's options (``quantus`` only).
        compat: reproduce DeepFaith's ``eps`` Pearson (``deepfaith`` only).
        seed: seed of the subset draws; sample ``i`` draws from ``(seed, indices[i])``.
        indices: ``(N,)`` dataset indices (default ``0..N-1``).
        batch_size: perturbed images per forward pass.

    Returns:
        ``faithfulness_correlation`` ``(N,)`` in ``[-1, 1]`` (NaN where the sums
        or the drops are constant); ``attribution_sums`` and ``score_drops``
        ``(N, R)`` (drops in logit or probability units).
    """
    p = prepare(
        model, images, heatmaps, targets, variant=variant, variants=VARIANTS, metric="faithfulness_correlation",
        indices=indices, batch_size=batch_size, softmax=softmax, abs=abs, normalise=normalise,
    )  # fmt: skip
    quantus = variant == "quantus"
    runs = check_positive_int("nr_runs", nr_runs, 100 if quantus else 50)
    size = check_positive_int("subset_size", subset_size, 224 if quantus else 3136)
    baseline = resolve_baseline(baseline, variant)
    n, f = p.images.shape[0], p.images[0].numel()
    if size >= f:
        raise ValueError(
            f"subset_size={size} must be smaller than the {f} elements per image; lower it (e.g. {max(1, f // 4)})"
        )
    subsets = random_subsets(seed, p.index, runs, size, f)  # (N, R, S)
    fill = single_fill(p, baseline, seed, runs)

    def keep_fn(si: Tensor, ki: Tensor) -> Tensor:
        removed = torch.zeros((si.shape[0], f), dtype=torch.bool, device=si.device)
        removed.scatter_(1, subsets[si, ki], True)
        return (~removed).view(-1, *p.images.shape[1:])

    scores = evaluate_variants(
        model, p.images, p.targets, keep_fn, runs, fill=fill, score=p.score, batch_size=batch_size
    )
    drops = p.clean[:, None] - scores
    sums = p.attributions.flatten(1).gather(1, subsets.view(n, -1)).view(n, runs, size).sum(dim=2)
    value = pearson(sums, drops, eps=1e-5 if (compat and not quantus) else 0.0)
    return {"faithfulness_correlation": value, "attribution_sums": sums, "score_drops": drops}
