"""``EvaluationCallback``: scores an explainer's test-set heatmaps with configured metrics.

The LightningModule under test returns ``{"heatmaps": (N,1,H,W) in [0,1]}``
from ``test_step`` and exposes the frozen classifier as ``.net``. For every
batch, each metric ``(model, images, heatmaps, targets, **kw) -> dict`` is run;
per-sample values ``(N,)`` are kept with the sample's dataset ``index`` and
curves ``(N, K)`` are averaged for the figure. Under DDP, ranks' rows are
gathered and de-duplicated by ``index`` (DistributedSampler pads with
repeats), so a multi-process run writes the rows of a one-process run.
At the end it writes ``per_sample.csv``, ``metrics.json``, ``table.{md,csv,tex}``
and ``figures/`` into ``out_dir`` (:func:`~xaibench.eval.results.write_evaluation`), or,
given a ``shard_path``, saves its rows there as one shard of a resumable evaluation.

The metrics see the classifier through one
:class:`~xaibench.metrics.shared_forward.SharedForward` per batch and, with a
fast-forward flag (:class:`~xaibench.eval.fast.FastFlags`), a fast copy of it
built on the first batch and checked there against the original
(``fast_check``); the explainer's forward and gradients use the original.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import Tensor, nn

from xaibench.data.cache import atomic_save, normalize_key
from xaibench.data.datasets import Batch, unpack_batch
from xaibench.eval.fast import FastFlags, compare_predictions
from xaibench.eval.results import GRIDS, Rows, write_evaluation
from xaibench.metrics.registry import entry_spec
from xaibench.metrics.shared_forward import ForwardStats, SharedForward

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


def curve_grid(key: str, k: int, res: dict[str, Tensor]) -> tuple[str | None, Tensor]:
    """The x values ``(K,)`` of curve ``key``: the result's 1-D grid of length ``k`` with the
    same mode suffix (``show_curve`` → ``alphas``, ``insertion_curve_value`` →
    ``steps_value``), else ``(None, linspace(0, 1, k))``."""
    suffix = next((s for s in ("_value", "_percent") if key.endswith(s)), "")
    for name, v in res.items():
        plain = not name.endswith(("_value", "_percent"))
        same_mode = name.endswith(suffix) if suffix else plain
        if same_mode and v.dim() == 1 and v.shape[0] == k and name in GRIDS:
            return name, v.detach().double().cpu()
    return None, torch.linspace(0, 1, k, dtype=torch.float64)


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


class EvaluationResult(dict):
    """An evaluation's ``{column: {mean, ci_low, ci_high, n, n_nan, ...}}`` (a plain dict to
    the tables and JSON), plus ``run``: what this process measured while scoring it, which is
    not a metric column (``forwards``: :meth:`ForwardStats.as_dict` summed over the ranges
    scored here; ``fast_forward``: ``EvaluationCallback.fast_check`` with a fast flag on)."""

    def __init__(self, columns: dict[str, Any] | None = None, run: dict[str, Any] | None = None):
        super().__init__(columns or {})
        self.run: dict[str, Any] = dict(run or {})


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
        share_forward: forward each distinct perturbed input once per batch across
            all entries (:class:`~xaibench.metrics.shared_forward.SharedForward`);
            ``forward_stats`` adds up its counts over the batches (and over the
            test runs of one callback, see :meth:`for_shard`).
        fast: the metrics' forwards through a fast copy of ``pl_module.net``,
            built on the first batch and kept for later test runs of the same
            net; ``fast_check`` is its :func:`~xaibench.eval.fast.compare_predictions`
            on that batch with the flags and the copy's build seconds (``{channels_last,
            compile, autocast, max_abs_logit_diff, flipped, n, build_s}``).
        shard_path: save this epoch's rows there (atomically, with ``meta.key`` =
            ``shard_key``) instead of writing the files: one shard of a resumable
            evaluation (:mod:`xaibench.eval.shards`), merged by the caller.
    """

    def __init__(
        self,
        metrics: dict[str, MetricFn],
        out_dir: str | Path,
        method: str,
        *,
        figure_images: int = 8,
        seed: int = 0,
        share_forward: bool = True,
        fast: FastFlags = FastFlags(),
        shard_path: str | Path | None = None,
        shard_key: dict[str, Any] | None = None,
    ) -> None:
        if not metrics:
            raise ValueError("EvaluationCallback needs at least one metric (configs/metric/)")
        self.metrics, self.out_dir, self.method = dict(metrics), Path(out_dir), method
        self.specs = {entry: entry_spec(fn) for entry, fn in self.metrics.items()}
        self.columns = column_names({entry: spec.keys for entry, spec in self.specs.items()})
        self.figure_images, self.seed = figure_images, seed
        self.share_forward, self.forward_stats = share_forward, ForwardStats()
        self.fast, self.fast_check = fast, None
        self._fast: tuple[nn.Module, torch.device, nn.Module] | None = None  # (net, device, copy)
        self.for_shard(shard_path, shard_key)
        self.summary: dict[str, dict[str, float]] = {}

    def for_shard(
        self, shard_path: str | Path | None, shard_key: dict[str, Any] | None = None
    ) -> EvaluationCallback:
        """Save the next test run's rows to ``shard_path`` (with ``meta.key`` = ``shard_key``);
        one callback can score every range of an evaluation, its counts and fast copy kept."""
        self.shard_path = None if shard_path is None else Path(shard_path)
        self.shard_key = shard_key or {}
        return self

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._index: list[Tensor] = []
        self._cols: dict[str, list[Tensor]] = {
            c: [] for names in self.columns.values() for c in names.values()
        }
        self._curves: dict[tuple[str, str], list[Tensor]] = {}  # (entry, key) -> batches
        self._grids: dict[tuple[str, str], tuple[str | None, Tensor]] = {}
        self._figure: tuple[Tensor, Tensor, Tensor] | None = None
        self._warned: set[str] = set()

    def metrics_net(self, net: nn.Module, images: Tensor) -> nn.Module:
        """The classifier the metrics call: ``net``, or (a fast-forward flag on) its fast copy,
        built on ``images`` ``(N, C, H, W)`` the first time and checked on them."""
        if not self.fast.on:
            return net
        device = images.device
        if self._fast is None or self._fast[0] is not net or self._fast[1] != device:
            start = time.perf_counter()
            fast = self.fast.build(net, example=images)
            build_s = time.perf_counter() - start
            check = compare_predictions(net, fast, images)
            self.fast_check = {**self.fast.as_dict(), **check, "build_s": round(build_s, 3)}
            flags = ", ".join(k for k, v in self.fast.as_dict().items() if v)
            level = logging.WARNING if check["flipped"] else logging.INFO
            log.log(
                level,
                "fast forward (%s): max |logit diff| %.2g, argmax flipped on %d of %d images "
                "of the first batch",
                flags, check["max_abs_logit_diff"], check["flipped"], check["n"],
            )  # fmt: skip
            self._fast = (net, device, fast)
        return self._fast[2]

    def _score(self, entry: str, net: nn.Module, b: Batch, heat: Tensor) -> dict:
        """One entry's outputs on one batch with the classifier ``net``; NaN for every key if
        it needs absent masks."""
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
        return self.metrics[entry](net, b.images, heat, b.labels, **kw)

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
        # one SharedForward per batch: entries' identical perturbed inputs are forwarded once
        net = self.metrics_net(pl_module.net, b.images)
        shared = SharedForward(net, share=self.share_forward)
        for entry in self.metrics:
            res = self._score(entry, shared, b, heat)
            for key, column in self.columns[entry].items():
                if key not in res or tuple(res[key].shape) != (n,):
                    got = tuple(res[key].shape) if key in res else "nothing"
                    raise RuntimeError(
                        f"metric entry {entry!r} declared the per-sample key {key!r} but "
                        f"returned {got} for it (expected ({n},)); fix its registration"
                    )
                self._cols[column].append(res[key].detach().double().cpu())
            self._keep_curves(entry, res, n)
        shared.clear()
        self.forward_stats += shared.stats
        if self._figure is None and trainer.is_global_zero:
            k = self.figure_images
            self._figure = (b.images[:k].cpu(), heat[:k].cpu(), b.labels[:k].cpu())

    def _keep_curves(self, entry: str, res: dict[str, Tensor], n: int) -> None:
        """Keep the entry's curves ``(N, K)``, each with the 1-D grid it is drawn over."""
        for key, v in res.items():
            if key in self.columns[entry] or v.dim() != 2 or v.shape[0] != n:
                continue
            self._curves.setdefault((entry, key), []).append(v.detach().double().cpu())
            if (entry, key) not in self._grids:
                self._grids[(entry, key)] = curve_grid(key, v.shape[1], res)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = self._gather()
        if not trainer.is_global_zero:
            return
        if self.shard_path is not None:
            atomic_save({**rows, "meta": {"key": normalize_key(self.shard_key)}}, self.shard_path)
            log.info("evaluated %d test samples -> %s", len(rows["index"]), self.shard_path)
            return
        self.summary = write_evaluation(self.out_dir, self.method, rows, seed=self.seed)
        log.info("evaluated %d test samples -> %s", len(rows["index"]), self.out_dir)

    def _gather(self) -> Rows:
        """This epoch's rows from every rank (de-duplicated by ``index``), as a
        :mod:`~xaibench.eval.results` rows dict."""
        curves = {f"{e}\x1f{k}": torch.cat(v) for (e, k), v in self._curves.items()}
        index, cols = gather_rows(
            torch.cat(self._index),
            {**{k: torch.cat(v) for k, v in self._cols.items()}, **curves},
        )
        info = {
            column: {"entry": entry, "higher_is_better": self.specs[entry].directions.get(key)}
            for entry, names in self.columns.items()
            for key, column in names.items()
        }
        nested: dict[str, dict[str, dict[str, Any]]] = {}
        for (entry, key), (grid, x) in self._grids.items():
            nested.setdefault(entry, {})[key] = {
                "grid": grid,
                "x": x,
                "values": cols.pop(f"{entry}\x1f{key}"),
            }
        figure = None
        if self._figure is not None:
            images, heat, labels = self._figure
            figure = {"images": images, "heatmaps": heat, "labels": labels}
        return {"index": index, "columns": cols, "info": info, "curves": nested, "figure": figure}
