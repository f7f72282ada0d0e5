"""Deletion (pixel flipping, DEL; lower is better) and Insertion (INS; higher is better).

Registered as ``faithfulness_deletion`` and ``faithfulness_insertion`` so they
do not collide with the LAX-paper ``insertion_deletion`` metric (threshold /
percent curves with accuracy scores). ``faithfulness_deletion`` with
``variant="quantus"`` is Quantus's ``PixelFlipping`` (Bach et al., 2015);
with ``"deepfaith"`` it is DeepFaith's DEL; ``"rise"`` is the Deletion of
Petsiuk et al. (RISE, 2018). ``faithfulness_insertion`` has ``deepfaith`` and
``rise`` (Quantus 0.6 has no insertion metric).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaibench.baselines import gaussian_blur
from xaibench.metrics.engine import evaluate_variants
from xaibench.metrics.faithfulness.common import (
    Prepared,
    check_positive_int,
    constant_fill,
    cumulative_fill,
    cumulative_keep,
    cumulative_scores,
    deepfaith_auc,
    element_chunks,
    element_ranks,
    prepare,
    resolve_baseline,
)
from xaibench.metrics.registry import register_metric


def _rise_curve(
    model: nn.Module, p: Prepared, step: int, substrate: Tensor, *, insert: bool, batch_size: int
) -> tuple[Tensor, Tensor]:
    """RISE's ``n + 1`` point curve over heatmap positions and its trapezoid AUC on ``[0, 1]``."""
    # (N, P) chunk of each of the heatmap's own positions
    chunk, n_steps = element_chunks(element_ranks(p.heatmaps), step)
    keep_fn = cumulative_keep(chunk, tuple(p.heatmaps.shape[1:]), first=-1, insert=insert)
    curve = evaluate_variants(
        model, p.images, p.targets, keep_fn, n_steps + 1, fill=substrate, score=p.score,
        batch_size=batch_size,
    )  # fmt: skip
    return curve, torch.trapezoid(curve, dx=1.0 / n_steps, dim=1)


@register_metric("faithfulness_deletion", higher_is_better=False, random=True)
def faithfulness_deletion(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    variant: str = "quantus",
    features_in_step: int | None = None,
    baseline: float | str | None = None,
    softmax: bool = True,
    abs: bool = False,
    normalise: bool = True,
    seed: int = 0,
    indices: Tensor | None = None,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Score curve while removing elements in order of decreasing attribution, and its area.

    Variants:
        ``quantus`` (Quantus 0.6 ``PixelFlipping`` with ``return_auc_per_sample``):
        ``K = ceil(F / features_in_step)`` cumulative steps (``features_in_step=1``
        by default), removed elements set to the baseline (``"black"``, the
        per-sample min; ``"mean"``/``"uniform"`` follow Quantus's recomputation
        on the already perturbed image); curve = softmax probability of the target (Quantus's default here;
        the logit with ``softmax=False``) after each step, no start point;
        area = ``np.trapz(curve, dx=1)``, in probability·steps (not normalised).
        ``deepfaith``: chunks of ``features_in_step=3136`` elements set to 0;
        curve = softmax probability of the clean prediction after each chunk;
        area = trapezoid over x = ``arange(0, F, chunk) / F`` (DeepFaith's axis,
        see :func:`~xaibench.metrics.faithfulness.common.deepfaith_axis`).
        ``rise``: heatmap positions (pixels for ``(N,1,H,W)``, all channels at
        once) removed ``features_in_step=224`` at a time to 0; ``n + 1`` points
        from the clean image to the empty one; trapezoid on ``[0, 1]``.

    Args:
        model: classifier in eval mode returning logits.
        images: ``(N, C, H, W)`` (``(N, *S)`` for quantus/deepfaith) inputs.
        heatmaps: ``(N, 1, H, W)`` or ``(N, C, H, W)``; signed allowed for ``quantus``, else in ``[0, 1]``.
        targets: ``(N,)`` class indices (used by ``quantus``).
        features_in_step: elements (positions for ``rise``) removed per step.
        baseline: ``quantus``: number or ``black``/``white``/``mean``/``uniform``;
            ``deepfaith``/``rise``: a number (0).
        softmax, abs, normalise: Quantus's options (``quantus`` only).
        seed, indices: seed the ``uniform`` draws per ``(seed, indices[i])``.
        batch_size: perturbed images per forward pass.

    Returns:
        ``faithfulness_deletion`` ``(N,)`` area (lower is better) and
        ``deletion_curve`` ``(N, K)`` (``K + 1`` points for ``rise``).
    """
    p = prepare(
        model, images, heatmaps, targets, variant=variant, variants=("quantus", "deepfaith", "rise"),
        metric="faithfulness_deletion", indices=indices, batch_size=batch_size, softmax=softmax, abs=abs,
        normalise=normalise,
    )  # fmt: skip
    default_step = {"quantus": 1, "deepfaith": 3136, "rise": 224}[variant]
    step = check_positive_int("features_in_step", features_in_step, default_step)
    baseline = resolve_baseline(baseline, variant)
    if variant == "rise":
        curve, area = _rise_curve(
            model, p, step, constant_fill(p.images, baseline), insert=False, batch_size=batch_size
        )
        return {"faithfulness_deletion": area, "deletion_curve": curve}
    chunk, k = element_chunks(element_ranks(p.attributions), step)  # (N, F)
    fill = cumulative_fill(p.images, baseline, chunk, k, seed, p.index).view_as(p.images)
    curve = cumulative_scores(model, p, chunk, k, fill=fill, batch_size=batch_size)
    if variant == "quantus":
        area = torch.trapezoid(curve, dx=1.0, dim=1)
    else:
        area = deepfaith_auc(curve, p.images[0].numel(), step)
    return {"faithfulness_deletion": area, "deletion_curve": curve}


@register_metric("faithfulness_insertion", higher_is_better=True)
def faithfulness_insertion(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    variant: str = "deepfaith",
    features_in_step: int | None = None,
    sigma: float = 5.0,
    kernel_size: int | None = None,
    seed: int = 0,
    indices: Tensor | None = None,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Score curve while inserting elements, most relevant first, into a blurred image; and its area.

    Variants:
        ``deepfaith``: substrate = Gaussian blur (``sigma=5``, ``kernel_size=15``,
        reflect padding: ``torchvision.transforms.GaussianBlur``); chunks of
        ``features_in_step=3136`` elements inserted cumulatively; curve =
        softmax probability of the clean prediction after each chunk (no
        start point); area = trapezoid over x = ``arange(0, F, chunk) / F``.
        ``rise``: substrate = Gaussian blur (``sigma=5``, ``kernel_size=11``;
        RISE pads its 11×11 kernel with zeros, we reflect); heatmap positions
        inserted ``features_in_step=224`` at a time (all channels); ``n + 1``
        points from the blurred image to the clean one; trapezoid on ``[0, 1]``.

    Args:
        model: classifier in eval mode returning logits.
        images: ``(N, C, H, W)`` inputs.
        heatmaps: ``(N, 1, H, W)`` or ``(N, C, H, W)`` in ``[0, 1]``.
        targets: ``(N,)`` class indices (validated; the clean prediction is scored).
        features_in_step: elements (``rise``: heatmap positions) inserted per step.
        sigma: blur standard deviation in pixels.
        kernel_size: blur taps (odd); variant default if None.
        seed, indices: unused (deterministic); accepted for the common call shape.
        batch_size: perturbed images per forward pass.

    Returns:
        ``faithfulness_insertion`` ``(N,)`` area in probability units (higher
        is better) and ``insertion_curve`` ``(N, K)`` (``K + 1`` for ``rise``).
    """
    p = prepare(
        model, images, heatmaps, targets, variant=variant, variants=("deepfaith", "rise"),
        metric="faithfulness_insertion", indices=indices, batch_size=batch_size, image_only=True,
    )  # fmt: skip
    deepfaith = variant == "deepfaith"
    step = check_positive_int("features_in_step", features_in_step, 3136 if deepfaith else 224)
    ks = kernel_size if kernel_size is not None else (15 if deepfaith else 11)
    substrate = gaussian_blur(p.images, sigma, kernel_size=ks)
    if variant == "rise":
        curve, area = _rise_curve(model, p, step, substrate, insert=True, batch_size=batch_size)
        return {"faithfulness_insertion": area, "insertion_curve": curve}
    chunk, k = element_chunks(element_ranks(p.attributions), step)
    curve = cumulative_scores(
        model, p, chunk, k, fill=substrate, insert=True, batch_size=batch_size
    )
    area = deepfaith_auc(curve, p.images[0].numel(), step)
    return {"faithfulness_insertion": area, "insertion_curve": curve}
