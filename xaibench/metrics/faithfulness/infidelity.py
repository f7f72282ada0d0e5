"""Infidelity (Yeh et al., NeurIPS 2019; INF): two registered metrics, because the sources disagree on direction.

* ``infidelity`` (lower is better): Quantus 0.6 ``Infidelity``, the mean
  squared difference between score drops and attribution·perturbation sums.
* ``infidelity_correlation`` (higher is better): DeepFaith's INF, a Pearson
  correlation over random 50 % element subsets. One name with two opposite
  directions would make the direction table lie for one of them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaibench.metrics.engine import evaluate_variants
from xaibench.metrics.faithfulness.common import (
    STREAM_MASK,
    STREAM_UNIFORM,
    check_positive_int,
    constant_fill,
    cumulative_fill,
    cumulative_keep,
    prepare,
    resolve_baseline,
    uniform_draws,
)
from xaibench.metrics.faithfulness.correlation import pearson
from xaibench.metrics.faithfulness.region_perturbation import block_sums, patch_grid
from xaibench.metrics.registry import register_metric
from xaibench.metrics.seeding import counter_uniform


@register_metric("infidelity", higher_is_better=False, random=True)
def infidelity(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    variant: str = "quantus",
    perturb_patch_sizes: tuple[int, ...] | list[int] = (4,),
    n_perturb_samples: int = 10,
    baseline: float | str = "black",
    softmax: bool = False,
    abs: bool = False,
    normalise: bool = False,
    seed: int = 0,
    indices: Tensor | None = None,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Quantus's infidelity: ``mean_j (Δy_j - Σ a ⊙ (x - x_j))²`` over cumulative patch removals.

    For each patch size ``p``: the ``p × p`` patches (all channels) are set to
    the baseline one after another in row-major order, cumulatively; after
    patch ``j`` the score drop ``Δy_j = y(x) - y(x_j)`` is compared with
    ``Σ a ⊙ (x - x_j)``; the squared differences are averaged over ``j``, then
    over patch sizes and over ``n_perturb_samples`` repetitions (which only
    differ with the random ``"uniform"`` baseline; a deterministic baseline is
    evaluated once). Quantus 0.6 crashes unless ``p`` divides H and W; there
    we agree with it exactly; otherwise we use Quantus's centred padded patch
    grid (as its RegionPerturbation does).

    Args:
        model: classifier in eval mode returning logits.
        images: ``(N, C, H, W)`` inputs.
        heatmaps: ``(N, 1, H, W)`` or ``(N, C, H, W)`` real attributions (signed allowed).
        targets: ``(N,)`` class indices.
        variant: ``"quantus"`` (DeepFaith's INF is :func:`infidelity_correlation`).
        perturb_patch_sizes: patch sides in pixels.
        n_perturb_samples: repetitions (only matters for ``baseline="uniform"``).
        baseline: number or ``black``/``white``/``mean``/``uniform`` (``mean`` is
            recomputed on the perturbed image, as Quantus does).
        softmax, abs, normalise: Quantus's options (``normalise`` default False, as Quantus).
        seed, indices: seed the ``uniform`` draws per ``(seed, indices[i])``.
        batch_size: perturbed images per forward pass.

    Returns:
        ``infidelity`` ``(N,)`` in squared score units (logit² by default), lower is better.
    """
    if variant == "deepfaith":
        raise ValueError(
            "DeepFaith's INF is a correlation (higher is better): use metric 'infidelity_correlation'"
        )
    p = prepare(
        model, images, heatmaps, targets, variant=variant, variants=("quantus",), metric="infidelity",
        indices=indices, batch_size=batch_size, softmax=softmax, abs=abs, normalise=normalise, image_only=True,
    )  # fmt: skip
    baseline = resolve_baseline(baseline, variant)
    sizes = [check_positive_int("perturb_patch_sizes[]", s) for s in perturb_patch_sizes]
    if not sizes:
        raise ValueError("perturb_patch_sizes is empty; give at least one patch size, e.g. (4,)")
    reps = (
        check_positive_int("n_perturb_samples", n_perturb_samples) if baseline == "uniform" else 1
    )
    n, c, h, w = p.images.shape
    ax = p.attributions * p.images  # (N, C, H, W)
    losses = []
    for which, size in enumerate(sizes):  # one batched engine call per patch size
        if size > min(h, w):
            raise ValueError(f"patch size {size} is larger than the images ({h}x{w})")
        block, blocks = patch_grid(h, w, size, p.images.device)
        step = block.flatten().expand(n, -1)  # (N, H*W): patch j is removed at step j
        elem_step = step.repeat(1, c)
        keep = cumulative_keep(step, (1, h, w))
        if baseline == "uniform":
            draws = (
                uniform_draws(seed, p.index, reps * blocks, stream=STREAM_UNIFORM + 1 + which)
                .view(n, reps, blocks)
                .to(p.images.dtype)
            )
            px = block.flatten()

            def keep_fn(si: Tensor, ki: Tensor, keep=keep, blocks=blocks) -> Tensor:
                return keep(si, ki % blocks)

            def fill(si: Tensor, ki: Tensor, draws=draws, px=px, blocks=blocks) -> Tensor:
                return draws[si, ki // blocks][:, px].view(
                    -1, 1, h, w
                )  # each pixel: its patch's draw

            # Σ a ⊙ (x - x_j) = Σ_{patches ≤ j} (Σ a·x - u · Σ a) per repetition
            per_patch = (
                block_sums(ax, block, blocks)[:, None, :]
                - draws * block_sums(p.attributions, block, blocks)[:, None, :]
            )
        else:
            keep_fn = keep
            fill = cumulative_fill(p.images, baseline, elem_step, blocks, seed, p.index).view_as(
                p.images
            )
            per_patch = block_sums(p.attributions * (p.images - fill), block, blocks)[:, None, :]
        scores = evaluate_variants(
            model, p.images, p.targets, keep_fn, reps * blocks, fill=fill, score=p.score,
            batch_size=batch_size,
        ).view(n, reps, blocks)  # fmt: skip
        drops = p.clean[:, None, None] - scores
        sums = per_patch.cumsum(dim=2)
        losses.append(((drops - sums) ** 2).mean(dim=2))  # (N, reps)
    return {"infidelity": torch.stack(losses, dim=2).mean(dim=(1, 2))}


@register_metric("infidelity_correlation", higher_is_better=True, random=True)
def infidelity_correlation(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    variant: str = "deepfaith",
    nr_runs: int = 60,
    compat: bool = False,
    seed: int = 0,
    indices: Tensor | None = None,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """DeepFaith's INF: Pearson correlation over random 50 % element subsets (higher is better).

    Run ``r`` removes (sets to 0) each element independently with probability
    ½ and pairs the removed attribution sum with the drop of the clean
    prediction's softmax probability; the value is the Pearson correlation of
    the ``nr_runs`` pairs. DeepFaith draws one mask per run for the whole
    batch; here each sample draws its own from ``(seed, indices[i], r)`` so the
    values do not depend on the batch (the distribution is the same).

    Args:
        model: classifier in eval mode returning logits.
        images: ``(N, C, H, W)`` (or ``(N, *S)``) inputs.
        heatmaps: ``(N, 1, H, W)`` or ``(N, C, H, W)`` in ``[0, 1]``.
        targets: ``(N,)`` class indices (validated; the clean prediction is scored).
        variant: ``"deepfaith"``.
        nr_runs: random subsets per sample.
        compat: DeepFaith's ``1e-5`` inside the Pearson square roots.
        seed, indices: seed of the masks.
        batch_size: perturbed images per forward pass.

    Returns:
        ``infidelity_correlation`` ``(N,)`` in ``[-1, 1]`` (NaN if undefined);
        ``attribution_sums`` and ``score_drops`` ``(N, R)``.
    """
    p = prepare(
        model, images, heatmaps, targets, variant=variant, variants=("deepfaith",), metric="infidelity_correlation",
        indices=indices, batch_size=batch_size,
    )  # fmt: skip
    runs = check_positive_int("nr_runs", nr_runs)
    n, f = p.images.shape[0], p.images[0].numel()

    def removed(si: Tensor, ki: Tensor) -> Tensor:  # (B, F) bool, recomputed on demand (no storage)
        return counter_uniform(seed, p.index[si], ki + STREAM_MASK, f) < 0.5

    def keep_fn(si: Tensor, ki: Tensor) -> Tensor:
        return (~removed(si, ki)).view(-1, *p.images.shape[1:])

    scores = evaluate_variants(
        model, p.images, p.targets, keep_fn, runs, fill=constant_fill(p.images, 0.0), score=p.score,
        batch_size=batch_size,
    )  # fmt: skip
    drops = p.clean[:, None] - scores
    si = torch.arange(n, device=p.images.device).repeat_interleave(runs)
    ki = torch.arange(runs, device=p.images.device).repeat(n)
    a = p.attributions.flatten(1)
    sums = torch.cat(
        [
            (a[si[s : s + 256]] * removed(si[s : s + 256], ki[s : s + 256])).sum(dim=1)
            for s in range(0, n * runs, 256)
        ]
    ).view(n, runs)
    value = pearson(sums, drops, eps=1e-5 if compat else 0.0)
    return {"infidelity_correlation": value, "attribution_sums": sums, "score_drops": drops}
