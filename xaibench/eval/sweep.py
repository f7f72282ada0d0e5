"""One table for a whole multirun, built from each job's files when the sweep ends.

``python train.py -m explainer=gradcam,gradcampp,layercam`` runs one job per
point; :class:`SweepTables` (a Hydra callback, ``configs/hydra/default.yaml``)
then reads every ``<sweep dir>/<job>/summary.json`` and writes, in the sweep
directory:

- ``table.{md,csv,tex}``: one row per method and setting; when the sweep
  varies ``seed``, the jobs that differ only in their seed are one row
  (mean over seeds ± 95% t-interval of the seed means, ``n`` = seeds);
- ``table_jobs.{md,csv,tex}``: one row per job and method (bootstrap CIs);
- ``ranks.{md,csv,tex}``: each row's rank per column with a better direction
  (1 = best) and the mean rank per metric entry (family);
- ``per_sample.csv``: every job's rows keyed by ``job``, ``method``, ``index``;
- ``sweep.json``: the jobs read, their labels and timings, and the jobs
  without a summary (failed or still running).

It reads only files, so it also works when the jobs ran elsewhere (a
submitit launcher on a cluster) as long as the sweep directory is shared;
``python -m xaibench.eval.sweep <sweep dir>`` reruns it by hand.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from xaibench.eval.aggregate import write_ranks, write_tables

log = logging.getLogger(__name__)

try:  # Hydra's callback base class (hydra-core >= 1.1)
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[assignment,misc]


class SweepTables(Callback):
    """Hydra callback: :func:`aggregate_sweep` on the sweep directory when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        aggregate_sweep(Path(config.hydra.sweep.dir))


def _jobs(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every job folder's summary and overrides; the folders without a summary."""
    jobs, missing = [], []
    folders = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    for folder in sorted(folders, key=lambda p: (len(p.name), p.name)):
        summary = folder / "summary.json"
        if not summary.exists():
            missing.append(folder.name)
            continue
        overrides = folder / ".hydra" / "overrides.yaml"
        ovr = list(OmegaConf.load(overrides)) if overrides.exists() else []
        jobs.append(
            {
                "job": folder.name,
                "dir": folder,
                "summary": json.loads(summary.read_text()),
                "overrides": [str(o) for o in ovr],
            }
        )
    return jobs, missing


def _labels(jobs: list[dict[str, Any]]) -> None:
    """``job["setting"]``: the overrides that differ between jobs, seed and explainer aside."""
    common = set.intersection(*(set(j["overrides"]) for j in jobs)) if jobs else set()
    for j in jobs:
        varying = [o for o in j["overrides"] if o not in common]
        j["setting"] = " ".join(
            o for o in varying if not o.startswith(("seed=", "explainer=", "compare_with="))
        )
        j["seed"] = j["summary"].get("seed")


def _seed_stats(means: list[float]) -> dict[str, float]:
    """Mean of per-seed means with a 95% t-interval (NaN half-width for one seed)."""
    from scipy import stats

    v = torch.tensor([m for m in means if math.isfinite(m)], dtype=torch.float64)
    if len(v) == 0:
        return {
            "mean": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "n": 0,
            "n_nan": len(means),
        }
    mean = float(v.mean())
    half = (
        float(stats.t.ppf(0.975, len(v) - 1) * v.std() / math.sqrt(len(v)))
        if len(v) > 1
        else math.nan
    )
    return {
        "mean": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "n": len(v),
        "n_nan": len(means) - len(v),
    }


def _rows(jobs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per job × method, one row per method × setting aggregated over seeds)."""
    per_job, groups = [], defaultdict(list)
    for j in jobs:
        for method, stats in (j["summary"].get("test") or {}).items():
            name = f"{method} [{j['setting']}]" if j["setting"] else method
            seeds = len({k["seed"] for k in jobs}) > 1
            per_job.append(
                {"name": f"{name} (seed {j['seed']})" if seeds else name, "summary": stats}
            )
            groups[name].append(stats)
    merged = []
    for name, runs in groups.items():
        if len(runs) == 1:
            merged.append({"name": name, "summary": runs[0]})
            continue
        columns = dict.fromkeys(c for r in runs for c in r)
        merged.append(
            {
                "name": f"{name} ({len(runs)} seeds)",
                "summary": {
                    c: {
                        **_seed_stats([r[c]["mean"] for r in runs if c in r]),
                        **{
                            k: runs[0][c][k]
                            for k in ("entry", "higher_is_better")
                            if k in runs[0][c]
                        },
                    }
                    for c in columns
                },
            }
        )
    return per_job, merged


def _column_order(jobs: list[dict[str, Any]]) -> list[str]:
    """The columns in a job's own ``per_sample.csv`` order (``summary.json`` sorts its keys)."""
    for j in jobs:
        path = j["dir"] / "per_sample.csv"
        if path.exists():
            with open(path) as f:
                return next(csv.reader(f))[1:]
    return []


def _per_sample(out: Path, jobs: list[dict[str, Any]]) -> int:
    """``per_sample.csv`` of the sweep: ``job, method, seed, index`` then the union of columns."""
    frames = []
    for j in jobs:
        methods = list(j["summary"].get("test") or {})
        for i, method in enumerate(methods):
            path = j["dir"] / ("" if i == 0 else f"compare/{method}") / "per_sample.csv"
            if path.exists():
                with open(path) as f:
                    frames += [
                        {"job": j["job"], "method": method, "seed": j["seed"], **r}
                        for r in csv.DictReader(f)
                    ]
    columns = list(dict.fromkeys(k for r in frames for k in r))
    with open(out / "per_sample.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows(frames)
    return len(frames)


def aggregate_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    """Write the sweep's tables (see the module docstring); returns what ``sweep.json`` holds."""
    out = Path(sweep_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"no sweep directory {out}")
    jobs, missing = _jobs(out)
    if missing:
        log.warning(
            "sweep %s: no summary.json in job(s) %s (failed or still running)", out, missing
        )
    _labels(jobs)
    record: dict[str, Any] = {
        "sweep_dir": str(out),
        "jobs": [
            {
                "job": j["job"],
                "overrides": j["overrides"],
                "seed": j["seed"],
                "timing": j["summary"].get("timing"),
            }
            for j in jobs
        ],
        "missing": missing,
    }
    per_job, merged = _rows(jobs)
    if per_job:
        columns = list(
            dict.fromkeys([*_column_order(jobs), *(c for r in per_job for c in r["summary"])])
        )
        write_tables(out, merged, columns)
        write_tables(out, per_job, columns, stem="table_jobs")
        record["ranks"] = write_ranks(out, merged, columns)
        record["per_sample_rows"] = _per_sample(out, jobs)
        log.info("sweep table (%d jobs, %d rows) -> %s", len(jobs), len(merged), out / "table.md")
    (out / "sweep.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m xaibench.eval.sweep <sweep dir>")
    aggregate_sweep(sys.argv[1])
