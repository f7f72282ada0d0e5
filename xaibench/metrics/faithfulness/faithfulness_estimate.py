"""Faithfulness Estimate (Alvarez-Melis & Jaakkola, 2018): FE, higher is better.

Remove the elements chunk by chunk in order of decreasing attribution, each
chunk on its own (not cumulatively); correlate (Pearson) each chunk's
attribution sum with the score drop it causes.
"""

from __future__ import annotations

from torch import Tensor, nn

from xaibench.metrics.engine import evaluate_variants
from xaibench.metrics.faithfulness.common import (
    check_positive_int,
    chunk_sums,
    element_chunks,
    element_ranks,
    prepare,
    resolve_baseline,
    single_fill,
)
from xaibench.metrics.faithfulness.correlation import pearson
from xaibench.metrics.registry import register_metric

VARIANTS = ("quantus", "deepfaith")


@register_metric("faithfulness_estimate", higher_is_better=True, random=True)
def faithfulness_estimate(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    variant: str = "quantus",
    features_in_step: int | None = None,
    baseline: float | str | None = None,
    softmax: bool = False,
    abs: bool = False,
    normalise: bool = True,
    compat: bool = False,
    seed: int = 0,
    indices: Tensor | None = None,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Pearson correlation between chunk attribution sums and the score drop of removing each chunk.

    Elements are sorted by decreasing attribution (stable) and cut into
    ``K = ceil(F / features_in_step)`` chunks; chunk ``k`` alone is replaced by
    the baseline and paired with ``y(x) - y(x∖chunk_k)``.

    Variants:
        ``quantus`` (Quantus 0.6 ``FaithfulnessEstimate``): target logit (or
        softmax with ``softmax=True``), baseline ``"black"``, ``features_in_step=1``
        (one forward pass per element: set it higher for real images).
        ``deepfaith``: softmax probability of the clean prediction, baseline 0,
        ``features_in_step=3136`` (its ImageNet config); ``compat`` adds its
        ``1e-5`` inside the Pearson square roots.

    Args:
        model: classifier in eval mode returning logits.
        images: ``(N, C, H, W)`` (or ``(N, *S)``) inputs.
        heatmaps: ``(N, 1, H, W)`` or ``(N, C, H, W)``; signed allowed for ``quantus``, else in ``[0, 1]``.
        targets: ``(N,)`` class indices (used by ``quantus``).
        features_in_step: elements per chunk.
        baseline: a number or ``black``/``white``/``mean``/``uniform`` (``quantus``); a number (``deepfaith``).
        softmax, abs, normalise: Quantus's options (``quantus`` only).
        compat: DeepFaith's ``eps`` Pearson (``deepfaith`` only).
        seed, indices: seed the ``uniform`` baseline draws per ``(seed, indices[i])``.
        batch_size: perturbed images per forward pass.

    Returns:
        ``faithfulness_estimate`` ``(N,)`` in ``[-1, 1]`` (NaN if undefined);
        ``attribution_sums`` and ``score_drops`` ``(N, K)`` in chunk order.
    """
    p = prepare(
        model, images, heatmaps, targets, variant=variant, variants=VARIANTS, metric="faithfulness_estimate",
        indices=indices, batch_size=batch_size, softmax=softmax, abs=abs, normalise=normalise,
    )  # fmt: skip
    quantus = variant == "quantus"
    step = check_positive_int("features_in_step", features_in_step, 1 if quantus else 3136)
    baseline = resolve_baseline(baseline, variant)
    chunk, k = element_chunks(element_ranks(p.attributions), step)  # (N, F) chunk of each element
    fill = single_fill(p, baseline, seed, k)

    def keep_fn(si: Tensor, ki: Tensor) -> Tensor:
        return (chunk[si] != ki[:, None]).view(-1, *p.images.shape[1:])

    scores = evaluate_variants(
        model, p.images, p.targets, keep_fn, k, fill=fill, score=p.score, batch_size=batch_size
    )
    drops = p.clean[:, None] - scores
    sums = chunk_sums(p.attributions.flatten(1), chunk, k)
    value = pearson(sums, drops, eps=1e-5 if (compat and not quantus) else 0.0)
    return {"faithfulness_estimate": value, "attribution_sums": sums, "score_drops": drops}
