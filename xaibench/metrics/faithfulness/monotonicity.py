"""Monotonicity Correlation (Nguyen & Rodríguez Martínez, 2020): MC, higher is better.

Remove the elements chunk by chunk in order of *increasing* attribution, each
chunk on its own; correlate (Spearman) each chunk's attribution sum with the
normalised squared score change it causes.
"""

from __future__ import annotations

import torch
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
from xaibench.metrics.faithfulness.correlation import argsort_pearson, spearman
from xaibench.metrics.registry import register_metric

VARIANTS = ("quantus", "deepfaith")
SMOKE = {"features_in_step": 64, "nr_samples": 3}
"""A tiny call for the registry contract test (the defaults make one forward pass per element)."""


@register_metric("monotonicity_correlation", higher_is_better=True, random=True, smoke=SMOKE)
def monotonicity_correlation(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    variant: str = "quantus",
    features_in_step: int | None = None,
    nr_samples: int = 100,
    eps: float = 1e-5,
    baseline: float | str | None = None,
    softmax: bool = True,
    abs: bool = True,
    normalise: bool = True,
    compat: bool = False,
    seed: int = 0,
    indices: Tensor | None = None,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Spearman correlation between chunk attribution sums and normalised score variance.

    Elements sorted by increasing attribution (stable) form ``K = ceil(F /
    features_in_step)`` chunks; removing chunk ``k`` alone gives
    ``v_k = mean_s (y(x∖chunk_k; s) - y(x))² / y(x)²`` (``1/y(x)²`` replaced by
    1 when ``|y(x)| < eps``), averaged over ``nr_samples`` baseline draws ``s``.

    Variants:
        ``quantus`` (Quantus 0.6 ``MonotonicityCorrelation``): softmax
        probability of the target (logit with ``softmax=False``; Quantus's
        default is ``softmax=True`` here), ``abs=True``, baseline ``"uniform"``
        (one U[0, 1) value per sample and draw), ``nr_samples=100``,
        ``features_in_step=1``. A deterministic baseline makes all draws equal,
        so it is evaluated once.
        ``deepfaith``: softmax probability of the clean prediction, baseline 0,
        one draw, ``features_in_step=3136``. Corrected here: DeepFaith averages
        ``(y - y(x))²`` over the *batch* (coupling samples; values depend on the
        batch) and its "Spearman" is a Pearson of ``argsort`` indices (not of
        ranks). We use each sample's own term and a true Spearman (average
        ranks); ``compat=True`` reproduces both originals.

    Args:
        model: classifier in eval mode returning logits.
        images: ``(N, C, H, W)`` (or ``(N, *S)``) inputs.
        heatmaps: ``(N, 1, H, W)`` or ``(N, C, H, W)``; signed allowed for ``quantus``, else in ``[0, 1]``.
        targets: ``(N,)`` class indices (used by ``quantus``).
        features_in_step: elements per chunk.
        nr_samples: baseline draws per chunk (``quantus``).
        eps: threshold below which ``|y(x)|`` is not used to normalise.
        baseline: number or ``black``/``white``/``mean``/``uniform`` (``quantus``); number (``deepfaith``).
        softmax, abs, normalise: Quantus's options (``quantus`` only).
        compat: reproduce DeepFaith's batch-coupled variance and argsort "Spearman".
        seed, indices: seed the ``uniform`` draws per ``(seed, indices[i])``.
        batch_size: perturbed images per forward pass.

    Returns:
        ``monotonicity_correlation`` ``(N,)`` in ``[-1, 1]`` (NaN if undefined);
        ``attribution_sums`` and ``variances`` ``(N, K)`` (chunk order, least relevant first).
    """
    p = prepare(
        model, images, heatmaps, targets, variant=variant, variants=VARIANTS, metric="monotonicity_correlation",
        indices=indices, batch_size=batch_size, softmax=softmax, abs=abs, normalise=normalise,
    )  # fmt: skip
    quantus = variant == "quantus"
    step = check_positive_int("features_in_step", features_in_step, 1 if quantus else 3136)
    baseline = resolve_baseline(baseline, variant, quantus_default="uniform")
    draws = (
        check_positive_int("nr_samples", nr_samples) if (quantus and baseline == "uniform") else 1
    )
    # (N, F) chunk of each element, least relevant first
    chunk, k = element_chunks(element_ranks(p.attributions, descending=False), step)
    fill = single_fill(p, baseline, seed, k * draws)

    def keep_fn(si: Tensor, ki: Tensor) -> Tensor:  # variant ki = chunk * draws + draw
        return (chunk[si] != (ki // draws)[:, None]).view(-1, *p.images.shape[1:])

    scores = evaluate_variants(
        model,
        p.images,
        p.targets,
        keep_fn,
        k * draws,
        fill=fill,
        score=p.score,
        batch_size=batch_size,
    ).view(-1, k, draws)
    y0 = p.clean
    inv = torch.where(y0.abs() >= eps, 1.0 / y0.abs().clamp_min(eps), torch.ones_like(y0)) ** 2
    sq = (scores - y0[:, None, None]) ** 2
    if compat and not quantus:
        variances = sq.mean(dim=2).mean(dim=0, keepdim=True) * inv[:, None]
    else:
        variances = sq.mean(dim=2) * inv[:, None]
    sums = chunk_sums(p.attributions.flatten(1), chunk, k)
    value = (
        argsort_pearson(variances, sums) if (compat and not quantus) else spearman(sums, variances)
    )
    return {"monotonicity_correlation": value, "attribution_sums": sums, "variances": variances}
