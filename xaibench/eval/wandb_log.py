"""A job's results in Weights & Biases, read back from the files the job wrote.

With ``logger=wandb`` (``configs/logger/wandb.yaml``) every job logs, after its
evaluation: the flattened ``summary.json`` scalars into ``run.summary``, the
per-method table (``summary["test"]``, one row per method, mean and CI per
column) as a ``wandb.Table``, every figure of the run (``figures/*.png`` and
each compared method's) as a ``wandb.Image``, and the per-sample rows of every
method (a table, or an artifact of the CSVs when they exceed W&B's table size).
It reads only what rank 0 wrote, so the rows are de-duplicated under DDP, and
logs only on rank 0. The run is the one Lightning's ``WandbLogger`` opened
during training, else a new one from the same logger config (offline unless
``WANDB_MODE`` says otherwise, under ``paths.output_dir/wandb``); it is finished
at the end so the next job of a sweep opens its own.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from xaibench.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["flatten", "log_results", "method_table", "per_sample_media", "wandb_logger_config"]

STATS = ("mean", "ci_low", "ci_high", "n_nan")  # per column, as in table.csv


def wandb_logger_config(cfg: DictConfig) -> DictConfig | None:
    """The first node under ``cfg.logger`` whose ``_target_`` is Lightning's ``WandbLogger``
    (or a subclass), else ``None``."""
    for key, node in (cfg.get("logger") or {}).items():
        if node is None or "_target_" not in node:
            continue
        try:
            cls = get_class(node._target_)
        except (ImportError, ValueError) as e:
            raise ConfigError(
                f"logger.{key}._target_={node._target_!r} cannot be imported ({e}); "
                "use e.g. logger=csv or logger=wandb"
            ) from None
        if isinstance(cls, type) and issubclass(cls, WandbLogger):
            return node
    return None


def flatten(obj: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested dicts → ``{"a/b/c": scalar}``; lists and ``None`` are left out."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}/"))
        return out
    if isinstance(obj, bool | int | float | str):
        return {prefix.rstrip("/"): obj}
    return {}


def method_table(test: dict[str, dict[str, dict[str, float]]]) -> tuple[list[str], list[list]]:
    """``summary["test"]`` → ``(columns, rows)``: one row per method, for each metric column
    ``c`` the values ``c, c_ci_low, c_ci_high, c_n_nan`` (``table.csv``'s header); a column a
    method lacks is NaN."""
    metrics = list(dict.fromkeys(c for res in test.values() for c in res))
    columns = ["method", *(f"{c}{'' if s == 'mean' else '_' + s}" for c in metrics for s in STATS)]
    rows = [
        [name, *(res[c][s] if c in res else math.nan for c in metrics for s in STATS)]
        for name, res in test.items()
    ]
    return columns, rows


def per_sample_files(out_dir: Path, methods: list[str]) -> dict[str, Path]:
    """Method → its ``per_sample.csv`` (the main method's in ``out_dir``, each compared one's in
    ``out_dir/compare/<name>``), for the files that exist."""
    where = {m: out_dir if i == 0 else out_dir / "compare" / m for i, m in enumerate(methods)}
    return {m: d / "per_sample.csv" for m, d in where.items() if (d / "per_sample.csv").is_file()}


def read_per_sample(files: dict[str, Path]) -> tuple[list[str], list[list]]:
    """All methods' per-sample rows as ``(["method", "index", *metric columns], rows)``;
    ``index`` an int, the rest floats (NaN where a method lacks a column)."""
    tables = {}
    for method, path in files.items():
        with open(path, newline="") as f:
            tables[method] = list(csv.DictReader(f))
    metrics = list(dict.fromkeys(c for t in tables.values() for r in t[:1] for c in r))
    metrics = [c for c in metrics if c != "index"]
    rows = [
        [method, int(r["index"]), *(float(r.get(c) or "nan") for c in metrics)]
        for method, t in tables.items()
        for r in t
    ]
    return ["method", "index", *metrics], rows


def figures(out_dir: Path, methods: list[str]) -> Iterator[tuple[str, Path]]:
    """``(key, png)`` for the run's figures: ``figures/<stem>`` for the main folder's
    (overlays, overlays_compare, curves), ``compare/<name>/figures/<stem>`` for the others."""
    dirs = [out_dir / "figures", *(out_dir / "compare" / m / "figures" for m in methods[1:])]
    for d in dirs:
        for png in sorted(d.glob("*.png")):
            yield png.relative_to(out_dir).with_suffix("").as_posix(), png


def is_rank_zero() -> bool:
    """Rank 0 of a DDP job (or a single process); read from Lightning's rank, which follows
    ``RANK``/``LOCAL_RANK`` in relaunched workers."""
    return getattr(rank_zero_only, "rank", 0) == 0


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The job's config, resolved, without the ``hydra`` node (its sweep keys are unset
    outside a multirun)."""
    return {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in cfg.items()
        if k != "hydra"
    }


def open_run(node: DictConfig, out_dir: Path) -> Any:
    """The active W&B run (opened by ``WandbLogger`` during training), else a new one from the
    logger config ``node`` (its project, name, mode, tags; ``save_dir`` defaults to ``out_dir``)."""
    import wandb

    if wandb.run is not None:
        return wandb.run
    extra = {} if node.get("save_dir") else {"save_dir": str(out_dir)}
    return instantiate(node, **extra).experiment  # wandb.init exactly as WandbLogger calls it


def log_results(cfg: DictConfig, out_dir: Path, summary: dict[str, Any]) -> None:
    """Log a finished job to W&B if ``cfg.logger`` has a ``WandbLogger``; else do nothing.

    Logs (rank 0 only) the resolved config, the flattened ``summary`` into ``run.summary``,
    ``test/table`` (one row per method), ``test/per_sample`` (every method's rows, or the
    CSVs as an artifact above ``wandb.Table.MAX_ROWS``) and each figure as
    ``figures/<stem>``; then finishes the run (a second ``wandb.finish()`` is a no-op).
    """
    node = wandb_logger_config(cfg)
    if node is None or not is_rank_zero():
        return
    import wandb

    out_dir = Path(out_dir)
    run = open_run(node, out_dir)
    try:
        run.config.update(job_config(cfg), allow_val_change=True)
        run.summary.update(flatten(summary))
        methods = list(summary.get("test") or {})
        media = {key: wandb.Image(str(png), caption=key) for key, png in figures(out_dir, methods)}
        if methods:
            columns, rows = method_table(summary["test"])
            media["test/table"] = wandb.Table(columns=columns, data=rows)
            media.update(per_sample_media(run, per_sample_files(out_dir, methods)))
        if media:
            run.log(media)
        if not getattr(run, "disabled", False):  # WANDB_MODE=disabled: no folder to name
            where = Path(run.dir).parent
            hint = f"; upload with `wandb sync {where}`" if run.offline else ""
            log.info("W&B run %s: %d methods -> %s%s", run.name, len(methods), where, hint)
    finally:
        wandb.finish()


def per_sample_media(run: Any, files: dict[str, Path]) -> dict[str, Any]:
    """``{"test/per_sample": wandb.Table}`` of every method's rows when they fit a table
    (``wandb.Table.MAX_ROWS``); else the CSVs go into ``run`` as a ``per_sample-<run id>``
    artifact (``<method>/per_sample.csv``) and nothing is returned."""
    import wandb

    if not files:
        return {}
    columns, rows = read_per_sample(files)
    if len(rows) <= wandb.Table.MAX_ROWS:
        return {"test/per_sample": wandb.Table(columns=columns, data=rows)}
    art = wandb.Artifact(f"per_sample-{run.id}", type="results")
    for method, path in files.items():
        art.add_file(str(path), name=f"{method}/per_sample.csv")
    run.log_artifact(art)
    return {}
