"""QGE on images (QGE paper §4.1b, Tables 1, 3, 4): does ``Q(e) - Q(inverse e)`` keep Q's order?

For each of ``n_inputs`` test images (correctly classified, in test-split
order) ``N`` random superpixel-level explanations are drawn, constant on each
``s×s`` square: by default a uniformly random ranking of the ``S`` squares, the
square of descending rank ``r`` holding ``1 - r / (S - 1)`` (``values: uniform``:
i.i.d. U[0, 1) per square). Every metric entry (a configured, registered
metric) scores each explanation and its inverse
(:func:`xaibench.metrics.qge.inverse`, which keeps a superpixel map piecewise
constant with the squares' order reversed). Then, per input and across its
``N`` explanations:

* ``QGE(e) = Q(e) - Q(inverse e)`` (paper eq. 5);
* ``random-K(e) = Q(e) - mean_K Q(r_k)`` (eq. 7), the ``r_k`` drawn without
  replacement from the *other* explanations of the same input. They are i.i.d.
  random explanations (with ``ranks``, all with the same values, so a pool
  member is distributed exactly as a random permutation of ``e``), and random-K
  costs no metric call beyond the ``2N`` that QGE needs;
* Kendall τ-b and Spearman ρ between each transform and ``Q``
  (:func:`xaibench.studies.common.rank_agreement`).

τ and ρ are averaged over inputs; the gain is ``τ_QGE - τ_random-K`` per
input, averaged (Table 1 reports it against one random sample, ``K = 1``).
A random metric is given the input's dataset index for all its rows, so its
draws (subsets, baselines) are the same for every explanation of that input:
``Q`` is one fixed function of ``e`` per input (``shared_draws: false`` redraws
for every explanation and inverse, as separate Quantus calls would).

``values: ranks`` is the paper's generator for Table 1 (its code's "chunky" random
rankings, rank / (S - 1) per square). With it ``inverse(e) = 1 - e``, so a metric
that is a correlation between attribution sums and score changes on subsets that do
not depend on ``e`` (faithfulness_correlation with shared draws,
faithfulness_estimate's single-chunk drops, monotonicity_correlation) or is linear
in ``e`` (relevance_mass) gets ``Q(inverse e) = -Q(e)`` or ``c - Q(e)``: QGE is a
monotone function of Q and its τ is 1 by construction, not by estimation. The
paper's ~0.5 gains for relevance mass / attribution localisation / AUC (Table 4)
are this case; ``values: uniform`` and ``shared_draws: false`` give the
non-degenerate variant (except for monotonicity_correlation with a deterministic
baseline: a Spearman correlation against per-chunk changes that do not depend on
``e``, negated exactly by any order reversal).

Writes ``qge_images.{md,csv,tex}`` (one row per dataset and metric key),
``qge_images_per_input.{md,csv,tex}`` and ``figures/tau_vs_k.png``.
The dataset/loader helpers here (:func:`study_datasets`, :func:`call_entry`)
are shared with :mod:`xaibench.studies.metric_agreement`.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn
from tqdm.auto import tqdm

from xaibench.build import build_datamodule, build_metrics, config_dir
from xaibench.data import XaiDataModule
from xaibench.data.errors import DatasetNotFoundError
from xaibench.errors import ConfigError, DataError
from xaibench.metrics.qge import inverse
from xaibench.metrics.registry import EntrySpec, MetricFn, entry_spec
from xaibench.metrics.seeding import sample_generator
from xaibench.pipeline import base_classifier
from xaibench.studies.common import rank_agreement, write_table

log = logging.getLogger(__name__)


# -- datasets of a study ---------------------------------------------------------------------
@dataclass
class StudyData:
    """One dataset of a study: its config (the run's, with that dataset), datamodule, classifier.

    Attributes:
        name: the dataset config's name (``synthetic_digits``, ``cifar10``).
        cfg: the run's config with ``dataset`` (and the given overrides) replaced.
        dm: the datamodule, set up.
        net: the frozen base classifier on ``device``.
        device: where the model and the tensors go.
        params: the study's per-dataset settings (e.g. ``superpixel``).
    """

    name: str
    cfg: DictConfig
    dm: XaiDataModule
    net: nn.Module
    device: torch.device
    params: dict[str, Any]


def resolve_device(device: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"study.device={device!r}: {e}; use auto, cpu or cuda") from e


def dataset_config(cfg: DictConfig, name: str, overrides: Mapping[str, Any]) -> DictConfig:
    """The run's config with ``dataset`` = ``configs/dataset/<name>.yaml`` (the run's own
    dataset node when ``name`` is the run's dataset) and dotted ``overrides`` applied
    (e.g. ``{"model.net.stem": "cifar"}``)."""
    out = cfg.copy()
    with open_dict(out):
        if name != cfg.dataset.get("name"):
            path = config_dir() / "dataset" / f"{name}.yaml"
            if not path.is_file():
                known = sorted(p.stem for p in path.parent.glob("*.yaml"))
                raise ConfigError(f"study.datasets: no dataset config {path}; known: {known}")
            out.dataset = OmegaConf.load(path)
        for key, value in overrides.items():
            OmegaConf.update(out, str(key), value, merge=True)
    return out


def study_datasets(
    cfg: DictConfig, datasets: Mapping[str, Any], device: torch.device
) -> Iterator[StudyData | tuple[str, str]]:
    """Each configured dataset, set up with its (cached or trained) base classifier.

    Args:
        datasets: dataset config name → its settings; the key ``overrides`` (dotted
            config keys → values) is applied to the run's config, the rest is
            handed on as :attr:`StudyData.params`.

    Yields:
        :class:`StudyData`, or ``(name, reason)`` for a dataset whose files are absent
        (logged and skipped: e.g. CIFAR-10 or CUB when not under ``paths.data_dir``).
    """
    for name, settings in datasets.items():
        settings = dict(settings or {})
        c = dataset_config(cfg, str(name), dict(settings.pop("overrides", None) or {}))
        dm = build_datamodule(c)
        try:
            dm.setup()
        except DatasetNotFoundError as e:
            log.warning("dataset %s skipped: its files are not there (%s)", name, e)
            yield str(name), f"skipped: {e}"
            continue
        net, info = base_classifier(c, dm)
        log.info(
            "%s: base classifier test accuracy %.4f (%s)", name, info["test_acc"], info["path"]
        )
        yield StudyData(str(name), c, dm, net.to(device), device, settings)


def test_tensors(dm: XaiDataModule, n: int | None = None) -> dict[str, Tensor | None]:
    """The first ``n`` test samples (all if None) stacked: ``images (n,C,H,W)``, ``labels (n,)``,
    ``index (n,)``, ``masks (n,1,H,W)`` bool or None."""
    split = dm.splits["test"]
    n = len(split) if n is None else min(int(n), len(split))
    items = [split[i] for i in range(n)]
    fields = [torch.stack([torch.as_tensor(it[j]) for it in items]) for j in range(len(items[0]))]
    masks = fields[3].bool() if len(fields) > 3 else None
    return {"images": fields[0], "labels": fields[1], "index": fields[2], "masks": masks}


# -- metric entries ---------------------------------------------------------------------------
def call_entry(
    fn: MetricFn,
    spec: EntrySpec,
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    index: Tensor,
    masks: Tensor | None,
) -> dict[str, Tensor]:
    """One entry's per-sample keys ``{key: (n,)}``, called with exactly the inputs it declares.

    Args:
        images ``(n,C,H,W)``, heatmaps ``(n,1,H,W)`` in [0,1], targets ``(n,)``: one row each.
        index: ``(n,)`` dataset indices (seeds of a random metric's draws).
        masks: ``(n,1,H,W)`` bool ground truth (a localization entry needs them).
    """
    kw: dict[str, Tensor] = {}
    if "indices" in spec.needs:
        kw["indices"] = index
    if "masks" in spec.needs:
        if masks is None:
            raise ConfigError(
                f"metric {spec.name!r} needs ground-truth masks; this dataset has none"
            )
        kw["masks"] = masks
    out = fn(model, images, heatmaps, targets, **kw)
    return {k: out[k].detach().double().cpu() for k in spec.keys}


def study_metrics(
    cfg: DictConfig,
    names: Sequence[str] | None,
    *,
    fixed: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, tuple[MetricFn, EntrySpec]]:
    """The run's metric entries (``cfg.metric``, built by :func:`xaibench.build.build_metrics`)
    named in ``names`` (all when None), each with ``fixed`` keywords bound; with their specs."""
    built, fixed = build_metrics(cfg), fixed or {}
    names = list(built) if names is None else [str(n) for n in names]
    missing = [n for n in [*names, *fixed] if n not in built]
    if missing:
        raise ConfigError(
            f"study.metrics names {missing}, which are not metric entries of this run; "
            f"entries: {sorted(built)} (add them under `metric:` in the experiment)"
        )
    out = {}
    for n in names:
        fn = functools.partial(built[n], **fixed[n]) if n in fixed else built[n]
        out[n] = (fn, entry_spec(fn))
    return out


# -- the explanations and transforms -----------------------------------------------------------
def superpixel_explanations(
    n: int, image_size: int, size: int, *, generator: torch.Generator, values: str = "ranks"
) -> Tensor:
    """``n`` random superpixel-level explanations ``(n, 1, H, W)`` in [0, 1] (``H = image_size``).

    Constant on each square of side ``size`` px. ``values="ranks"``: a uniformly
    random ranking of the ``S = (H / size)²`` squares, the square of descending
    rank ``r`` holding ``1 - r / (S - 1)`` (every explanation has the same values;
    its inverse is ``1 - e``). ``"uniform"``: i.i.d. U[0, 1) per square (random
    attributions; the inverse then reverses the order but is not ``1 - e``).
    """
    if size < 1 or image_size % size:
        raise ConfigError(
            f"study superpixel={size} must divide the image size {image_size} "
            f"(e.g. {next(s for s in (8, 4, 2, 1) if image_size % s == 0)})"
        )
    g = image_size // size
    if g * g < 2:
        raise ConfigError(f"study superpixel={size} leaves one square on {image_size} px")
    u = torch.rand(n, g * g, generator=generator)
    if values == "ranks":
        u = u.argsort(dim=1).to(torch.float32) / (g * g - 1)  # a random permutation of the ranks
    elif values != "uniform":
        raise ConfigError(f"study.values={values!r}: use ranks or uniform")
    grid = u.view(n, 1, g, g)  # square (i, j) is position i*g + j
    return grid.repeat_interleave(size, dim=2).repeat_interleave(size, dim=3)


def pool_random_means(q: Tensor, ks: Sequence[int], *, generator: torch.Generator) -> Tensor:
    """``mean_K Q(r_k)`` for each explanation and ``K``: ``(len(ks), N)``.

    Explanation ``i``'s ``r_1..r_K`` are distinct explanations other than ``i``,
    drawn uniformly from the pool ``q (N,)``; a larger ``K`` extends the same
    draws. NaN values of the pool are skipped (all NaN: NaN).
    """
    n, kmax = q.shape[0], max(ks)
    if kmax > n - 1:
        raise ConfigError(f"study.ks: K={kmax} needs at least {kmax + 1} explanations per input")
    r = torch.rand(n, n, generator=generator, dtype=torch.float64)
    r.fill_diagonal_(2.0)  # explanation i itself sorts last and is never drawn
    drawn = q[r.argsort(dim=1)[:, :kmax]]  # (N, K_max): distinct others, random order
    return torch.stack([drawn[:, :k].nanmean(dim=1) for k in ks])


def input_agreement(
    q: Tensor, q_inv: Tensor, ks: Sequence[int], *, generator: torch.Generator
) -> dict[str, float]:
    """τ and ρ of QGE and of each random-K transform against ``Q``, for one input.

    Args:
        q, q_inv: ``(N,)`` ``Q(e_i)`` and ``Q(inverse e_i)``.

    Returns:
        ``{"tau_qge", "rho_qge", "tau_k<K>", "rho_k<K>", ...}``.
    """
    out = {}
    a = rank_agreement(q - q_inv, q)
    out["tau_qge"], out["rho_qge"] = a["kendall"], a["spearman"]
    for k, mean in zip(ks, pool_random_means(q, ks, generator=generator), strict=True):
        a = rank_agreement(q - mean, q)
        out[f"tau_k{k}"], out[f"rho_k{k}"] = a["kendall"], a["spearman"]
    return out


# -- one dataset --------------------------------------------------------------------------------
def pick_inputs(
    data: StudyData, n_inputs: int, batch_size: int, *, correct_only: bool = True
) -> dict[str, Tensor | None]:
    """The first ``n_inputs`` test samples (with ``correct_only``: that the classifier gets right)."""
    t = test_tensors(data.dm)
    if not correct_only:
        return {k: None if v is None else v[:n_inputs] for k, v in t.items()}
    with torch.inference_mode():
        pred = torch.cat(
            [
                data.net(t["images"][i : i + batch_size].to(data.device)).argmax(1).cpu()
                for i in range(0, len(t["labels"]), batch_size)
            ]
        )
    keep = (pred == t["labels"]).nonzero().flatten()[:n_inputs]
    if len(keep) == 0:
        raise DataError(
            f"{data.name}: the classifier gets no test image right; set study.correct_only=false"
        )
    if len(keep) < n_inputs:
        log.warning("%s: only %d correctly classified test inputs", data.name, len(keep))
    return {k: None if v is None else v[keep] for k, v in t.items()}


def score_explanations(
    data: StudyData,
    entries: Mapping[str, tuple[MetricFn, EntrySpec]],
    inputs: Mapping[str, Tensor | None],
    explanations: Tensor,
    rows_per_call: int,
    *,
    shared_draws: bool = True,
) -> dict[tuple[str, str], Tensor]:
    """``Q`` of every explanation and its inverse under every entry.

    Args:
        explanations: ``(I, N, 1, H, W)``, ``N`` per input.
        shared_draws: a random metric draws with the input's dataset index for all
            its rows (the same subsets / baselines for every explanation); ``False``:
            each explanation and each inverse draws anew (index ``index * 2N + row``).

    Returns:
        ``(entry, key) → (I, 2, N)``: ``[:, 0]`` Q(e), ``[:, 1]`` Q(inverse e).
    """
    n_in, n_ex = explanations.shape[:2]
    rows = n_in * 2 * n_ex  # row (i, j, m): input i, j = 0 explanation / 1 inverse, m-th one
    which = torch.arange(rows) // (2 * n_ex)
    images, labels, index, masks = (inputs[k] for k in ("images", "labels", "index", "masks"))
    out: dict[tuple[str, str], list[Tensor]] = {}
    for entry, (fn, spec) in entries.items():
        if "masks" in spec.needs and masks is None:
            log.warning(
                "%s: metric entry %r needs masks, which it lacks: skipped", data.name, entry
            )
            continue
        start = time.perf_counter()
        for lo in tqdm(range(0, rows, rows_per_call), desc=f"{data.name} {entry}", disable=None):
            sl = slice(lo, min(lo + rows_per_call, rows))
            i, jm = which[sl], torch.arange(rows)[sl] % (2 * n_ex)
            heat = explanations[i, jm % n_ex]  # (r, 1, H, W)
            inv = jm >= n_ex
            if inv.any():
                heat[inv] = inverse(heat[inv])
            res = call_entry(
                fn, spec, data.net,
                images[i].to(data.device), heat.to(data.device), labels[i].to(data.device),
                index=(index[i] if shared_draws else index[i] * 2 * n_ex + jm).to(data.device),
                masks=None if masks is None else masks[i].to(data.device),
            )  # fmt: skip
            for key, v in res.items():
                out.setdefault((entry, key), []).append(v)
        log.info(
            "%s: %s scored %d rows in %.1f s", data.name, entry, rows, time.perf_counter() - start
        )
    return {k: torch.cat(v).view(n_in, 2, n_ex) for k, v in out.items()}


def dataset_rows(
    data: StudyData,
    entries: Mapping[str, tuple[MetricFn, EntrySpec]],
    *,
    n_inputs: int,
    n_explanations: int,
    ks: Sequence[int],
    superpixel: int,
    rows_per_call: int,
    seed: int,
    correct_only: bool = True,
    values: str = "ranks",
    shared_draws: bool = True,
) -> list[dict[str, Any]]:
    """Per-input agreement rows ``{dataset, metric, input, index, tau_qge, ..., tau_k<K>, ...}``."""
    inputs = pick_inputs(data, n_inputs, rows_per_call, correct_only=correct_only)
    size = data.dm.image_size
    expl = torch.stack(
        [
            superpixel_explanations(
                n_explanations,
                size,
                superpixel,
                generator=sample_generator(seed, int(i)),
                values=values,
            )
            for i in inputs["index"]
        ]
    )  # (I, N, 1, H, W): one generator per input, seeded by (seed, dataset index)
    scores = score_explanations(
        data, entries, inputs, expl, rows_per_call, shared_draws=shared_draws
    )
    rows = []
    for (entry, key), q in scores.items():
        label = entry if len(entries[entry][1].keys) == 1 else key
        for i, idx in enumerate(inputs["index"].tolist()):
            g = sample_generator(seed + 1, idx)  # the random-K draws of this input
            rows.append(
                {"dataset": data.name, "metric": label, "input": i, "index": idx}
                | input_agreement(q[i, 0], q[i, 1], ks, generator=g)
            )
    return rows


# -- tables and figure ----------------------------------------------------------------------------
def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and sample sd of the finite values, and how many there are."""
    v = torch.tensor([x for x in values if math.isfinite(x)], dtype=torch.float64)
    if len(v) == 0:
        return math.nan, math.nan, 0
    sd = float(v.std()) if len(v) > 1 else math.nan
    return float(v.mean()), sd, len(v)


def summarize_rows(rows: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> list[dict[str, Any]]:
    """One summary per (dataset, metric): mean (sd) over inputs of each τ and ρ, the gains of
    QGE over each random-K, and ``catch_up_k``: the smallest K whose mean τ reaches QGE's."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["metric"]), []).append(r)
    out = []
    for (dataset, metric), rs in groups.items():
        s: dict[str, Any] = {"dataset": dataset, "metric": metric}
        for stat in ("tau", "rho"):
            for t in ["qge", *(f"k{k}" for k in ks)]:
                s[f"{stat}_{t}"], s[f"{stat}_{t}_sd"], _ = _stats([r[f"{stat}_{t}"] for r in rs])
            for k in ks:
                gain = [r[f"{stat}_qge"] - r[f"{stat}_k{k}"] for r in rs]
                s[f"gain_{stat}_k{k}"], s[f"gain_{stat}_k{k}_sd"], _ = _stats(gain)
        s["inputs"] = _stats([r["tau_qge"] for r in rs])[2]
        s["catch_up_k"] = next((k for k in ks if s[f"tau_k{k}"] >= s["tau_qge"]), f">{max(ks)}")
        out.append(s)
    return out


def table_rows(summary: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> tuple[list, list]:
    """``qge_images`` table: header and rows (τ, ρ of QGE and each K; gain over K=ks[0] ± sd)."""
    k0 = ks[0]
    header = ["dataset", "metric", "inputs", "tau QGE", "rho QGE"]
    header += [f"{s} K={k}" for k in ks for s in ("tau", "rho")]
    header += [f"gain tau (K={k0})", "sd", f"gain rho (K={k0})", "sd", "K to match QGE tau"]
    rows = []
    for s in summary:
        row = [s["dataset"], s["metric"], s["inputs"], s["tau_qge"], s["rho_qge"]]
        row += [s[f"{st}_k{k}"] for k in ks for st in ("tau", "rho")]
        row += [s[f"gain_tau_k{k0}"], s[f"gain_tau_k{k0}_sd"]]
        row += [s[f"gain_rho_k{k0}"], s[f"gain_rho_k{k0}_sd"], str(s["catch_up_k"])]
        rows.append(row)
    return header, rows


def plot_tau_vs_k(path: Path, summary: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> None:
    """One panel per metric: mean τ of random-K against K (± sd over inputs, log x), QGE's
    mean τ as a dashed horizontal line; one colour per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(s["metric"] for s in summary))
    datasets = list(dict.fromkeys(s["dataset"] for s in summary))
    cols = min(4, len(metrics))
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.7 * nrows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for c, dataset in enumerate(datasets):
            s = next(
                (s for s in summary if s["metric"] == metric and s["dataset"] == dataset), None
            )
            if s is None:
                continue
            mean = [s[f"tau_k{k}"] for k in ks]
            sd = [s[f"tau_k{k}_sd"] for k in ks]
            ax.errorbar(ks, mean, yerr=sd, color=f"C{c}", marker="o", ms=3, capsize=2,
                        label=f"random-K ({dataset})")  # fmt: skip
            ax.axhline(s["tau_qge"], color=f"C{c}", ls="--", label=f"QGE ({dataset})")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(list(ks), [str(k) for k in ks])
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("K (random explanations)", fontsize=8)
        ax.set_ylabel("Kendall τ with Q", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the study --------------------------------------------------------------------------------------
def check_ks(ks: Sequence[int]) -> list[int]:
    """``ks`` as a sorted list of distinct positive ints."""
    out = sorted({int(k) for k in ks})
    if not out or out[0] < 1 or any(int(k) != k for k in ks):
        raise ConfigError(f"study.ks={list(ks)} must be positive integers, e.g. [1, 2, 5, 10]")
    return out


def run(
    cfg: DictConfig,
    *,
    datasets: Mapping[str, Any],
    metrics: Sequence[str] | None = None,
    superpixel_step: Mapping[str, str] | None = None,
    n_inputs: int = 4,
    n_explanations: int = 128,
    ks: Sequence[int] = (1, 2, 5, 10, 20, 50),
    rows_per_call: int = 256,
    correct_only: bool = True,
    values: str = "ranks",
    shared_draws: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    """The image experiment; see the module docstring. Writes into ``cfg.paths.output_dir``.

    Args:
        cfg: the run's config (its ``metric`` entries, dataset, model, seed, paths).
        datasets: dataset config name → ``{superpixel: px, overrides: {dotted key: value}}``.
        metrics: the run's metric entries to study, in order (None: all).
        superpixel_step: entry → its keyword set to one superpixel's elements (``C·s·s``),
            so a chunked metric removes one square per step (e.g. ``features_in_step``).
        n_inputs: test inputs per dataset (paper: 25).
        n_explanations: random explanations per input ``N`` (paper: 10,000; Table 3: 1,000).
        ks: the random-K sizes compared with QGE.
        rows_per_call: explanations per metric call (each with its own image copy).
        correct_only: study only test inputs the classifier gets right (label = prediction).
        values: ``ranks`` or ``uniform`` squares (:func:`superpixel_explanations`).
        shared_draws: one set of random draws per input (see :func:`score_explanations`).
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        ``{"datasets": {name: {"seconds", "inputs"} or "skipped: ..."}, "results": [...]}``.
    """
    ks = check_ks(ks)
    if n_explanations < 2 or n_inputs < 1:
        raise ConfigError(
            f"study.n_explanations={n_explanations} must be >= 2 and study.n_inputs={n_inputs} >= 1"
        )
    out_dir = Path(cfg.paths.output_dir)
    dev = resolve_device(device)
    seed = int(cfg.seed)
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    for data in study_datasets(cfg, datasets, dev):
        if isinstance(data, tuple):
            info[data[0]] = data[1]
            continue
        start = time.perf_counter()
        size = int(data.params.get("superpixel", 8))
        channels = int(data.dm.splits["test"][0][0].shape[0])
        fixed = {e: {kw: channels * size * size} for e, kw in (superpixel_step or {}).items()}
        entries = study_metrics(data.cfg, metrics, fixed=fixed)
        rows += dataset_rows(
            data, entries, n_inputs=n_inputs, n_explanations=n_explanations, ks=ks,
            superpixel=size, rows_per_call=rows_per_call, seed=seed, correct_only=correct_only,
            values=values, shared_draws=shared_draws,
        )  # fmt: skip
        info[data.name] = {"seconds": round(time.perf_counter() - start, 1), "superpixel": size}
    summary = summarize_rows(rows, ks)
    if summary:
        write_table(out_dir, "qge_images", *table_rows(summary, ks))
        keys = list(rows[0])
        write_table(out_dir, "qge_images_per_input", keys, [[r[k] for k in keys] for r in rows])
        plot_tau_vs_k(out_dir / "figures" / "tau_vs_k.png", summary, ks)
    for s in summary:
        log.info(
            "%s %s: tau QGE %.3f, random-%d %.3f, gain %.3f (rho gain %.3f)",
            s["dataset"], s["metric"], s["tau_qge"], ks[0], s[f"tau_k{ks[0]}"],
            s[f"gain_tau_k{ks[0]}"], s[f"gain_rho_k{ks[0]}"],
        )  # fmt: skip
    return {
        "datasets": info, "ks": ks, "n_inputs": n_inputs, "n_explanations": n_explanations,
        "values": values, "shared_draws": shared_draws, "results": summary,
    }  # fmt: skip
