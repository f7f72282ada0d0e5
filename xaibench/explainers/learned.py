"""Learned explainers: an :class:`~xaibench.explainers.base.Explainer` with a ``fit`` step.

A learned explainer (LAX, DeepFaith) owns a trainable LightningModule built
around the frozen classifier. The pipeline treats it like any explainer, and
calls the steps below for any explainer that has them, never by name::

    explainer.fit(datamodule, classifier, trainer)   # train.py: trains, keeps the best epoch
    explainer.save(path)                             # the trained weights, atomically
    explainer.attach(classifier, image_size); explainer.load(path)   # eval.py
    heatmaps = explainer(classifier, images, targets)                # (N, 1, H, W) in [0, 1]

A subclass implements :meth:`build_module` (the LightningModule, whose
``explain(images)`` returns ``(N, 1, H, W)`` in [0, 1]) and the weight I/O
:meth:`module_state` / :meth:`load_module_state` (the trainable part only).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from xaibench.data.cache import atomic_save
from xaibench.errors import ConfigError
from xaibench.explainers.base import Explainer

log = logging.getLogger(__name__)


class LearnedExplainer(Explainer):
    """Base class of explainers trained on a frozen classifier.

    Args:
        max_epochs: training epochs of :meth:`fit` (the pipeline gives its trainer this).
        monitor: the validation value that selects the epoch kept by :meth:`fit`
            (a ``ModelCheckpoint`` on the trainer monitors it).
        mode: ``"max"`` or ``"min"`` for ``monitor``.
        init_seed: seed of the head's initial weights (so two instances built
            with the same settings explain identically before training).
        normalize: ``"none"`` by default: learned maps are in [0, 1] already.
        **kwargs: as :class:`Explainer` (``batch_size`` = images per forward pass).
    """

    needs_grad = False

    def __init__(
        self,
        *,
        max_epochs: int = 30,
        monitor: str = "val/msi",
        mode: str = "max",
        init_seed: int = 0,
        normalize: str = "none",
        **kwargs: Any,
    ) -> None:
        super().__init__(normalize=normalize, **kwargs)
        if not (isinstance(max_epochs, int) and max_epochs >= 1):
            raise ConfigError(f"explainer.max_epochs={max_epochs!r} must be an integer >= 1")
        if mode not in ("max", "min"):
            raise ConfigError(f"explainer.mode={mode!r} must be 'max' or 'min'")
        self.max_epochs, self.monitor, self.mode = max_epochs, monitor, mode
        self.init_seed = int(init_seed)
        self.module: pl.LightningModule | None = None
        self.classifier: nn.Module | None = None

    # -- what a subclass provides ------------------------------------------------
    @abstractmethod
    def build_module(self, classifier: nn.Module, image_size: int) -> pl.LightningModule:
        """A fresh trainable module around the frozen ``classifier`` for ``image_size`` px inputs."""

    @abstractmethod
    def module_state(self) -> dict[str, Tensor]:
        """The trainable weights (what :meth:`save` writes)."""

    @abstractmethod
    def load_module_state(self, path: str | Path) -> None:
        """Load trainable weights from a :meth:`save` file or a Lightning checkpoint."""

    # -- the steps the pipeline calls ----------------------------------------------
    def attach(self, classifier: nn.Module, image_size: int) -> pl.LightningModule:
        """Build the module around ``classifier`` with seeded initial weights; returns it."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            module = self.build_module(classifier, int(image_size))
        param = next(classifier.parameters(), None)
        if param is not None:
            module.to(device=param.device, dtype=param.dtype)
        self.module, self.classifier = module, classifier
        return module

    def fit(
        self,
        datamodule: pl.LightningDataModule,
        classifier: nn.Module,
        trainer: pl.Trainer,
        *,
        ckpt_path: str | None = None,
    ) -> dict[str, Any]:
        """Train on ``datamodule`` with ``trainer``; keep the best epoch by :attr:`monitor`.

        Args:
            datamodule: yields ``(image, label, index[, mask])`` batches; has ``image_size``.
            classifier: the frozen base classifier (never updated).
            trainer: built by the caller with ``max_epochs`` = :attr:`max_epochs`;
                its ``ModelCheckpoint`` (if any) selects the epoch kept.
            ckpt_path: a Lightning checkpoint to resume from.

        Returns:
            ``{"monitor", "best_score", "best_checkpoint", "best_epoch", "epochs"}``
            (``epochs`` is None under ``strategy=ddp_spawn``).
        """
        module = self.attach(classifier, datamodule.image_size)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        ckpt = trainer.checkpoint_callback
        best = str(getattr(ckpt, "best_model_path", "") or "")
        record = {
            "monitor": self.monitor,
            "best_score": None,
            "best_checkpoint": best,
            "best_epoch": None,
            # a trainer whose fit ran in spawned workers (ddp_spawn) never learns the count
            "epochs": int(trainer.current_epoch) or None,
        }
        if best:
            record.update(_checkpoint_record(best))
            self.load_module_state(best)
            log.info("%s: kept %s (%s %s)", self.name, best, self.monitor, record["best_score"])
        return record

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Atomically write ``{"state_dict": trainable weights, "meta": meta}``; returns ``path``."""
        self._require_module()
        state = {k: v.detach().cpu() for k, v in self.module_state().items()}
        atomic_save({"state_dict": state, "meta": meta or {}}, Path(path))
        return Path(path)

    def load(self, path: str | Path) -> None:
        """Load weights saved by :meth:`save` (or a Lightning checkpoint), ``weights_only``."""
        self._require_module()
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"ckpt_path={path} is not a file; give the {self.name} weights file")
        self.load_module_state(path)

    # -- explaining --------------------------------------------------------------
    def modules_to_protect(self, model: nn.Module) -> tuple[nn.Module, ...]:
        return (model, self.module) if self.module is not None else (model,)

    def explain(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        module = self._require_module()
        if model is not self.classifier:
            raise ValueError(
                f"explainer {self.name!r} was trained on another classifier; "
                "explain the model it was attached to (attach() it to this one first)"
            )
        module.to(images.device)
        return torch.cat([module.explain(x) for x, _ in self.chunks(images, targets)])

    def _require_module(self) -> pl.LightningModule:
        if self.module is None:
            raise RuntimeError(
                f"explainer {self.name!r} is learned and not trained yet: call "
                "fit(datamodule, classifier, trainer), or attach(classifier, image_size) "
                "then load(path)"
            )
        return self.module


def _checkpoint_record(path: str) -> dict[str, Any]:
    """The kept epoch and its monitored score, read from the checkpoint file itself.

    Under ``strategy=ddp_spawn`` training runs in worker processes: the caller's
    ``ModelCheckpoint`` only learns the best path, so the file is the record.
    ``epochs`` (the number trained) is taken from the trainer when it knows it.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    scores = [
        v["best_model_score"]
        for k, v in state.get("callbacks", {}).items()
        if k.startswith("ModelCheckpoint") and v.get("best_model_score") is not None
    ]
    record: dict[str, Any] = {"best_epoch": int(state["epoch"])}
    if scores:
        record["best_score"] = float(scores[0])
    return record
