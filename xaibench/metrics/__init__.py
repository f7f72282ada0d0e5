"""Explanation metrics on one batched perturbation engine.

Every registered metric has the call shape
``metric(model, images, heatmaps, targets, **kw) -> dict[str, Tensor]``;
importing this package registers them (``list_metrics()``).
"""

from xaibench.baselines import gaussian_blur, make_baseline
from xaibench.metrics import faithfulness  # noqa: F401  (registers the ten faithfulness metrics)
from xaibench.metrics.checks import (
    check_alpha_min,
    check_heatmaps,
    check_images,
    check_masks,
    check_model_dtype,
    check_step,
    check_targets,
    prepare_batch,
    prepare_perturbation,
)
from xaibench.metrics.engine import (
    descending_ranks,
    evaluate_ranges,
    evaluate_variants,
    forward_chunks,
    model_device,
    scores_from_logits,
)
from xaibench.metrics.ffidelity import ffidelity
from xaibench.metrics.insertion_deletion import insertion_deletion, plan_insertion_deletion
from xaibench.metrics.localization import localization
from xaibench.metrics.model_state import eval_mode, evaluates_in_eval_mode
from xaibench.metrics.msi import msi, msi_alphas, plan_msi
from xaibench.metrics.paper import paper_columns, plan_paper
from xaibench.metrics.plan import RangePlan, evaluate_plans, forward_counts, run_plans
from xaibench.metrics.qge import inverse, permute, qge, quality_gaps, random_gap
from xaibench.metrics.registry import (
    METRICS,
    NEEDS,
    EntrySpec,
    entry_spec,
    get_metric,
    list_metrics,
    metric_direction,
    metric_keys,
    register_metric,
)
from xaibench.metrics.road import road  # noqa: F401  (registers ROAD)
from xaibench.metrics.seeding import counter_uniform, per_sample_rand, sample_generator, sample_seed

__all__ = [
    "METRICS",
    "NEEDS",
    "EntrySpec",
    "RangePlan",
    "check_alpha_min",
    "check_heatmaps",
    "check_images",
    "check_masks",
    "check_model_dtype",
    "check_step",
    "check_targets",
    "counter_uniform",
    "descending_ranks",
    "entry_spec",
    "eval_mode",
    "evaluate_plans",
    "evaluate_ranges",
    "evaluate_variants",
    "evaluates_in_eval_mode",
    "ffidelity",
    "forward_chunks",
    "forward_counts",
    "gaussian_blur",
    "get_metric",
    "insertion_deletion",
    "inverse",
    "list_metrics",
    "localization",
    "make_baseline",
    "metric_direction",
    "metric_keys",
    "model_device",
    "msi",
    "msi_alphas",
    "paper_columns",
    "per_sample_rand",
    "permute",
    "plan_insertion_deletion",
    "plan_msi",
    "plan_paper",
    "prepare_batch",
    "prepare_perturbation",
    "qge",
    "quality_gaps",
    "random_gap",
    "register_metric",
    "run_plans",
    "sample_generator",
    "sample_seed",
    "scores_from_logits",
]
