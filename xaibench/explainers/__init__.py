"""One interface over post-hoc and learned explainers (DESIGN §5).

``explainer(model, images (N,C,H,W), targets (N,)) -> heatmaps (N,1,H,W)`` in
[0, 1] on the images' device, the model unchanged afterwards. Build one by
name with :func:`get_explainer`; :func:`list_explainers` gives the names (one
``configs/explainer/<name>.yaml`` each). A post-hoc method subclasses
:class:`Explainer`; a learned one (LAX) subclasses :class:`LearnedExplainer`,
whose ``fit(datamodule, classifier, trainer)`` the pipeline calls; both
register with :func:`register_explainer`.
"""

from xaibench.explainers import cam, captum_methods, lax, lrp, simple  # noqa: F401  (registers)
from xaibench.explainers.base import (
    EXPLAINERS,
    Explainer,
    check_inputs,
    get_explainer,
    list_explainers,
    register_explainer,
)
from xaibench.explainers.cam import CAMExplainer, resolve_target_layer
from xaibench.explainers.captum_methods import CaptumExplainer
from xaibench.explainers.deepfaith import DeepFaithExplainer
from xaibench.explainers.features import baseline_distribution, feature_mask, make_baseline
from xaibench.explainers.guard import count_hooks, preserve_model
from xaibench.explainers.lax import LAXExplainer
from xaibench.explainers.learned import LearnedExplainer
from xaibench.explainers.postprocess import (
    NORMALIZATIONS,
    REDUCTIONS,
    normalize_maps,
    reduce_channels,
)

__all__ = [
    "EXPLAINERS",
    "NORMALIZATIONS",
    "REDUCTIONS",
    "CAMExplainer",
    "CaptumExplainer",
    "DeepFaithExplainer",
    "Explainer",
    "LAXExplainer",
    "LearnedExplainer",
    "baseline_distribution",
    "check_inputs",
    "count_hooks",
    "feature_mask",
    "get_explainer",
    "list_explainers",
    "make_baseline",
    "normalize_maps",
    "preserve_model",
    "reduce_channels",
    "register_explainer",
    "resolve_target_layer",
]
