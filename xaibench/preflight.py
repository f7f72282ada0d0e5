"""Fail early: check the whole run before the first training step.

A typo in a metric argument (``++metric.paper.stpe=0.1``), a value a method
rejects (``explainer.patch=0``) or an unwritable output folder would
otherwise surface after the base classifier and a learned explainer have
trained. :func:`preflight` calls every explainer and every metric entry of
the run once, on one test image and an *untrained* classifier of the
configured architecture, and turns what they reject into one
:class:`~xaibench.errors.ConfigError` that names the entry.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xaibench.errors import ConfigError
from xaibench.metrics.registry import entry_spec, unwrap_partial

log = logging.getLogger(__name__)


def preflight(
    net: nn.Module,
    sample: tuple[Tensor, Tensor, Tensor, Tensor | None],
    explainers: dict[str, Any],
    metrics: dict[str, Callable[..., dict[str, Tensor]]],
    *,
    image_size: int,
    writable: dict[str, Path],
) -> None:
    """Raise :class:`ConfigError` for the first part of the run that cannot work.

    Args:
        net: an untrained classifier of the run's architecture (eval mode).
        sample: ``(images (n,C,H,W), labels (n,), index (n,), masks (n,1,H,W) or None)``.
        explainers: method name → explainer (learned ones are attached to ``net``).
        metrics: entry name → metric partial.
        image_size: input side in pixels (for learned explainers' ``attach``).
        writable: config key → folder that must be writable (created if missing).
    """
    for key, folder in writable.items():
        check_writable(folder, key)
    images, labels, index, masks = sample
    for name, explainer in explainers.items():
        _explainer_call(name, explainer, net, images, labels, image_size)
    heat = torch.rand(
        images.shape[0], 1, *images.shape[2:], generator=torch.Generator().manual_seed(0)
    )
    for entry, fn in metrics.items():
        _metric_call(entry, fn, net, (images, heat.to(images), labels, index, masks))


def check_writable(folder: Path, key: str) -> None:
    """``ConfigError`` unless ``folder`` can be created and written (``key`` names the setting)."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{key}={folder} is a file, not a folder; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(
            f"{key}={folder} is not writable ({e.strerror}); give another folder"
        ) from e


def _explainer_call(
    name: str, explainer: Any, net: nn.Module, images: Tensor, labels: Tensor, image_size: int
) -> None:
    attach = getattr(explainer, "attach", None)  # a learned explainer: fresh weights suffice
    try:
        if attach is not None:
            attach(net, image_size)
        explainer(net, images, labels)
    except ConfigError as e:
        raise ConfigError(f"explainer {name!r}: {e}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"explainer {name!r} (configs/explainer/{name}.yaml): {e}") from e


def _metric_call(entry: str, fn: Callable, net: nn.Module, batch: tuple) -> None:
    images, heat, labels, index, masks = batch
    try:
        spec = entry_spec(fn)
    except ValueError as e:
        raise ConfigError(f"metric entry {entry!r}: {e}") from e
    _check_arguments(entry, fn)
    kw: dict[str, Any] = {}
    if "indices" in spec.needs:
        kw["indices"] = index
    if "masks" in spec.needs:
        if masks is None:
            log.warning(
                "metric entry %r needs ground-truth masks and this dataset has none: "
                "its columns (%s) will be NaN",
                entry,
                ", ".join(spec.keys),
            )
            return
        kw["masks"] = masks
    try:
        fn(net, images, heat, labels, **kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"metric entry {entry!r}: {e}") from e


def _check_arguments(entry: str, fn: Callable) -> None:
    """Unknown keyword arguments of a partial, with the closest known name."""
    func, keywords = unwrap_partial(fn)
    params = inspect.signature(func).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # passes them on (quality_gaps): the call above reports unknown ones
    for key in keywords:
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(
                p for p in params if p not in ("model", "images", "heatmaps", "targets")
            )
            raise ConfigError(
                f"metric entry {entry!r}: {func.__name__}() has no argument {key!r}.{hint} "
                f"Its arguments: {known}"
            )
