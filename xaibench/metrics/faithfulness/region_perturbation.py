"""Region Perturbation (Samek et al., 2016): RP, higher is better (MoRF order).

Remove square patches (``quantus``) or element chunks (``deepfaith``) in order
of decreasing attribution, cumulatively, and record the score drop
``y(x) - y(x_k)`` after each removal.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaibench.metrics.faithfulness.common import (
    STREAM_ORDER,
    check_positive_int,
    constant_fill,
    cumulative_scores,
    element_chunks,
    element_ranks,
    prepare,
    region_scores,
    resolve_baseline,
    uniform_draws,
)
from xaibench.metrics.registry import register_metric

ORDERS = ("morf", "lerf", "random")


def patch_grid(height: int, width: int, patch: int, device: torch.device) -> tuple[Tensor, int]:
    """Quantus's patch grid: block id of every pixel ``(H, W)`` int64 and the number of blocks.

    The image is padded to multiples of ``patch`` with ``floor`` of the padding
    before and ``ceil`` after (``utils.get_padding_size``); blocks are numbered
    row-major over the padded grid, so border blocks may be partly padding.
    """
    pad_h = (patch - height % patch) % patch
    pad_w = (patch - width % patch) % patch
    rows = (torch.arange(height, device=device) + pad_h // 2) // patch
    cols = (torch.arange(width, device=device) + pad_w // 2) // patch
    n_cols = (width + pad_w) // patch
    blocks = ((height + pad_h) // patch) * n_cols
    return rows[:, None] * n_cols + cols[None, :], blocks


def block_sums(values: Tensor, block: Tensor, blocks: int) -> Tensor:
    """Sum of ``values (N, C, H, W)`` over every block of ``block (H, W)``, all channels; ``(N, blocks)``."""
    n = values.shape[0]
    ids = block.flatten().repeat(values.shape[1])  # (C*H*W,) block of each element
    out = values.new_zeros((n, blocks))
    return out.scatter_add_(1, ids.expand(n, -1), values.flatten(1))


@register_metric("region_perturbation", higher_is_better=True, random=True)
def region_perturbation(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    variant: str = "quantus",
    patch_size: int = 8,
    regions_evaluation: int | None = None,
    order: str = "morf",
    baseline: float | str | None = None,
    softmax: bool = True,
    abs: bool = False,
    normalise: bool = True,
    seed: int = 0,
    indices: Tensor | None = None,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Score drops while removing regions in order of decreasing relevance.

    Variants:
        ``quantus`` (Quantus 0.6 ``RegionPerturbation``): non-overlapping
        ``patch_size``² patches over all channels on Quantus's padded grid,
        ranked by attribution sum (``order``: ``morf`` most relevant first,
        ``lerf`` least, ``random`` a per-sample random order); the first
        ``regions_evaluation`` (100) are removed cumulatively (baseline
        ``"black"``); curve = drop of the target's softmax probability (Quantus's default
        here; logit with ``softmax=False``);
        value = ``np.trapz(curve, dx=1)``, Quantus's ``get_auc_score`` per sample.
        ``deepfaith``: elements sorted by decreasing attribution, chunks of
        ``regions_evaluation=3136`` elements set to 0 cumulatively (DeepFaith
        names the chunk size so); curve = drop of the clean prediction's
        probability; value = the curve's mean (AOPC without the start point).

    Args:
        model: classifier in eval mode returning logits.
        images: ``(N, C, H, W)`` inputs.
        heatmaps: ``(N, 1, H, W)`` or ``(N, C, H, W)``; signed allowed for ``quantus``, else in ``[0, 1]``.
        targets: ``(N,)`` class indices (used by ``quantus``).
        patch_size: patch side in pixels (``quantus``).
        regions_evaluation: patches removed (``quantus``) / elements per chunk (``deepfaith``).
        order: ``morf``/``lerf``/``random`` (``quantus``).
        baseline: ``quantus``: number or ``black``/``white``/``uniform`` (and
            ``mean`` when ``patch_size`` divides H and W); ``deepfaith``: a number.
        softmax, abs, normalise: Quantus's options (``quantus`` only).
        seed, indices: seed the ``random`` order and ``uniform`` draws per ``(seed, indices[i])``.
        batch_size: perturbed images per forward pass.

    Returns:
        ``region_perturbation`` ``(N,)`` (higher is better for ``morf``) and
        ``region_perturbation_curve`` ``(N, K)`` score drops.
    """
    p = prepare(
        model, images, heatmaps, targets, variant=variant, variants=("quantus", "deepfaith"),
        metric="region_perturbation", indices=indices, batch_size=batch_size, softmax=softmax, abs=abs,
        normalise=normalise, image_only=True,
    )  # fmt: skip
    baseline = resolve_baseline(baseline, variant)
    if variant != "quantus":
        step = check_positive_int("regions_evaluation", regions_evaluation, 3136)
        chunk, k = element_chunks(element_ranks(p.attributions), step)
        scores = cumulative_scores(
            model, p, chunk, k, fill=constant_fill(p.images, baseline), batch_size=batch_size
        )
        curve = p.clean[:, None] - scores
        return {"region_perturbation": curve.mean(dim=1), "region_perturbation_curve": curve}

    if order not in ORDERS:
        raise ValueError(f"order={order!r} is unknown; choose one of {list(ORDERS)}")
    patch = check_positive_int("patch_size", patch_size)
    n, c, h, w = p.images.shape
    if patch > min(h, w):
        raise ValueError(
            f"patch_size={patch} is larger than the images ({h}x{w}); use at most {min(h, w)}"
        )
    block, blocks = patch_grid(h, w, patch, p.images.device)
    if baseline == "mean" and (h % patch or w % patch):
        raise ValueError(
            f"baseline='mean' with patch_size={patch} not dividing {h}x{w}: Quantus averages over its edge-padded "
            "image, which is not reproduced; use 'black' or a patch size that divides the image"
        )
    limit = check_positive_int("regions_evaluation", regions_evaluation, 100)
    k = min(limit, blocks)
    sums = block_sums(p.attributions, block, blocks)  # (N, blocks)
    if order == "random":
        u = uniform_draws(seed, p.index, blocks, stream=STREAM_ORDER)
        sums = u  # a random key per block gives a uniform random order
    ranks = element_ranks(
        sums, descending=order != "lerf"
    )  # (N, blocks) position of each block in the order
    step = ranks.gather(1, block.flatten().expand(n, -1))  # (N, H*W) step of each pixel
    scores = region_scores(model, p, step, k, baseline, seed, batch_size=batch_size)
    curve = p.clean[:, None] - scores
    return {
        "region_perturbation": torch.trapezoid(curve, dx=1.0, dim=1),
        "region_perturbation_curve": curve,
    }
