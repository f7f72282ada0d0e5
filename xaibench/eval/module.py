"""``ExplainerTestModule``: a frozen classifier + a post-hoc explainer, for ``trainer.test``."""

from __future__ import annotations

import lightning.pytorch as pl
from torch import Tensor, nn

from xaibench.data.datasets import unpack_batch


class ExplainerTestModule(pl.LightningModule):
    """``test_step`` returns ``{"heatmaps": explainer(net, images, labels)}`` for :class:`EvaluationCallback`.

    Args:
        net: the frozen base classifier (logits).
        explainer: ``(model, images, targets) -> (N, 1, H, W)`` in [0, 1].
        target: ``"label"`` (explain the true class, as the paper's tables) or
            ``"predicted"`` (explain the model's prediction).
    """

    def __init__(self, net: nn.Module, explainer, *, target: str = "label") -> None:
        super().__init__()
        if target not in ("label", "predicted"):
            raise ValueError(f"target={target!r} must be 'label' or 'predicted'")
        self.net, self.explainer, self.target = net, explainer, target

    def train(self, mode: bool = True) -> ExplainerTestModule:
        super().train(mode)
        self.net.eval()  # the classifier is frozen: BatchNorm statistics never change
        return self

    def test_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        b = unpack_batch(batch)
        targets = b.labels if self.target == "label" else self.net(b.images).argmax(1)
        return {"heatmaps": self.explainer(self.net, b.images, targets)}
