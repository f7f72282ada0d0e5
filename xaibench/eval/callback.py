"""``EvaluationCallback``: scores an explainer's test-set heatmaps with configured metrics.

The LightningModule under test returns ``{"heatmaps": (N,1,H,W) in [0,1]}``
from ``test_step`` and exposes the frozen classifier as ``.net``. For every
batch, each metric ``(model, images, heatmaps, targets, **kw) -> dict`` is run;
per-sample values ``(N,)`` are kept with the sample's dataset ``index`` and
curves ``(N, K)`` are averaged for the figure. Under DDP, ranks' rows are
gathered and de-duplicated by ``index`` (DistributedSampler pads with
repeats), so a multi-process run writes the rows of a one-process run.
At the end it writes ``per_sample.csv``, ``metrics.json``, ``table.{md,csv,tex}``
and ``figures/`` into ``out_dir``.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import Tensor

from xaibench.data.datasets import unpack_batch
from xaibench.eval.aggregate import summarize, write_per_sample, write_tables
from xaibench.eval.figures import save_curves, save_overlays

log = logging.getLogger(__name__)

MetricFn = Callable[..., dict[str, Tensor]]


def _accepts(fn: Callable, name: str) -> bool:
    target = getattr(fn, "func", fn)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def gather_rows(index: Tensor, columns: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """All ranks' rows on every rank, de-duplicated by ``index`` (first occurrence kept), sorted."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (index.cpu(), {k: v.cpu() for k, v in columns.items()}))
        index = torch.cat([p[0] for p in parts])
        columns = {k: torch.cat([p[1][k] for p in parts]) for k in columns}
    uniq, inverse = torch.unique(index, return_inverse=True)
    first = torch.full((len(uniq),), len(index), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(index)), reduce="amin"
    )
    return index[first], {k: v[first] for k, v in columns.items()}


class EvaluationCallback(pl.Callback):
    """Scores test-stage heatmaps; see the module docstring.

    Args:
        metrics: entry name → metric callable (a ``_partial_`` config).
        out_dir: where the files go.
        method: the explainer's name (the table's row label).
        figure_images: how many test images the overlay figure shows.
        seed: bootstrap seed.
    """

    def __init__(
        self,
        metrics: dict[str, MetricFn],
        out_dir: str | Path,
        method: str,
        *,
        figure_images: int = 8,
        seed: int = 0,
    ) -> None:
        if not metrics:
            raise ValueError("EvaluationCallback needs at least one metric (configs/metric/)")
        self.metrics, self.out_dir, self.method = dict(metrics), Path(out_dir), method
        self.figure_images, self.seed = figure_images, seed
        self.summary: dict[str, dict[str, float]] = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._index: list[Tensor] = []
        self._cols: dict[str, list[Tensor]] = {}
        self._curves: dict[str, list[Tensor]] = {}
        self._figure: tuple[Tensor, Tensor, Tensor] | None = None

    def _score(
        self, fn: MetricFn, pl_module: pl.LightningModule, b, heat: Tensor
    ) -> dict[str, Tensor]:
        kw: dict[str, Any] = {}
        if _accepts(fn, "indices"):
            kw["indices"] = b.index
        if _accepts(fn, "masks"):
            if b.masks is None:
                return {}  # localization needs ground-truth masks; this dataset has none
            kw["masks"] = b.masks
        return fn(pl_module.net, b.images, heat, b.labels, **kw)

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not isinstance(outputs, dict) or "heatmaps" not in outputs:
            raise TypeError(
                f"{type(pl_module).__name__}.test_step must return {{'heatmaps': (N,1,H,W)}} for EvaluationCallback"
            )
        b = unpack_batch(batch)
        heat = outputs["heatmaps"].detach()
        self._index.append(b.index.cpu())
        for fn in self.metrics.values():
            res = self._score(fn, pl_module, b, heat)
            # keys are unique across entries (checked at epoch end); a 1-D tensor that is
            # not per-sample (e.g. MSI's alphas) is a curve's x-axis and not kept
            for key, v in res.items():
                if v.shape[:1] != (len(b.labels),) or v.dim() > 2:
                    continue
                store = self._cols if v.dim() == 1 else self._curves
                store.setdefault(key, []).append(v.detach().double().cpu())
        if self._figure is None and trainer.is_global_zero:
            k = self.figure_images
            self._figure = (b.images[:k].cpu(), heat[:k].cpu(), b.labels[:k].cpu())

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lengths = {k: sum(len(t) for t in v) for k, v in self._cols.items()}
        n = sum(len(t) for t in self._index)
        bad = {k: m for k, m in lengths.items() if m != n}
        if bad:
            raise ValueError(
                f"metric keys collide or miss samples (expected {n} rows each): {bad}; rename entries in configs/metric/"
            )
        index, cols = gather_rows(
            torch.cat(self._index), {k: torch.cat(v) for k, v in self._cols.items()}
        )
        if not trainer.is_global_zero:
            return
        self.summary = summarize(cols, seed=self.seed)
        write_per_sample(self.out_dir / "per_sample.csv", index, cols)
        (self.out_dir / "metrics.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        write_tables(self.out_dir, [{"name": self.method, "summary": self.summary}], list(cols))
        if self._figure is not None:
            imgs, heat, labels = self._figure
            save_overlays(
                self.out_dir / "figures" / "overlays.png", imgs, {self.method: heat}, labels
            )
        curves = {
            k: (torch.linspace(0, 1, v[0].shape[1]), torch.cat(v)) for k, v in self._curves.items()
        }
        if curves:
            save_curves(self.out_dir / "figures" / "curves.png", curves)
        log.info("evaluated %d test samples -> %s", len(index), self.out_dir)
