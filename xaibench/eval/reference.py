"""Our table beside a paper's: ``paper_comparison.{md,csv,tex}`` with Kendall τ per column.

A reference (``configs/paper_reference/<experiment>.yaml``, selected by an
experiment's ``paper_reference``) names its source and, per column of our
tables, the paper's value for each method::

    source: LAX paper, Table 3 (Synthetic MNIST)
    columns:
      msi: {lax: 0.582, kpcacam: 0.128, gradcam: 0.091, ...}

:func:`check_paper_reference` does the same matching against the run's metric
columns and methods before any training, so a mistyped column fails in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from xaibench.errors import ConfigError
from xaibench.eval.callback import column_names
from xaibench.metrics.registry import entry_spec
from xaibench.studies.common import rank_agreement, write_table


def reference_columns(reference: Any) -> dict[str, Any]:
    """``reference.columns`` (column → {method: paper value}); ``ConfigError`` if it is empty."""
    columns = dict(reference.get("columns") or {})
    if not columns:
        raise ConfigError("paper_reference.columns is empty: give {column: {method: value}}")
    return columns


def check_paper_reference(
    reference: Any, metrics: Mapping[str, Any], methods: Iterable[str]
) -> None:
    """Fail before any training if the run cannot fill ``reference``'s table.

    Args:
        reference: ``{"source", "columns": {column: {method: value}}}`` (``cfg.paper_reference``).
        metrics: the run's metric entries (entry → partial of a registered metric).
        methods: the run's method names (main explainer and ``compare_with``).

    Raises:
        ConfigError: a reference column is not one of the run's metric columns, or
            names none of the run's methods.
    """
    keys = {entry: entry_spec(fn).keys for entry, fn in metrics.items()}
    ours = {c for names in column_names(keys).values() for c in names.values()}
    methods = list(methods)
    for column, paper in reference_columns(reference).items():
        if column not in ours:
            raise ConfigError(
                f"paper_reference column {column!r} is not a column of this run's metric "
                f"entries ({sorted(ours)}); rename it or select the metric file that computes it"
            )
        if not any(m in paper for m in methods):
            raise ConfigError(
                f"paper_reference column {column!r} names none of this run's methods "
                f"{methods} (it has {list(paper)}); set compare_with or rename the methods"
            )


def write_paper_comparison(
    out_dir: Path, results: Mapping[str, Mapping[str, Mapping[str, float]]], reference: Any
) -> dict[str, Any]:
    """Write ``paper_comparison.*`` into ``out_dir`` and return ``{column: {"kendall", "n"}}``.

    Args:
        results: method → column → ``{mean, ci_low, ci_high, ...}`` (a run's ``summary["test"]``).
        reference: ``{"source": str, "columns": {column: {method: paper value}}}``.

    Methods are the run's methods that the paper reports, in the run's order;
    τ (Kendall τ-b between our means and the paper's values over those
    methods) is NaN with fewer than two of them.
    """
    columns = reference_columns(reference)
    rows, taus = [], {}
    for column, paper in columns.items():
        methods = [m for m in results if m in paper and column in results[m]]
        if not methods and results:
            known = sorted({c for r in results.values() for c in r})
            raise ConfigError(
                f"paper_reference column {column!r} matches no evaluated method/column; "
                f"methods: {list(results)}, columns: {known[:12]}..."
            )
        ours = [results[m][column] for m in methods]
        tau = rank_agreement(
            torch.tensor([o["mean"] for o in ours], dtype=torch.float64),
            torch.tensor([float(paper[m]) for m in methods], dtype=torch.float64),
        )["kendall"]
        taus[column] = {"kendall": tau, "n": len(methods)}
        for m, o in zip(methods, ours, strict=True):
            half = (o["ci_high"] - o["ci_low"]) / 2 if not math.isnan(o["ci_low"]) else math.nan
            rows.append([column, m, o["mean"], half, float(paper[m]), o["mean"] - float(paper[m])])
        rows.append([column, "Kendall τ (ours vs paper)", tau, math.nan, math.nan, math.nan])
    header = ["column", "method", "ours", "ours_ci95_half", "paper", "ours_minus_paper"]
    write_table(out_dir, "paper_comparison", header, rows)
    (out_dir / "paper_comparison.md").write_text(
        f"Source: {reference.get('source', 'paper')}\n\n"
        + (out_dir / "paper_comparison.md").read_text()
    )
    return taus
