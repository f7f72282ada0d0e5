"""The base classifier: backbone + linear head trained with cross-entropy."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench.data.datasets import unpack_batch


class ClassifierModule(pl.LightningModule):
    """Trains ``net`` (logits ``(N, classes)``) with cross-entropy; logs loss and accuracy.

    Args:
        net: the classifier, e.g. :func:`xaibench.models.resnet18`.
        optimizer: ``params -> Optimizer`` (a ``_partial_`` config).
        scheduler: ``optimizer -> LRScheduler`` or None. A scheduler that takes
            ``total_steps`` (OneCycleLR) gets the trainer's estimated number of
            optimizer steps and is stepped every step; others every epoch.
        max_epochs: training epochs of the base classifier (part of its cache key).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        max_epochs: int = 30,
    ) -> None:
        super().__init__()
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"model.max_epochs={max_epochs!r} must be a positive integer")
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler
        self.max_epochs = max_epochs

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> Tensor:
        b = unpack_batch(batch)
        logits = self.net(b.images)
        loss = F.cross_entropy(logits, b.labels)
        acc = (logits.argmax(1) == b.labels).float().mean()
        self.log_dict(
            {f"{stage}/loss": loss, f"{stage}/acc": acc},
            prog_bar=stage != "test",
            on_step=False,
            on_epoch=True,
            batch_size=len(b.labels),
            sync_dist=stage != "train",
        )
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        opt = self.optimizer_factory(params=self.net.parameters())
        if self.scheduler_factory is None:
            return opt
        fn = getattr(self.scheduler_factory, "func", self.scheduler_factory)
        if "total_steps" in inspect.signature(fn).parameters:
            total = int(self.trainer.estimated_stepping_batches)
            sched = self.scheduler_factory(optimizer=opt, total_steps=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        sched = self.scheduler_factory(optimizer=opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
