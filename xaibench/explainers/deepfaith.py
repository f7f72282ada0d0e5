"""DeepFaith (ICLR 2026) as a registered, learned explainer.

``configs/explainer/deepfaith.yaml`` instantiates :class:`DeepFaithExplainer`.
``fit`` first computes the prior explanations of up to ``prior_samples``
training images with ``prior_methods`` (de-duplicated and faithfulness-filtered
by :func:`xaibench.explainers.priors.build_priors`, cached), then trains a
:class:`~xaibench.models.DeepFaithModule` on the frozen classifier with
``α·L_PC + (1-α)·L_LC`` and keeps the epoch with the lowest validation
``L_LC``. Explaining is one forward pass of the patch Transformer.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from xaibench.errors import ConfigError
from xaibench.explainers.base import list_explainers, register_explainer
from xaibench.explainers.learned import LearnedExplainer
from xaibench.models.deepfaith import DeepFaithModule, check_architecture, check_training

# the paper's 14 Captum prior methods, as named in our registry; the order matters (de-duplication
# keeps the first of similar maps): gradient methods, perturbation methods, then CAMs
PRIOR_METHODS = (
    "saliency",
    "input_x_gradient",
    "guided_backprop",
    "integrated_gradients",
    "gradient_shap",
    "deeplift",
    "deeplift_shap",
    "lrp",
    "occlusion",
    "lime",
    "kernel_shap",
    "gradcam",
    "gradcampp",
    "scorecam",
)


@register_explainer("deepfaith")
class DeepFaithExplainer(LearnedExplainer):
    """A DeepFaith patch Transformer trained on a frozen classifier.

    Args:
        optimizer: ``params -> Optimizer`` (a ``_partial_`` config; default AdamW, lr 1e-3).
        patch: patch side in pixels (divides the image size).
        depth: Transformer layers ``L``.
        width: token width ``d`` (divisible by ``heads``).
        heads: attention heads.
        mlp_ratio: feed-forward width as a multiple of ``width``.
        dropout: dropout in the Transformer layers.
        loss: ``"full"``, ``"pc"`` or ``"lc"`` (see :class:`~xaibench.models.DeepFaithModule`).
        n_subsets: ``k`` random patch subsets per image and step of ``L_LC``.
        subset_fraction: probability of each patch being in a subset.
        baseline: value of removed pixels in ``L_LC``'s perturbations.
        target: ``"label"`` or ``"predicted"``: the class whose probability is perturbed.
        window: ``e``, the ``L_PC`` values whose variance the α schedule watches.
        var_eps: ``ε``, the variance below which α starts decaying.
        C: the decay time scale in steps and the reset factor (reset above ``C·ε``).
        t0_offset: steps from the start of the decay to α = 1/2 (default ``3·C``).
        seed: seed of the random subsets.
        val_samples: validation images whose ``L_LC`` is computed each epoch.
        metric_batch_size: perturbed images per classifier forward pass.
        prior_methods: registered explainers whose maps are the priors (default:
            the paper's 14); empty for no priors.
        prior_settings: per-method keyword arguments, ``{name: {kw: value}}``.
        prior_samples: training images with priors (the first ones).
        dedup_threshold: ``δ``, cosine similarity at which two priors are duplicates.
        filter_quantile: ``p``, the per-metric quantile a prior must pass.
        use_filter: apply the faithfulness filter (False: de-duplication only).
        filter_metrics: ``{metric name: keyword arguments}`` of the filter (None: the
            paper's ten, sized for the image by ``build_priors``).
        prior_batch_size: images per batch while computing priors.
        prior_cache_dir: where the priors are cached (None: a temporary folder, not kept).
        **kwargs: as :class:`~xaibench.explainers.learned.LearnedExplainer`
            (``max_epochs``, ``monitor``, ``mode``, ``batch_size``, ``init_seed``).
    """

    uses_targets = False  # one map per image, whatever the class asked for
    # explaining is a forward pass of the Transformer alone: the classifier it was trained on
    # (and attached to) is never called, so a failure inside the classifier cannot reach it
    uses_model = False

    def __init__(
        self,
        *,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        patch: int = 8,
        depth: int = 2,
        width: int = 64,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        loss: str = "full",
        n_subsets: int = 16,
        subset_fraction: float = 0.5,
        baseline: float | str = 0.0,
        target: str = "label",
        window: int = 20,
        var_eps: float = 1e-3,
        C: float = 20.0,
        t0_offset: float | None = None,
        seed: int = 0,
        val_samples: int = 512,
        metric_batch_size: int = 1024,
        prior_methods: list[str] | tuple[str, ...] = PRIOR_METHODS,
        prior_settings: dict[str, dict] | None = None,
        prior_samples: int = 512,
        dedup_threshold: float = 0.6,
        filter_quantile: float = 0.2,
        use_filter: bool = True,
        filter_metrics: dict[str, dict] | None = None,
        prior_batch_size: int = 64,
        prior_cache_dir: str | None = None,
        monitor: str = "val/l_lc",
        mode: str = "min",
        max_epochs: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(monitor=monitor, mode=mode, max_epochs=max_epochs, **kwargs)
        check_architecture(patch, patch=patch, depth=depth, width=width, heads=heads)
        check_training(
            loss=loss, n_subsets=n_subsets, subset_fraction=subset_fraction, target=target
        )
        self.prior_methods = [str(m) for m in prior_methods or []]
        if loss == "pc" and not self.prior_methods:
            raise ConfigError(
                "explainer.loss=pc fits prior explanations: give explainer.prior_methods"
            )
        if not (isinstance(prior_samples, int) and prior_samples >= 1):
            raise ConfigError(f"explainer.prior_samples={prior_samples!r} must be an integer >= 1")
        self.loss, self.patch = loss, patch
        self.module_kwargs = {
            "optimizer": optimizer,
            "patch": patch,
            "depth": depth,
            "width": width,
            "heads": heads,
            "mlp_ratio": mlp_ratio,
            "dropout": dropout,
            "loss": loss,
            "n_subsets": n_subsets,
            "subset_fraction": subset_fraction,
            "baseline": baseline,
            "target": target,
            "window": window,
            "var_eps": var_eps,
            "C": C,
            "t0_offset": t0_offset,
            "seed": seed,
            "val_samples": val_samples,
            "metric_batch_size": metric_batch_size,
        }
        self.prior_kwargs = {
            "settings": plain(prior_settings or {}),
            "max_samples": prior_samples,
            "dedup_threshold": dedup_threshold,
            "filter_quantile": filter_quantile,
            "use_filter": use_filter,
            "filter_metrics": plain(filter_metrics),
            "batch_size": prior_batch_size,
        }
        self.prior_cache_dir = prior_cache_dir
        self.priors: Any = None  # the PriorSet of the last fit, handed to build_module

    @property
    def needs_priors(self) -> bool:
        return self.loss != "lc" and bool(self.prior_methods)

    def used_prior_settings(self) -> dict[str, dict]:
        """``prior_settings`` of the selected methods (plus unknown names, which
        ``build_priors`` reports): the config's cheap settings for the slow methods
        stay harmless when ``prior_methods`` is narrowed on the command line."""
        known = set(list_explainers())
        return {
            k: v
            for k, v in self.prior_kwargs["settings"].items()
            if k in self.prior_methods or k not in known
        }

    def build_module(self, classifier: nn.Module, image_size: int) -> DeepFaithModule:
        conv = next((m for m in classifier.modules() if isinstance(m, nn.Conv2d)), None)
        return DeepFaithModule(
            classifier,
            image_size=image_size,
            in_channels=conv.in_channels if conv is not None else 3,
            priors=self.priors,
            **self.module_kwargs,
        )

    def fit(
        self,
        datamodule: pl.LightningDataModule,
        classifier: nn.Module,
        trainer: pl.Trainer,
        *,
        ckpt_path: str | None = None,
    ) -> dict[str, Any]:
        """Compute (or load) the priors, then train as :meth:`LearnedExplainer.fit`.

        Returns:
            ``LearnedExplainer.fit``'s record plus ``"priors"``: the PriorSet's
            statistics (JSON-able), or None when no priors are used.
        """
        self.priors = None
        if self.needs_priors:
            from xaibench.explainers.priors import build_priors

            size = int(datamodule.image_size)
            check_architecture(size, patch=self.patch, depth=1, width=1, heads=1)
            grid = (size // self.patch, size // self.patch)
            with contextlib.ExitStack() as stack:
                cache_dir = self.prior_cache_dir or stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="deepfaith-priors-")
                )
                self.priors = build_priors(
                    classifier,
                    datamodule,
                    methods=self.prior_methods,
                    grid=grid,
                    cache_dir=cache_dir,
                    progress=getattr(trainer, "progress_bar_callback", None) is not None,
                    **{**self.prior_kwargs, "settings": self.used_prior_settings()},
                )
        info = super().fit(datamodule, classifier, trainer, ckpt_path=ckpt_path)  # attach()es
        info["priors"] = jsonable(self.priors.stats) if self.priors is not None else None
        return info

    def module_state(self) -> dict[str, Tensor]:
        return self.module.transformer_state_dict()

    def load_module_state(self, path: str | Path) -> None:
        self.module.load_transformer(path)


def plain(obj: Any) -> Any:
    """``obj`` with mappings (Hydra's ``DictConfig``) as dicts and sequences as lists, recursively."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [plain(v) for v in obj]
    return obj


def jsonable(obj: Any) -> Any:
    """``obj`` with tensors, numpy values and tuples turned into JSON types (NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return jsonable(obj.tolist())
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy arrays and scalars
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)
