"""The explainer interface and its registry.

Every explainer is called the same way::

    heatmaps = explainer(model, images, targets)   # (N, 1, H, W) in [0, 1]

:class:`Explainer` does the shared work around a method's :meth:`Explainer.explain`:
input checks, gradients switched on (also inside a Lightning test loop, which
runs under ``torch.no_grad()``), the model protected by
:func:`~xaibench.explainers.guard.preserve_model`, channel reduction,
resizing and normalisation, output checks. A method only implements
``explain(model, images, targets) -> raw maps (N, C, h, w)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench.explainers.guard import preserve_model
from xaibench.explainers.postprocess import (
    check_normalization,
    check_reduction,
    normalize_maps,
    reduce_channels,
)
from xaibench.registry import Registry

EXPLAINERS: Registry[type[Explainer]] = Registry("explainer")


def register_explainer(name: str, **meta: Any) -> Callable[[type[Explainer]], type[Explainer]]:
    """Class decorator: ``@register_explainer("gradcam")``; sets ``cls.name``."""

    def deco(cls: type[Explainer]) -> type[Explainer]:
        EXPLAINERS.register(name, **meta)(cls)
        cls.name = name
        return cls

    return deco


def get_explainer(name: str, **kwargs: Any) -> Explainer:
    """Build the explainer registered as ``name`` with ``kwargs``.

    An unknown name is a ``ValueError`` that lists the known ones and suggests
    the closest.
    """
    return EXPLAINERS.get(name)(**kwargs)


def list_explainers() -> list[str]:
    """All registered explainer names, sorted (they equal ``configs/explainer/*.yaml``)."""
    return EXPLAINERS.names()


class Explainer(ABC):
    """Base class: ``explainer(model, images, targets) -> heatmaps (N, 1, H, W) in [0, 1]``.

    Args:
        reduction: how channels of a multi-channel raw map are combined; see
            :func:`~xaibench.explainers.postprocess.reduce_channels`.
        normalize: per-sample rescaling into [0, 1]; see
            :func:`~xaibench.explainers.postprocess.normalize_maps`.
        percentile: clipping percentile for ``normalize="percentile"``.
        batch_size: images per chunk; memory stays bounded by one chunk.
    """

    name: str = "explainer"
    #: whether :meth:`explain` needs autograd (switched on inside ``__call__``)
    needs_grad: bool = True
    #: whether the maps depend on the model at all (``False`` for sanity baselines)
    uses_model: bool = True
    #: whether the maps depend on ``targets`` (``False`` for class-agnostic methods)
    uses_targets: bool = True

    def __init__(
        self,
        *,
        reduction: str = "sum_abs",
        normalize: str = "minmax",
        percentile: float = 99.0,
        batch_size: int = 32,
    ) -> None:
        self.reduction = check_reduction(reduction)
        self.normalize = check_normalization(normalize, percentile)
        self.percentile = float(percentile)
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
        self.batch_size = batch_size

    @abstractmethod
    def explain(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """Raw maps for one batch.

        Called with the model in eval mode and its parameters frozen, autograd
        on (if :attr:`needs_grad`), ``images`` a detached copy on the model's device.

        Args:
            model: classifier returning logits ``(N, K)``.
            images: ``(N, C, H, W)``.
            targets: ``(N,)`` int64 class indices in ``[0, K)``.

        Returns:
            ``(N, C', h, w)`` raw maps, any sign and scale; resized to ``(H, W)``
            (bilinear) if ``(h, w)`` differs, reduced over ``C'`` and normalised
            by ``__call__``.
        """

    def chunks(self, images: Tensor, targets: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """``(images, targets)`` in chunks of :attr:`batch_size` along the batch."""
        for i in range(0, images.shape[0], self.batch_size):
            yield images[i : i + self.batch_size], targets[i : i + self.batch_size]

    def modules_to_protect(self, model: nn.Module) -> tuple[nn.Module, ...]:
        """Modules restored after the call (a learned explainer adds its own)."""
        return (model,)

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """Explain ``model``'s ``targets`` on ``images``.

        Args:
            model: classifier returning logits ``(N, K)``; unchanged afterwards
                (flags, hooks, ``requires_grad``, ``.grad``), also after an error.
            images: ``(N, C, H, W)`` float, in the model's input space.
            targets: ``(N,)`` integer class indices.

        Returns:
            ``(N, 1, H, W)`` heatmaps in [0, 1], finite, on ``images.device``,
            in ``images``' dtype.

        Raises:
            ValueError: bad shapes, dtypes, devices or targets.
            RuntimeError: called under ``torch.inference_mode()`` by a method
                that needs gradients.
        """
        targets = check_inputs(model, images, targets)
        if self.needs_grad and torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"explainer {self.name!r} needs gradients but was called under "
                "torch.inference_mode(); call it outside that block, or build the "
                "Lightning Trainer with inference_mode=False"
            )
        x = images.detach().clone()  # never touch the caller's tensor
        grad = torch.enable_grad() if self.needs_grad else torch.no_grad()
        with preserve_model(*self.modules_to_protect(model)), grad:
            raw = self.explain(model, x, targets)
        return self.postprocess(raw, images)

    def postprocess(self, raw: Tensor, images: Tensor) -> Tensor:
        """Raw maps ``(N, C', h, w)`` -> heatmaps ``(N, 1, H, W)`` in [0, 1] like ``images``."""
        n, _, h, w = images.shape
        raw = raw.detach()
        if raw.dim() != 4 or raw.shape[0] != n:
            raise RuntimeError(
                f"explainer {self.name!r} returned maps {tuple(raw.shape)}; expected (N={n}, C, h, w)"
            )
        raw = raw.to(device=images.device, dtype=images.dtype)
        if raw.shape[1] != 1:
            raw = reduce_channels(raw, self.reduction)
        if raw.shape[-2:] != (h, w):
            raw = F.interpolate(raw, size=(h, w), mode="bilinear", align_corners=False)
        if not bool(raw.isfinite().all()):
            raise RuntimeError(
                f"explainer {self.name!r} produced non-finite values; check the model's "
                "outputs on these images (NaN logits?) and the method's settings"
            )
        return normalize_maps(raw, self.normalize, percentile=self.percentile)

    def __repr__(self) -> str:
        keys = sorted(k for k in vars(self) if not k.startswith("_"))
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in keys)})"


def check_inputs(model: nn.Module, images: Tensor, targets: Tensor | Any) -> Tensor:
    """Validate an explainer call; return ``targets`` as int64 on ``images.device``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``images`` not a tensor.
        ValueError: wrong shapes, an empty batch, non-float or non-finite images,
            a device or dtype mismatch with the model, or targets outside
            ``[0, model.num_classes)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor (N, C, H, W), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images {tuple(images.shape)} must be a non-empty batch (N, C, H, W)")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be floating point, got {images.dtype}; convert with .float()"
        )
    _check_model_match(model, images)
    if not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).sum())
        raise ValueError(
            f"images contain {bad} non-finite values (NaN/inf); an explanation of them "
            "would be meaningless: fix or drop those images"
        )
    targets = torch.as_tensor(targets, device=images.device)
    if targets.dim() == 0:
        targets = targets.expand(images.shape[0])
    if targets.shape != (images.shape[0],):
        raise ValueError(
            f"targets {tuple(targets.shape)} must be (N,) = ({images.shape[0]},), one class per image"
        )
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got {targets.dtype}")
    targets = targets.long()
    num_classes = getattr(model, "num_classes", None)
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or (isinstance(num_classes, int) and high >= num_classes):
        bound = f"[0, {num_classes})" if isinstance(num_classes, int) else "[0, K)"
        raise ValueError(f"targets must be class indices in {bound}; got values in [{low}, {high}]")
    return targets


def _check_model_match(model: nn.Module, images: Tensor) -> None:
    """``images`` on the model's device and in its floating dtype."""
    param = next(model.parameters(), None)
    if param is None:
        return
    if param.device != images.device:
        raise ValueError(
            f"images are on {images.device} but the model is on {param.device}; "
            f"move one of them (e.g. images.to({str(param.device)!r}))"
        )
    if param.is_floating_point() and param.dtype != images.dtype:
        raise ValueError(
            f"images are {images.dtype} but the model's parameters are {param.dtype}; "
            f"convert one of them (e.g. images.to({param.dtype}) or model.to({images.dtype}))"
        )
