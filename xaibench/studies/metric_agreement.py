"""Does MSI agree with ground truth? Rank agreement of faithfulness scores with localization.

The question the LAX paper leaves open (issue 17, item 6). On data with
ground-truth regions (synthetic_digits' digit masks; CUB-200's boxes when its
files are present) every method of the run (``explainer`` plus
``compare_with``, each composed from its YAML; a learned one is trained with
the run's settings, or loaded from ``study.weights``) explains the same
``n_images`` test images, and the run's metric entries score every map:
MSI with and without QGE, insertion / deletion, pixel flipping and the
localization metrics. Then, for every faithfulness score ``s`` and
localization metric ``l``:

* **per sample**: Kendall τ-b and Spearman ρ between ``s`` and ``l`` across the
  methods, on each image, averaged over the images where both vary;
* **per method**: τ and ρ between the methods' means of ``s`` and of ``l``
  (one point per method), with the ρ's two-sided p-value (scipy).

Scores are oriented so that higher is better (a lower-is-better key such as
``deletion_value`` enters negated, named ``-deletion_value``), so a positive
correlation always means "the score and the ground truth agree". Sanity
baselines (``study.baselines``: ``random``, ``center``) are evaluated and shown
but left out of the correlations unless ``study.correlate_baselines``.

Writes ``agreement.{md,csv,tex}``, ``agreement_methods.{md,csv,tex}`` (every
column's mean per method), ``agreement_per_sample.csv`` and
``figures/agreement_scatter.png`` (method means: each score in ``scatter.y``
against ``scatter.x``, labelled points).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from scipy import stats
from torch import Tensor
from tqdm.auto import tqdm

from xaibench.build import build_explainer, explainer_configs
from xaibench.errors import ConfigError
from xaibench.eval.callback import column_names
from xaibench.pipeline import prepare_explainer
from xaibench.studies.common import rank_agreement, write_table
from xaibench.studies.qge_images import (
    StudyData,
    call_entry,
    resolve_device,
    study_datasets,
    study_metrics,
    test_tensors,
)

log = logging.getLogger(__name__)


# -- the correlation bookkeeping ----------------------------------------------------------------
def per_sample_agreement(score: Tensor, truth: Tensor) -> dict[str, float]:
    """Mean over samples of τ and ρ across methods.

    Args:
        score, truth: ``(M, n)``: method ``m``'s value on sample ``j``.

    Returns:
        ``{"kendall", "spearman"}`` averaged over the samples where both are defined
        (≥ 2 finite methods, neither constant), and ``"n"``: how many samples that is.
    """
    per = [rank_agreement(score[:, j], truth[:, j]) for j in range(score.shape[1])]
    out: dict[str, float] = {}
    for key in ("kendall", "spearman"):
        vals = [a[key] for a in per if math.isfinite(a[key])]
        out[key] = sum(vals) / len(vals) if vals else math.nan
    out["n"] = sum(math.isfinite(a["kendall"]) for a in per)
    return out


def per_method_agreement(score: Tensor, truth: Tensor) -> dict[str, float]:
    """τ and ρ between the methods' means (NaN samples skipped) of ``score`` and ``truth``
    ``(M, n)``, the ρ's p-value and ``"n"``: how many methods have both means."""
    a, b = score.double().nanmean(dim=1), truth.double().nanmean(dim=1)
    out: dict[str, float] = dict(rank_agreement(a, b))
    keep = torch.isfinite(a) & torch.isfinite(b)
    out["n"] = int(keep.sum())
    p = math.nan
    if math.isfinite(out["spearman"]):
        p = float(stats.spearmanr(a[keep].numpy(), b[keep].numpy()).pvalue)
    out["p_spearman"] = p
    return out


def oriented(
    values: dict[str, Tensor], name: str, directions: Mapping[str, bool | None]
) -> tuple[str, Tensor]:
    """Column ``name`` so that higher is better: ``(label, (M, n))``; a lower-is-better
    column is negated and labelled ``-name``."""
    if name not in values:
        raise ConfigError(
            f"study column {name!r} is not a per-sample column of this run's metric entries; "
            f"columns: {sorted(values)}"
        )
    if directions.get(name) is False:
        return f"-{name}", -values[name]
    return name, values[name]


def agreement_rows(
    values: dict[str, Tensor],
    directions: Mapping[str, bool | None],
    scores: Sequence[str],
    truths: Sequence[str],
) -> list[dict[str, Any]]:
    """One row per (score, localization metric): per-sample and per-method agreement.

    Args:
        values: column → ``(M, n)`` over the correlated methods.
        directions: column → higher is better (None: no direction).
    """
    rows = []
    for s in scores:
        s_label, sv = oriented(values, s, directions)
        for t in truths:
            t_label, tv = oriented(values, t, directions)
            ps, pm = per_sample_agreement(sv, tv), per_method_agreement(sv, tv)
            rows.append(
                {
                    "score": s_label, "truth": t_label,
                    "sample_tau": ps["kendall"], "sample_rho": ps["spearman"], "samples": ps["n"],
                    "method_tau": pm["kendall"], "method_rho": pm["spearman"],
                    "method_p": pm["p_spearman"], "methods": pm["n"],
                }
            )  # fmt: skip
    return rows


# -- explaining and scoring ----------------------------------------------------------------------------
def method_config(cfg: DictConfig, node: DictConfig, overrides: Mapping[str, Any]) -> DictConfig:
    """The run's config for one method: ``explainer`` = its node (so what reads the explainer's
    settings, such as the checkpoint and early-stopping callbacks' ``monitor``, reads its
    own), then ``overrides`` merged in (``{explainer: {max_epochs: 1}, trainer: {...}}``)."""
    out = cfg.copy()
    with open_dict(out):
        out.explainer = node
        out.merge_with(OmegaConf.create(dict(overrides)))
    return out


def study_explainers(
    data: StudyData,
    out_dir: Path,
    overrides: Mapping[str, Mapping[str, Any]],
    weights: Mapping[str, str | None],
) -> dict[str, Any]:
    """The run's explainers (``explainer`` + ``compare_with``, from their YAMLs), each with its
    ``overrides[name]`` merged into the run config; a learned one is trained (its files
    under ``out_dir/explainers/<name>/``) or loaded from ``weights[name]``. Overrides and
    weights of methods that are not in the run are not used (``compare_with`` may narrow it)."""
    nodes = explainer_configs(data.cfg)
    if not nodes:
        raise ConfigError(
            "metric_agreement needs explainers: set explainer= and compare_with=[...]"
        )
    built = {}
    for name, node in nodes.items():
        c = method_config(data.cfg, node, dict(overrides.get(name) or {}))
        explainer = build_explainer(c.explainer, name)
        ckpt = weights.get(name)
        start = time.perf_counter()
        record = prepare_explainer(
            explainer, name, c, data.dm, data.net, out_dir / "explainers" / name,
            train=not ckpt, ckpt_path=ckpt,
        )  # fmt: skip
        data.net.to(data.device)  # a training loop may have moved it
        if record is not None:
            verb = "loaded" if ckpt else "trained"
            log.info("%s: %s in %.0f s", name, verb, time.perf_counter() - start)
        built[name] = explainer
    return built


def score_methods(
    data: StudyData,
    explainers: Mapping[str, Any],
    entries: Mapping[str, Any],
    n_images: int,
    batch_size: int,
) -> tuple[dict[str, dict[str, Tensor]], dict[str, bool | None], dict[str, float], Tensor]:
    """Every method's heatmaps on the first ``n_images`` test images, scored by every entry.

    Returns:
        ``method → column → (n,)``, ``column → direction``, ``method → seconds``
        (explaining + scoring) and the images' dataset indices ``(n,)``.
    """
    t = test_tensors(data.dm, n_images)
    if t["masks"] is None:
        raise ConfigError(
            f"dataset {data.name} has no ground-truth masks: metric_agreement needs them "
            "(synthetic_digits, synthetic_mnist, cub200)"
        )
    names = column_names({e: spec.keys for e, (_, spec) in entries.items()})
    directions = {
        names[e][k]: spec.directions[k] for e, (_, spec) in entries.items() for k in spec.keys
    }
    values: dict[str, dict[str, Tensor]] = {}
    seconds: dict[str, float] = {}
    n = len(t["labels"])
    for method, explainer in tqdm(explainers.items(), desc=f"{data.name} methods", disable=None):
        start = time.perf_counter()
        cols: dict[str, list[Tensor]] = {}
        for lo in range(0, n, batch_size):
            sl = slice(lo, lo + batch_size)
            x, y = t["images"][sl].to(data.device), t["labels"][sl].to(data.device)
            heat = explainer(data.net, x, y).detach()
            for entry, (fn, spec) in entries.items():
                res = call_entry(
                    fn, spec, data.net, x, heat, y,
                    index=t["index"][sl].to(data.device), masks=t["masks"][sl].to(data.device),
                )  # fmt: skip
                for k, v in res.items():
                    cols.setdefault(names[entry][k], []).append(v)
        values[method] = {c: torch.cat(v) for c, v in cols.items()}
        seconds[method] = round(time.perf_counter() - start, 1)
        log.info("%s: %s explained and scored in %.0f s", data.name, method, seconds[method])
    return values, directions, seconds, t["index"]


# -- outputs ----------------------------------------------------------------------------------------------
def plot_scatter(
    path: Path,
    means: Mapping[str, Mapping[str, float]],
    x: str,
    ys: Sequence[str],
    baselines: Sequence[str],
    title: str,
) -> None:
    """Method means: one panel per ``y`` column against the ``x`` column, each point labelled
    with its method (sanity baselines in grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ys), figsize=(5.2 * len(ys), 4.4), squeeze=False)
    for ax, y in zip(axes[0], ys, strict=True):
        for method, m in means.items():
            base = method in baselines
            ax.scatter(m[x], m[y], s=18, color="0.6" if base else "C0", zorder=2)
            ax.annotate(method, (m[x], m[y]), fontsize=6, xytext=(2, 2),
                        textcoords="offset points", color="0.5" if base else "k")  # fmt: skip
        ax.set_xlabel(f"{x} (method mean)", fontsize=9)
        ax.set_ylabel(f"{y} (method mean)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def method_means(values: Mapping[str, Mapping[str, Tensor]]) -> dict[str, dict[str, float]]:
    """``method → column → mean over samples`` (NaN skipped)."""
    return {
        m: {c: float(v.double().nanmean()) for c, v in cols.items()} for m, cols in values.items()
    }


# -- the study -----------------------------------------------------------------------------------------------
def run(
    cfg: DictConfig,
    *,
    datasets: Mapping[str, Any],
    scores: Sequence[str],
    truths: Sequence[str],
    metrics: Sequence[str] | None = None,
    baselines: Sequence[str] = ("random", "center"),
    correlate_baselines: bool = False,
    method_overrides: Mapping[str, Any] | None = None,
    weights: Mapping[str, str | None] | None = None,
    n_images: int = 64,
    batch_size: int = 32,
    scatter: Mapping[str, Any] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """The agreement study; see the module docstring. Writes into ``cfg.paths.output_dir``.

    Args:
        cfg: the run's config (``explainer``, ``compare_with``, ``metric`` entries, seed, paths).
        datasets: dataset config name → ``{overrides: {dotted key: value}}``.
        scores: faithfulness columns to correlate (``msi``, ``qge_msi``, ``deletion_value``, ...).
        truths: localization columns (``pointing_game``, ``relevance_mass``, ...).
        metrics: the run's metric entries to compute (None: all).
        baselines: methods shown but not correlated (unless ``correlate_baselines``).
        method_overrides: method → run-config values merged in for it (``{explainer:
            {max_epochs: 1}, trainer: {limit_train_batches: 16}}``), ``explainer`` being its YAML.
        weights: method → weights file of a learned explainer (``None``: train it).
        n_images: test images (the first ones of the split).
        batch_size: images per explainer call and metric call.
        scatter: ``{x: localization column, y: [score columns]}`` of the figure.
        device: ``auto``, ``cpu`` or ``cuda``.
    """
    out_dir = Path(cfg.paths.output_dir)
    dev = resolve_device(device)
    scatter = dict(scatter or {"x": truths[0], "y": list(scores[:2])})
    info: dict[str, Any] = {}
    summary_rows: list[dict[str, Any]] = []
    for data in study_datasets(cfg, datasets, dev):
        if isinstance(data, tuple):
            info[data[0]] = data[1]
            continue
        start = time.perf_counter()
        with open_dict(data.cfg):
            data.cfg.paths.output_dir = str(out_dir / data.name)
        explainers = study_explainers(
            data, out_dir / data.name, dict(method_overrides or {}), dict(weights or {})
        )
        entries = study_metrics(data.cfg, metrics)
        values, directions, seconds, index = score_methods(
            data, explainers, entries, n_images, batch_size
        )
        kept = [m for m in values if correlate_baselines or m not in baselines]
        if len(kept) < 3:
            raise ConfigError(f"metric_agreement needs >= 3 correlated methods, got {kept}")
        stacked = {c: torch.stack([values[m][c] for m in kept]) for c in values[kept[0]]}
        found = agreement_rows(stacked, directions, scores, truths)
        summary_rows += [{"dataset": data.name, **r} for r in found]
        means = method_means(values)
        suffix = f"_{data.name}" if any("seconds" in v for v in info.values()) else ""
        write_method_tables(out_dir, suffix, means, values, index)
        plot_scatter(
            out_dir / "figures" / f"agreement_scatter{suffix}.png",
            means, scatter["x"], list(scatter["y"]), baselines,
            f"{data.name}: method means over {len(index)} test images",
        )  # fmt: skip
        info[data.name] = {
            "seconds": round(time.perf_counter() - start, 1),
            "methods": list(values),
            "correlated": kept,
            "seconds_per_method": seconds,
            "images": len(index),
        }
    header = ["dataset", "score", "truth", "per-sample tau", "per-sample rho", "samples",
              "per-method tau", "per-method rho", "p (rho)", "methods"]  # fmt: skip
    keys = ["dataset", "score", "truth", "sample_tau", "sample_rho", "samples",
            "method_tau", "method_rho", "method_p", "methods"]  # fmt: skip
    rows = [[r[k] for k in keys] for r in summary_rows]
    if rows:
        write_table(out_dir, "agreement", header, rows)
    for r in summary_rows:
        if r["score"] in scores[:2]:  # MSI and its QGE in the log; the table has every row
            log.info(
                "%s %s vs %s: per-sample tau %.3f (%d images), per-method tau %.3f rho %.3f",
                r["dataset"], r["score"], r["truth"], r["sample_tau"], r["samples"],
                r["method_tau"], r["method_rho"],
            )  # fmt: skip
    return {"datasets": info, "agreement": summary_rows}


def write_method_tables(
    out_dir: Path,
    suffix: str,
    means: Mapping[str, Mapping[str, float]],
    values: Mapping[str, Mapping[str, Tensor]],
    index: Tensor,
) -> None:
    """``agreement_methods<suffix>.{md,csv,tex}`` (column means per method) and
    ``agreement_per_sample<suffix>.csv`` (one row per method and image)."""
    columns = list(next(iter(means.values())))
    write_table(
        out_dir, f"agreement_methods{suffix}", ["method", *columns],
        [[m, *(row[c] for c in columns)] for m, row in means.items()],
    )  # fmt: skip
    with open(out_dir / f"agreement_per_sample{suffix}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "index", *columns])
        for m, cols in values.items():
            for j, i in enumerate(index.tolist()):
                w.writerow([m, int(i), *(f"{float(cols[c][j]):.6g}" for c in columns)])
