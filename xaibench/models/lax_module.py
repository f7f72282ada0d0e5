"""``LAXModule``: trains a :class:`~xaibench.models.lax.LAXHead` on a frozen classifier.

The classifier stays in eval mode with no gradients for the whole run (its
weights and BatchNorm statistics are bitwise unchanged); only the head is
optimised, with the LAX loss (paper eq. 9). Validation computes the mean mask
value (the paper tunes λ by watching it) and MSI on up to ``val_samples``
images; checkpoints hold the head only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from xaibench.data.cache import atomic_save
from xaibench.data.datasets import unpack_batch
from xaibench.models.lax import LAX, LAXHead, lax_loss

HEAD_PREFIX = "lax.head."


def resolve_feature_upsample(value: int | str, feature_size: int) -> int:
    """``"auto"``: 2 when the feature map is 4×4 or smaller (paper: CIFAR 4×4 → 8×8), else 1."""
    if value == "auto":
        return 2 if feature_size <= 4 else 1
    if isinstance(value, int) and value >= 1:
        return value
    from xaibench.errors import ConfigError

    raise ConfigError(f"explainer.feature_upsample={value!r} must be 'auto' or an integer >= 1")


class LAXModule(pl.LightningModule):
    """LAX on a frozen classifier.

    Args:
        net: the frozen base classifier (``features``/``head``, e.g. ResNet18).
        image_size: input side in pixels (sets the feature size for ``"auto"`` upsampling).
        optimizer: ``params -> Optimizer`` (paper: Adam).
        lam: λ, weight of the entropy term (paper Table 6: 5 / 5 / 2).
        temperature: t of the entropy softmax (paper: 0.5).
        eps: ε inside the entropy's log.
        feature_upsample: ``"auto"`` or an integer factor (see :func:`resolve_feature_upsample`).
        alpha_min: MSI threshold for validation (paper: 0.5; CIFAR-10 0.4).
        val_step: α step of the validation MSI (coarser than the test's 0.02 to keep epochs cheap).
        val_samples: validation images scored by MSI each epoch (the first ones, fixed order).
        metric_batch_size: perturbed images per forward pass in the validation MSI.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        image_size: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        lam: float = 5.0,
        temperature: float = 0.5,
        eps: float = 1e-8,
        feature_upsample: int | str = "auto",
        alpha_min: float = 0.5,
        val_step: float = 0.05,
        val_samples: int = 512,
        metric_batch_size: int = 512,
    ) -> None:
        super().__init__()
        self.check_hparams(lam=lam, temperature=temperature)
        for p in net.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            was = net.training
            net.eval()
            feats = net.features(
                torch.zeros(
                    1,
                    getattr(net.conv1, "in_channels", 3),
                    image_size,
                    image_size,
                    device=next(net.parameters()).device,
                    dtype=next(net.parameters()).dtype,
                )
            )
            net.train(was)
        up = resolve_feature_upsample(feature_upsample, feats.shape[-1])
        head = LAXHead(feats.shape[1], width=feats.shape[1] / 512, feature_upsample=up)
        self.lax = LAX(net, head)
        self.optimizer_factory = optimizer
        self.lam, self.temperature, self.eps = float(lam), float(temperature), float(eps)
        self.alpha_min, self.val_step = float(alpha_min), float(val_step)
        self.val_samples, self.metric_batch_size = int(val_samples), int(metric_batch_size)
        self.strict_loading = False  # checkpoints hold the head only
        self._val_seen = 0
        self.best_val_msi = float("-inf")

    @staticmethod
    def check_hparams(*, lam: float, temperature: float) -> None:
        """``ConfigError`` unless ``lam >= 0`` and ``temperature > 0``."""
        from xaibench.errors import ConfigError

        if not (isinstance(lam, (int, float)) and lam >= 0):
            raise ConfigError(f"explainer.lam={lam!r} must be a number >= 0")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ConfigError(f"explainer.temperature={temperature!r} must be a number > 0")

    @property
    def net(self) -> nn.Module:
        """The frozen base classifier."""
        return self.lax.backbone

    def train(self, mode: bool = True) -> LAXModule:
        """Only the head follows ``mode``; the classifier stays in eval mode."""
        super().train(mode)
        self.lax.backbone.eval()
        return self

    def explain(self, images: Tensor) -> Tensor:
        """Heatmaps ``(N, 1, H, W)`` in [0, 1] (one forward pass)."""
        return self.lax.explain(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.explain(images)

    # -- training --------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        b = unpack_batch(batch)
        with torch.no_grad():
            feats = self.net.features(b.images)  # frozen: no graph through the first pass
        low = self.lax.head(feats)
        full = torch.nn.functional.interpolate(
            low, size=b.images.shape[-2:], mode="bilinear", align_corners=False
        )
        logits = self.net(
            b.images * full
        )  # T = X ⊙ M; gradients reach the head through the frozen net
        losses = lax_loss(
            logits, b.labels, low, lam=self.lam, temperature=self.temperature, eps=self.eps
        )
        n = len(b.labels)
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items()},
            prog_bar=False,
            on_step=False,
            on_epoch=True,
            batch_size=n,
        )
        self.log(
            "train/mask_mean",
            full.detach().mean(),
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=n,
        )
        self.log(
            "train/masked_acc",
            (logits.argmax(1) == b.labels).float().mean(),
            on_step=False,
            on_epoch=True,
            batch_size=n,
        )
        return losses["loss"]

    def configure_optimizers(self):
        return self.optimizer_factory(params=self.lax.head.parameters())

    # -- validation: mask mean and MSI -----------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_seen = 0

    def validation_step(self, batch, batch_idx: int) -> None:
        from xaibench.metrics import msi

        b = unpack_batch(batch)
        heat = self.explain(b.images)
        n = len(b.labels)
        self.log("val/mask_mean", heat.mean(), on_epoch=True, batch_size=n, sync_dist=True)
        take = min(n, self.val_samples - self._val_seen)
        if take <= 0:
            return
        self._val_seen += take
        res = msi(
            self.net,
            b.images[:take],
            heat[:take],
            b.labels[:take],
            alpha_min=self.alpha_min,
            step=self.val_step,
            batch_size=self.metric_batch_size,
            indices=b.index[:take],
        )
        for k in ("msi", "base_score", "mask_penalty"):
            self.log(
                f"val/{k}",
                res[k].mean(),
                on_epoch=True,
                prog_bar=k == "msi",
                batch_size=take,
                sync_dist=True,
            )

    def on_validation_epoch_end(self) -> None:
        val = self.trainer.callback_metrics.get("val/msi")
        if val is not None and not self.trainer.sanity_checking:
            self.best_val_msi = max(self.best_val_msi, float(val))
            self.log("val/msi_best", self.best_val_msi, sync_dist=False)

    # -- test: heatmaps for the EvaluationCallback -----------------------------
    def test_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        return {"heatmaps": self.explain(unpack_batch(batch).images)}

    # -- head-only checkpoints --------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k.startswith(HEAD_PREFIX)
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = set(self.head_state_dict(prefixed=True)) - set(checkpoint.get("state_dict", {}))
        if missing:
            raise ValueError(
                f"checkpoint lacks LAX head weights {sorted(missing)[:3]}…; was it written by LAXModule?"
            )

    def head_state_dict(self, prefixed: bool = False) -> dict[str, Tensor]:
        """The head's weights (optionally with the ``lax.head.`` prefix used in Lightning checkpoints)."""
        sd = self.lax.head.state_dict()
        return {HEAD_PREFIX + k: v for k, v in sd.items()} if prefixed else sd

    def save_head(self, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        """Atomically write ``{"state_dict": head weights, "meta": meta}`` to ``path``."""
        atomic_save(
            {
                "state_dict": {k: v.detach().cpu() for k, v in self.head_state_dict().items()},
                "meta": meta or {},
            },
            Path(path),
        )

    def load_head(self, path: str | Path) -> None:
        """Load head weights from a :meth:`save_head` file or a Lightning checkpoint (``weights_only=True``)."""
        obj = torch.load(path, map_location="cpu", weights_only=True)
        sd = obj.get("state_dict", obj)
        if any(k.startswith(HEAD_PREFIX) for k in sd):
            sd = {k[len(HEAD_PREFIX) :]: v for k, v in sd.items() if k.startswith(HEAD_PREFIX)}
        try:
            self.lax.head.load_state_dict(sd)
        except RuntimeError as e:
            from xaibench.errors import ConfigError

            raise ConfigError(
                f"{path} does not hold weights for this LAX head (backbone width/stem differ?): {e}"
            ) from e
