"""What every study shares: rank agreement between two orderings and plain tables.

Tables are written as ``<stem>.md``, ``<stem>.csv`` and ``<stem>.tex`` (the same
three formats as an evaluation's ``table.*``), from a header and rows of
strings or numbers; floats are printed with ``digits`` decimals.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from scipy import stats
from torch import Tensor


def rank_agreement(a: Tensor, b: Tensor) -> dict[str, float]:
    """Kendall τ-b and Spearman ρ between two score vectors ``(n,)`` (NaN pairs dropped).

    Returns ``{"kendall": τ, "spearman": ρ}``; NaN when fewer than 2 finite pairs
    remain or one side is constant.
    """
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    keep = torch.isfinite(a) & torch.isfinite(b)
    a, b = a[keep].numpy(), b[keep].numpy()
    if len(a) < 2 or a.min() == a.max() or b.min() == b.max():
        return {"kendall": math.nan, "spearman": math.nan}
    return {
        "kendall": float(stats.kendalltau(a, b).statistic),
        "spearman": float(stats.spearmanr(a, b).statistic),
    }


def _cell(x: object, digits: int) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def write_table(
    out_dir: Path,
    stem: str,
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    digits: int = 3,
) -> None:
    """``<stem>.{md,csv,tex}`` in ``out_dir``: ``header`` then ``rows`` (same length each)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"row {list(r)} has {len(r)} cells for {len(header)} columns")
    cells = [[_cell(x, digits) for x in r] for r in rows]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in cells]
    (out_dir / f"{stem}.md").write_text("\n".join(md) + "\n")
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[x if not isinstance(x, float) else f"{x:.6g}" for x in r] for r in rows])
    esc = [[c.replace("_", "\\_").replace("%", "\\%") for c in r] for r in [list(header), *cells]]
    tex = ["\\begin{tabular}{l" + "r" * (len(header) - 1) + "}", " & ".join(esc[0]) + " \\\\"]
    tex += ["\\hline", *(" & ".join(r) + " \\\\" for r in esc[1:]), "\\end{tabular}"]
    (out_dir / f"{stem}.tex").write_text("\n".join(tex) + "\n")
