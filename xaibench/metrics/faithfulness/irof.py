"""IROF, Iterative Removal Of Features (Rieger & Hansen, 2020): higher is better.

``quantus`` removes SLIC superpixels in order of decreasing mean attribution
and takes the area over the curve of ``y(x_k) / y(x)``. The segmentation is
``skimage.segmentation.slic`` on the CPU, one image at a time (a numpy step
outside the hot path: segmentation is setup, the forward passes are batched).
``deepfaith`` removes element chunks instead and takes the area under
``1 - p_k / p_0``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from xaibench.metrics.faithfulness.common import (
    check_positive_int,
    constant_fill,
    cumulative_scores,
    deepfaith_auc,
    element_chunks,
    element_ranks,
    prepare,
    region_scores,
    resolve_baseline,
)
from xaibench.metrics.registry import register_metric


def slic_segments(images: Tensor, **slic_kwargs: object) -> Tensor:
    """SLIC superpixels of every image, ``(N, H, W)`` int64 labels ``0..S_i-1`` on the images' device.

    Quantus's call: ``slic(image (H, W, C) float64, start_label=0)`` with
    skimage's defaults (``n_segments=100``, ``compactness=10``); labels are
    made contiguous. Runs on the CPU with numpy, one image at a time.
    """
    from skimage.segmentation import slic

    kwargs = {"start_label": 0, **slic_kwargs}
    arrays = images.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
    labels = []
    for img in arrays:  # per-image setup step: skimage has no batched SLIC
        seg = slic(img, channel_axis=-1, **kwargs)
        labels.append(np.unique(seg, return_inverse=True)[1].reshape(seg.shape))
    return torch.from_numpy(np.stack(labels)).to(device=images.device, dtype=torch.int64)


@register_metric("irof", higher_is_better={"irof": True, "num_segments": None}, random=True)
def irof(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    variant: str = "quantus",
    segments: Tensor | None = None,
    features_in_step: int = 3136,
    baseline: float | str | None = None,
    softmax: bool = True,
    abs: bool = False,
    normalise: bool = True,
    seed: int = 0,
    indices: Tensor | None = None,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Area over the score curve while removing the most relevant regions first.

    Variants:
        ``quantus`` (Quantus 0.6 ``IROF``): SLIC superpixels (or ``segments``)
        ranked by mean attribution over their pixels and all channels, removed
        cumulatively with the baseline (``"mean"``: the mean of the image as
        perturbed so far, per sample); curve ``c_k = y(x_k) / y(x)`` (target's
        softmax probability, Quantus's default; logit with ``softmax=False``) for ``k = 1..S``; value
        ``S - np.trapz(c, dx=1)`` (unnormalised, in segments). Quantus 0.6
        batches this wrongly (its mask and image shapes differ for ``C > 1``,
        its ``"mean"`` is over the whole batch, and it zero-pads curves to the
        longest in the batch before integrating); we compute each sample alone,
        which is Quantus's result at batch size 1.
        ``deepfaith``: elements sorted by decreasing attribution, chunks of
        ``features_in_step=3136`` set to 0 cumulatively; curve ``1 - p_k / p_0``
        (softmax probability of the clean prediction); value = trapezoid over
        ``arange(0, F, chunk) / F``.

    Args:
        model: classifier in eval mode returning logits.
        images: ``(N, C, H, W)`` inputs.
        heatmaps: ``(N, 1, H, W)`` or ``(N, C, H, W)``; signed allowed for ``quantus``, else in ``[0, 1]``.
        targets: ``(N,)`` class indices (used by ``quantus``).
        segments: ``(N, H, W)`` int64 labels ``0..S_i-1`` to use instead of SLIC (``quantus``).
        features_in_step: elements per chunk (``deepfaith``).
        baseline: number or ``black``/``white``/``mean``/``uniform`` (``quantus``, default ``mean``); number (``deepfaith``).
        softmax, abs, normalise: Quantus's options (``quantus`` only).
        seed, indices: seed the ``uniform`` draws per ``(seed, indices[i])``.
        batch_size: perturbed images per forward pass.

    Returns:
        ``irof`` ``(N,)`` (higher is better), ``irof_curve`` ``(N, K)`` and
        ``num_segments`` ``(N,)``, the regions removed: superpixels ``S_i``
        (``quantus``; ``K = max_i S_i``, NaN after each sample's ``S_i``
        points) or element chunks ``K`` (``deepfaith``).
    """
    p = prepare(
        model, images, heatmaps, targets, variant=variant, variants=("quantus", "deepfaith"), metric="irof",
        indices=indices, batch_size=batch_size, softmax=softmax, abs=abs, normalise=normalise, image_only=True,
    )  # fmt: skip
    baseline = resolve_baseline(baseline, variant, quantus_default="mean")
    n, c, h, w = p.images.shape
    if variant != "quantus":
        step = check_positive_int("features_in_step", features_in_step)
        chunk, k = element_chunks(element_ranks(p.attributions), step)
        scores = cumulative_scores(
            model, p, chunk, k, fill=constant_fill(p.images, baseline), batch_size=batch_size
        )
        curve = 1.0 - scores / p.clean[:, None]
        return {
            "irof": deepfaith_auc(curve, c * h * w, step),
            "irof_curve": curve,
            "num_segments": torch.full_like(p.clean, float(k)),
        }

    if segments is None:
        segments = slic_segments(p.images)
    elif tuple(segments.shape) != (n, h, w) or segments.dtype.is_floating_point:
        raise ValueError(
            f"segments {tuple(segments.shape)} must be integer labels of shape ({n}, {h}, {w})"
        )
    seg = segments.to(p.images.device, torch.int64).flatten(1)  # (N, H*W)
    count = int(seg.max()) + 1
    num = seg.amax(dim=1) + 1  # (N,) segments per sample
    ids = seg.repeat(1, c)  # (N, C*H*W) segment of each element
    total = p.attributions.new_zeros((n, count)).scatter_add_(1, ids, p.attributions.flatten(1))
    size = p.attributions.new_zeros((n, count)).scatter_add_(
        1, ids, torch.ones_like(ids, dtype=total.dtype)
    )
    mean = torch.where(
        size > 0, total / size.clamp_min(1), torch.full_like(total, -float("inf"))
    )  # absent: last
    ranks = element_ranks(mean)  # (N, count) step at which each segment goes
    step = ranks.gather(1, seg)  # (N, H*W)
    scores = region_scores(model, p, step, count, baseline, seed, batch_size=batch_size)
    steps = torch.arange(count, device=scores.device)
    valid = steps[None, :] < num[:, None]
    curve = torch.where(valid, scores / p.clean[:, None], torch.full_like(scores, float("nan")))
    # trapezoid over each sample's own S_i points (weights ½ at both ends, 0 beyond)
    weight = valid.to(curve.dtype)
    weight = torch.where(
        (steps[None, :] == 0) | (steps[None, :] == num[:, None] - 1), 0.5 * weight, weight
    )
    weight = torch.where(num[:, None] == 1, torch.zeros_like(weight), weight)
    area = (torch.where(valid, curve, torch.zeros_like(curve)) * weight).sum(dim=1)
    return {
        "irof": num.to(curve.dtype) - area,
        "irof_curve": curve,
        "num_segments": num.to(curve.dtype),
    }
