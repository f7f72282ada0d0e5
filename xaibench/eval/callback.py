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

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import Tensor

from xaibench.data.datasets import Batch, unpack_batch
from xaibench.eval.aggregate import summarize, write_per_sample, write_tables
from xaibench.eval.figures import save_curves, save_overlays
from xaibench.metrics.registry import entry_spec

log = logging.getLogger(__name__)

MetricFn = Callable[..., dict[str, Tensor]]


def column_names(keys: dict[str, Sequence[str]]) -> dict[str, dict[str, str]]:
    """Entry → {key → column}: a key returned by one entry only keeps its name; a key
    returned by several entries (two ``insertion_deletion`` modes, both perturbation
    directions' ``flip_step``) becomes ``<entry>/<key>`` in each, so columns never collide.
    The same rule names the per-sample columns and the curves."""
    counts = Counter(k for entry_keys in keys.values() for k in entry_keys)
    return {
        entry: {k: k if counts[k] == 1 else f"{entry}/{k}" for k in entry_keys}
        for entry, entry_keys in keys.items()
    }


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

    Each metric entry is called with exactly the inputs its registry entry
    declares (:func:`~xaibench.metrics.registry.entry_spec`: ``masks``,
    ``indices``). An entry that needs masks on a dataset without them yields
    NaN columns (counted in the tables' ``n_nan``), with one warning.

    Args:
        metrics: entry name → metric callable (a ``_partial_`` config of a
            registered metric).
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
        self.specs = {entry: entry_spec(fn) for entry, fn in self.metrics.items()}
        self.columns = column_names({entry: spec.keys for entry, spec in self.specs.items()})
        self.figure_images, self.seed = figure_images, seed
        self.summary: dict[str, dict[str, float]] = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._index: list[Tensor] = []
        self._cols: dict[str, list[Tensor]] = {
            c: [] for names in self.columns.values() for c in names.values()
        }
        self._curves: dict[tuple[str, str], list[Tensor]] = {}  # (entry, key) -> batches
        self._figure: tuple[Tensor, Tensor, Tensor] | None = None
        self._warned: set[str] = set()

    def _score(self, entry: str, pl_module: pl.LightningModule, b: Batch, heat: Tensor) -> dict:
        """One entry's outputs on one batch; NaN for every key if it needs absent masks."""
        spec = self.specs[entry]
        kw: dict[str, Any] = {}
        if "indices" in spec.needs:
            kw["indices"] = b.index
        if "masks" in spec.needs:
            if b.masks is None:
                if entry not in self._warned:
                    self._warned.add(entry)
                    log.warning(
                        "metric entry %r needs ground-truth masks, which this dataset lacks: "
                        "its columns are NaN",
                        entry,
                    )
                return {k: heat.new_full((len(b.labels),), float("nan")) for k in spec.keys}
            kw["masks"] = b.masks
        return self.metrics[entry](pl_module.net, b.images, heat, b.labels, **kw)

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not isinstance(outputs, dict) or "heatmaps" not in outputs:
            raise TypeError(
                f"{type(pl_module).__name__}.test_step must return {{'heatmaps': (N,1,H,W)}} for EvaluationCallback"
            )
        b = unpack_batch(batch)
        heat = outputs["heatmaps"].detach()
        n = len(b.labels)
        self._index.append(b.index.cpu())
        for entry in self.metrics:
            res = self._score(entry, pl_module, b, heat)
            for key, column in self.columns[entry].items():
                if key not in res or tuple(res[key].shape) != (n,):
                    got = tuple(res[key].shape) if key in res else "nothing"
                    raise RuntimeError(
                        f"metric entry {entry!r} declared the per-sample key {key!r} but "
                        f"returned {got} for it (expected ({n},)); fix its registration"
                    )
                self._cols[column].append(res[key].detach().double().cpu())
            for key, v in res.items():  # curves (N, K); a 1-D grid (alphas) is not kept
                if key not in self.columns[entry] and v.dim() == 2 and v.shape[0] == n:
                    self._curves.setdefault((entry, key), []).append(v.detach().double().cpu())
        if self._figure is None and trainer.is_global_zero:
            k = self.figure_images
            self._figure = (b.images[:k].cpu(), heat[:k].cpu(), b.labels[:k].cpu())

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
        keys: dict[str, list[str]] = {}
        for entry, key in self._curves:
            keys.setdefault(entry, []).append(key)
        names = column_names(keys)
        curves = {
            names[entry][key]: (torch.linspace(0, 1, v[0].shape[1]), torch.cat(v))
            for (entry, key), v in self._curves.items()
        }
        if curves:
            save_curves(self.out_dir / "figures" / "curves.png", curves)
        log.info("evaluated %d test samples -> %s", len(index), self.out_dir)
