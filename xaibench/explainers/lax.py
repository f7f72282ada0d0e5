"""LAX (Learnable Adapter eXplanation, LAX paper §3.2) as a registered, learned explainer.

``configs/explainer/lax.yaml`` instantiates :class:`LAXExplainer`; ``fit`` trains
a :class:`~xaibench.models.LAXModule` head on the frozen classifier with the
loss ``CE(f(X ⊙ M), y) + λ·H(softmax(max(0, M)/t))`` and keeps the epoch with
the best validation MSI. Explaining is one forward pass of backbone + head.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xaibench.explainers.base import register_explainer
from xaibench.explainers.learned import LearnedExplainer
from xaibench.models.lax_module import LAXModule


@register_explainer("lax")
class LAXExplainer(LearnedExplainer):
    """LAX head on a frozen classifier.

    Args:
        optimizer: ``params -> Optimizer`` (a ``_partial_`` config; paper: Adam).
        lam: λ, weight of the entropy term (paper Table 6: 5 / 5 / 2 for
            Synthetic MNIST / CUB / CIFAR-10).
        temperature: t of the entropy softmax (paper: 0.5).
        eps: ε inside the entropy's log.
        feature_upsample: ``"auto"`` (2 for feature maps ≤ 4×4) or an integer factor.
        alpha_min: MSI threshold of the validation MSI that selects the epoch.
        val_step: α step of the validation MSI.
        val_samples: validation images scored by MSI each epoch.
        metric_batch_size: perturbed images per forward pass in the validation MSI.
        **kwargs: as :class:`~xaibench.explainers.learned.LearnedExplainer`
            (``max_epochs``, ``monitor``, ``batch_size``, ...).
    """

    uses_targets = False  # the mask explains what the classifier needs, whatever the class

    def __init__(
        self,
        *,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        lam: float = 5.0,
        temperature: float = 0.5,
        eps: float = 1e-8,
        feature_upsample: int | str = "auto",
        alpha_min: float = 0.5,
        val_step: float = 0.05,
        val_samples: int = 512,
        metric_batch_size: int = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.module_kwargs = {
            "optimizer": optimizer,
            "lam": lam,
            "temperature": temperature,
            "eps": eps,
            "feature_upsample": feature_upsample,
            "alpha_min": alpha_min,
            "val_step": val_step,
            "val_samples": val_samples,
            "metric_batch_size": metric_batch_size,
        }
        LAXModule.check_hparams(lam=lam, temperature=temperature)

    def build_module(self, classifier: nn.Module, image_size: int) -> LAXModule:
        return LAXModule(classifier, image_size=image_size, **self.module_kwargs)

    def module_state(self) -> dict[str, Tensor]:
        return self.module.head_state_dict()

    def load_module_state(self, path: str | Path) -> None:
        self.module.load_head(path)
