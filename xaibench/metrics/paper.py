"""The LAX paper's table columns in one shared evaluation.

Insertion / Deletion and Fid± in value and percent modes plus MSI's base
score, mask penalty and MSI, as Tables 3-5 report them. The three metrics'
variants are planned together and every distinct perturbed input is scored
once: value-mode insertion at ``α >= α_min`` is MSI's Show grid, value-mode
deletion at ``α_min`` is MSI's complement, and the clean image is shared.
"""

from __future__ import annotations

from torch import Tensor, nn

from xaibench.metrics.insertion_deletion import DIRECTIONS, plan_insertion_deletion
from xaibench.metrics.msi import plan_msi
from xaibench.metrics.plan import RangePlan, evaluate_plans
from xaibench.metrics.registry import register_metric

PAPER_DIRECTIONS = {  # in the order paper_columns returns them
    "msi": True,
    "base_score": True,
    "mask_penalty": False,
    "clean_score": None,
    **{
        f"{key}_{mode}": d
        for mode in ("value", "percent")
        for key, d in DIRECTIONS.items()
        if key != "clean_score"
    },
}


def plan_paper(
    heatmaps: Tensor,
    *,
    alpha_min: float = 0.5,
    step: float = 0.02,
    percent_step: float | None = None,
) -> list[RangePlan]:
    """Plans of MSI, value-mode and percent-mode insertion/deletion (in that order)."""
    return [
        plan_msi(heatmaps, alpha_min=alpha_min, step=step),
        plan_insertion_deletion(heatmaps, mode="value", step=step),
        plan_insertion_deletion(heatmaps, mode="percent", step=percent_step or step),
    ]


@register_metric("paper", higher_is_better=PAPER_DIRECTIONS, smoke={"step": 0.1})
def paper_columns(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    alpha_min: float = 0.5,
    step: float = 0.02,
    percent_step: float | None = None,
    score: str = "accuracy",
    target: str = "label",
    baseline: float | str | Tensor = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    indices: Tensor | None = None,
) -> dict[str, Tensor]:
    """Every LAX-paper column per sample, from one de-duplicated pass over the variants.

    Args:
        model: classifier in eval mode returning logits.
        images: ``(N, C, H, W)``.
        heatmaps: ``(N, 1, H, W)`` or ``images.shape``, in ``[0, 1]``.
        targets: ``(N,)`` class indices.
        alpha_min: MSI threshold; ``step`` must divide both 1 and ``1 - alpha_min``.
        step: α step of MSI and value mode.
        percent_step: fraction step of percent mode (default ``step``).
        score, target, baseline, batch_size, seed, indices: as in :func:`~xaibench.metrics.msi.msi`.

    Returns:
        MSI's keys (``msi``, ``base_score``, ``mask_penalty``, ``show_curve``,
        ``hide_curve``, ``alphas``), ``clean_score``, and insertion/deletion keys
        suffixed ``_value`` / ``_percent`` (``insertion_value``, ``fid_plus_percent``,
        ``insertion_curve_value``, ``steps_percent``, ...).
    """
    m, value, percent = evaluate_plans(
        model, images, heatmaps, targets,
        lambda h: plan_paper(h, alpha_min=alpha_min, step=step, percent_step=percent_step),
        score=score, target=target, baseline=baseline, batch_size=batch_size, seed=seed, indices=indices,
    )  # fmt: skip
    out = dict(m)
    out["clean_score"] = value.pop("clean_score")
    percent.pop("clean_score")
    out.update({f"{k}_value": v for k, v in value.items()})
    out.update({f"{k}_percent": v for k, v in percent.items()})
    return out
