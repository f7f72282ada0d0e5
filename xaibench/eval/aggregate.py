"""Per-sample rows → summary statistics and tables (mean ± 95% bootstrap CI, NaN counts)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def bootstrap_ci(
    values: Tensor, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of finite ``values`` ``(n,)``; (nan, nan) if none."""
    v = values[torch.isfinite(values)].double()
    if v.numel() == 0:
        return math.nan, math.nan
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (n_boot, v.numel()), generator=g)
    means = v[idx].mean(1)
    lo, hi = torch.quantile(
        means, torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    )
    return float(lo), float(hi)


def summarize(columns: dict[str, Tensor], *, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{column: {mean, ci_low, ci_high, n, n_nan}}`` over finite values of each ``(n,)`` column."""
    out = {}
    for name, v in columns.items():
        v = v.double()
        finite = torch.isfinite(v)
        lo, hi = bootstrap_ci(v, seed=seed)
        out[name] = {
            "mean": float(v[finite].mean()) if finite.any() else math.nan,
            "ci_low": lo,
            "ci_high": hi,
            "n": int(finite.sum()),
            "n_nan": int((~finite).sum()),
        }
    return out


def write_per_sample(path: Path, index: Tensor, columns: dict[str, Tensor]) -> None:
    """``per_sample.csv``: column ``index`` first, one row per sample, sorted by index."""
    order = index.argsort()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", *columns])
        cols = [columns[k][order].tolist() for k in columns]
        for i, row in zip(index[order].tolist(), zip(*cols, strict=True), strict=True):
            w.writerow([i, *(f"{x:.6g}" for x in row)])


def _fmt(stats: dict[str, float]) -> str:
    if math.isnan(stats["mean"]):
        return "nan"
    ci = (stats["ci_high"] - stats["ci_low"]) / 2
    lost = f" ({stats['n_nan']} NaN)" if stats["n_nan"] else ""
    return f"{stats['mean']:.3f} ± {ci:.3f}{lost}"


def write_tables(
    out_dir: Path, rows: list[dict[str, Any]], columns: list[str], stem: str = "table"
) -> None:
    """``<stem>.md``, ``<stem>.csv`` and ``<stem>.tex``: one row per run (``rows[i]["name"]``
    + ``summary``), each column's mean ± half the 95% CI (NaN counts shown)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header = ["method", *columns]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    tex = [
        "\\begin{tabular}{l" + "r" * len(columns) + "}",
        " & ".join(h.replace("_", "\\_") for h in header) + " \\\\",
        "\\hline",
    ]
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["method", *(f"{c}{s}" for c in columns for s in ("", "_ci_low", "_ci_high", "_n_nan"))]
        )
        for r in rows:
            s = r["summary"]
            md.append(
                "| "
                + " | ".join([r["name"], *(_fmt(s[c]) if c in s else "—" for c in columns)])
                + " |"
            )
            tex.append(
                " & ".join(
                    [r["name"], *(f"{s[c]['mean']:.3f}" if c in s else "--" for c in columns)]
                )
                + " \\\\"
            )
            w.writerow(
                [
                    r["name"],
                    *(
                        f"{s[c][k]:.6g}" if c in s else ""
                        for c in columns
                        for k in ("mean", "ci_low", "ci_high", "n_nan")
                    ),
                ]
            )
    tex.append("\\end{tabular}")
    (out_dir / f"{stem}.md").write_text("\n".join(md) + "\n")
    (out_dir / f"{stem}.tex").write_text("\n".join(tex) + "\n")


def write_ranks(
    out: Path, rows: list[dict[str, Any]], columns: list[str]
) -> dict[str, dict[str, float]]:
    """``ranks.{md,csv,tex}``: each row's rank per column that has a better direction
    (``summary[c]["higher_is_better"]``; 1 = best, ties share the average rank, a NaN mean
    ranks last), the mean rank per metric entry (family) and over all; best first.

    Returns ``{row name: {column: rank}}``."""
    from scipy.stats import rankdata

    from xaibench.studies.common import write_table

    directed = {}
    for c in columns:
        info = next((r["summary"][c] for r in rows if c in r["summary"]), {})
        if info.get("higher_is_better") is not None:
            directed[c] = (bool(info["higher_is_better"]), info.get("entry", c))
    ranks: dict[str, dict[str, float]] = {r["name"]: {} for r in rows}
    for c, (higher, _) in directed.items():
        means = [r["summary"].get(c, {}).get("mean", math.nan) for r in rows]
        key = [(-m if higher else m) if math.isfinite(m) else math.inf for m in means]
        for r, rank in zip(rows, rankdata(key, method="average"), strict=True):
            ranks[r["name"]][c] = float(rank)
    families = list(dict.fromkeys(entry for _, entry in directed.values()))
    header = ["method", *(f"mean rank {f}" for f in families), "mean rank (all)"]
    table = []
    for name, by_col in ranks.items():
        fam = [
            sum(v for c, v in by_col.items() if directed[c][1] == f)
            / max(1, sum(1 for c in by_col if directed[c][1] == f))
            for f in families
        ]
        table.append([name, *fam, sum(by_col.values()) / max(1, len(by_col))])
    table.sort(key=lambda r: r[-1])
    write_table(out, "ranks", header, table, digits=2)
    return ranks
