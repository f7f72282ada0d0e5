"""An evaluation's rows, merged from its shards and written as the run's files.

Rows are a plain dict (so ``torch.load(weights_only=True)`` reads a saved shard)::

    {"index": (n,) long,
     "columns": {column: (n,) float64},
     "info": {column: {"entry": str, "higher_is_better": bool | None}},
     "curves": {entry: {key: {"grid": str | None, "x": (K,), "values": (n, K)}}},
     "figure": {"images": (k, C, H, W), "heatmaps": (k, 1, H, W), "labels": (k,)} | None}

:func:`write_evaluation` turns merged rows into ``per_sample.csv``, ``metrics.json``,
``table.{md,csv,tex}``, ``figures/overlays.png`` and ``figures/curves.png``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from xaibench.eval.aggregate import summarize, write_per_sample, write_tables
from xaibench.eval.figures import save_curves, save_overlays

Rows = dict[str, Any]

GRIDS = {
    "alphas": ("Show / Hide", "threshold α (from α_min)"),
    "steps_value": ("value mode", "threshold α"),
    "steps_percent": ("percent mode", "fraction of pixels"),
    "steps": ("curves", "threshold α (value mode) or fraction of pixels (percent mode)"),
}
"""The 1-D grids metrics return beside their curves: key → (panel title, x-axis label)."""


def merge_rows(parts: Sequence[Rows]) -> Rows:
    """Concatenate shards' rows (in order); the figure is the first shard's that has one."""
    if not parts:
        raise ValueError("no rows to merge")
    first = parts[0]
    curves = {
        entry: {
            key: {**c, "values": torch.cat([p["curves"][entry][key]["values"] for p in parts])}
            for key, c in keys.items()
        }
        for entry, keys in first["curves"].items()
    }
    return {
        "index": torch.cat([p["index"] for p in parts]),
        "columns": {c: torch.cat([p["columns"][c] for p in parts]) for c in first["columns"]},
        "info": first["info"],
        "curves": curves,
        "figure": next((p["figure"] for p in parts if p.get("figure") is not None), None),
    }


def curve_panels(curves: dict[str, dict[str, dict[str, Any]]], names: dict[str, dict[str, str]]):
    """One panel per (entry, grid): Show/Hide over α, value- and percent-mode curves over
    their own steps, a curve without a grid over the fraction of its steps.

    ``names``: entry → key → the curve's label (see :func:`~xaibench.eval.callback.column_names`).
    """
    panels: dict[str, tuple[str, dict[str, tuple[Tensor, Tensor]]]] = {}
    for entry, keys in curves.items():
        for key, c in keys.items():
            family, xlabel = GRIDS.get(c["grid"], ("curves", "fraction of the perturbation steps"))
            panels.setdefault(f"{entry}: {family}", (xlabel, {}))[1][names[entry][key]] = (
                c["x"],
                c["values"],
            )
    return panels


def write_evaluation(out_dir: Path, method: str, rows: Rows, *, seed: int = 0) -> dict[str, Any]:
    """Write one method's evaluation files into ``out_dir``; returns its column summary
    ``{column: {mean, ci_low, ci_high, n, n_nan, entry, higher_is_better}}``."""
    from xaibench.eval.callback import column_names

    summary = summarize(rows["columns"], seed=seed)
    for column, info in rows["info"].items():
        summary[column].update(info)
    write_per_sample(out_dir / "per_sample.csv", rows["index"], rows["columns"])
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_tables(out_dir, [{"name": method, "summary": summary}], list(rows["columns"]))
    fig = rows.get("figure")
    if fig is not None:
        save_overlays(
            out_dir / "figures" / "overlays.png",
            fig["images"],
            {method: fig["heatmaps"]},
            fig["labels"],
        )
    if any(rows["curves"].values()):
        names = column_names({e: list(keys) for e, keys in rows["curves"].items()})
        save_curves(out_dir / "figures" / "curves.png", curve_panels(rows["curves"], names))
    return summary
