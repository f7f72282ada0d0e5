"""Metric reliability with and without QGE (QGE paper §4.2, Table 5), MetaQuantus's framework.

``python train.py experiment=qge_reliability``. For each configured metric key
(pixel flipping, MSI, localization on the digit masks, ...) and for its QGE
``Q(h) - Q(inverse(h))``, the metric is meta-evaluated by two perturbation tests
at a minor (NR) and a disruptive (AR) level, ``draws`` seeded draws each:

* **MPT** (model parameters): every parameter of a *deep copy* of the classifier
  is multiplied by i.i.d. ``N(1, σ²)`` noise (Quantus's ``sample(noise_type=
  "multiplicative")``, parameters only, BatchNorm running statistics untouched);
  the explanations are recomputed and scored with the perturbed model.
* **IPT** (input): i.i.d. ``U(-a, a)`` noise added to the images, clipped to the
  clean batch's value range, drawn per sample from ``(seed, dataset index)``;
  scored with the clean model. ``explain_perturbed_input`` (default true)
  recomputes the explanations on the perturbed images; false explains the clean
  images as the released MetaQuantus code does (``InputPerturbationTest``), which
  leaves a model-free metric such as localization unchanged by construction.

The explanation targets are the clean model's predictions on the clean images
(MetaQuantus's ``y_batch``). NR compares scores on the samples whose predicted
class stayed the same, AR on those whose prediction changed. IAC, IEC and MC
are computed by :mod:`xaibench.studies.meta_eval`, with IEC_AR in the corrected
direction (:func:`~xaibench.studies.meta_eval.iec_ar`); the value MetaQuantus's
released code would give is reported beside it (``iec_ar_rule.*``).

Levels: MetaQuantus's, σ = 0.001 / 0.5 (its ImageNet ResNet18 setting; 2.0 for
its MNIST LeNets) and a = 0.001 / 5.0. The run records how many predictions each
level keeps (``levels.*``), so a level that fails its purpose shows.

Outputs in ``paths.output_dir``: ``reliability.{md,csv,tex}`` (rows: metric,
metric + QGE; columns: IAC_NR, IAC_AR, IEC_NR, IEC_AR, MC for MPT and IPT, and
their mean MC), ``iec_ar_rule.*``, ``levels.*``, ``figures/reliability_mc.png``;
the returned summary holds the same numbers.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm.auto import tqdm

from xaibench.build import build_datamodule, build_explainer, build_metrics, explainer_configs
from xaibench.data import unpack_batch
from xaibench.errors import ConfigError
from xaibench.metrics.qge import quality_gaps
from xaibench.metrics.registry import MetricFn, entry_spec
from xaibench.metrics.seeding import per_sample_rand, sample_seed
from xaibench.pipeline import base_classifier
from xaibench.studies.common import write_table
from xaibench.studies.meta_eval import CRITERIA, meta_consistency

log = logging.getLogger(__name__)

LEVELS = ("NR", "AR")
KINDS = {"model": 1, "input": 2}  # seed streams of the two perturbation kinds
QGE_SUFFIX = " + QGE"


# -- what is measured ------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One metric key, read from one metric entry, plain and as QGE.

    Attributes:
        label: the table's row name (``"PF"``); its QGE row is ``label + " + QGE"``.
        key: the entry's per-sample key.
        gaps: ``quality_gaps`` bound to the entry and key: returns ``qge_<key>``
            and ``<key>_inverse`` ``(N,)``.
        needs: extra inputs ``gaps`` takes (``masks``, ``indices``).
        directions: ``{label: higher is better, label + " + QGE": ...}`` from the registry.
    """

    label: str
    key: str
    gaps: MetricFn
    needs: tuple[str, ...]
    directions: dict[str, bool]


@dataclass(frozen=True)
class PerturbationTest:
    """A perturbation test: ``kind`` ``"model"`` (σ of N(1, σ²)) or ``"input"`` (a of U(-a, a))."""

    name: str
    kind: str
    levels: dict[str, float]


@dataclass(frozen=True)
class Samples:
    """The evaluated test samples, on the model's device.

    Attributes:
        images: ``(N, C, H, W)`` in the model's input space.
        targets: ``(N,)`` the clean model's predicted classes (explained and scored).
        labels: ``(N,)`` true classes (for the accuracy record only).
        indices: ``(N,)`` dataset indices (seed per-sample draws).
        masks: ``(N, 1, H, W)`` bool ground truth, or None.
    """

    images: Tensor
    targets: Tensor
    labels: Tensor
    indices: Tensor
    masks: Tensor | None


def make_rows(metrics: Mapping[str, Any], entries: Mapping[str, MetricFn]) -> list[Row]:
    """``study.metrics`` (label → ``{entry, key}``) as :class:`Row` s; directions from the registry."""
    if not metrics:
        raise ConfigError(
            "study.metrics is empty; e.g. {PF: {entry: faithfulness_deletion, key: faithfulness_deletion}}"
        )
    rows = []
    for label, item in metrics.items():
        entry, key = item.get("entry"), item.get("key")
        if entry not in entries:
            raise ConfigError(
                f"study.metrics.{label}.entry={entry!r} is not a metric entry of this run; "
                f"entries: {sorted(entries)} (select its file with metric=[...])"
            )
        spec = entry_spec(entries[entry])
        key = key or spec.name
        if key not in spec.keys:
            raise ConfigError(
                f"study.metrics.{label}.key={key!r}: entry {entry!r} returns {list(spec.keys)}"
            )
        gaps = functools.partial(quality_gaps, metric=entries[entry], key=key)
        gap_spec = entry_spec(gaps)
        directions = {
            label: spec.directions[key],
            label + QGE_SUFFIX: gap_spec.directions[f"qge_{key}"],
        }
        if None in directions.values():
            raise ConfigError(
                f"study.metrics.{label}: key {key!r} has no better direction; IEC_AR needs one"
            )
        rows.append(Row(str(label), key, gaps, gap_spec.needs, directions))
    return rows


def make_tests(tests: Mapping[str, Any]) -> list[PerturbationTest]:
    """``study.tests`` (name → ``{kind, NR, AR}``) as :class:`PerturbationTest` s, checked."""
    out = []
    for name, item in tests.items():
        kind = item.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"study.tests.{name}.kind={kind!r}; choose one of {list(KINDS)}")
        levels = {}
        for level in LEVELS:
            value = item.get(level)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"study.tests.{name}.{level}={value!r} must be a positive number")
            levels[level] = float(value)
        out.append(PerturbationTest(str(name), kind, levels))
    if not out:
        raise ConfigError("study.tests is empty; e.g. {MPT: {kind: model, NR: 0.001, AR: 0.5}}")
    return out


# -- perturbations ---------------------------------------------------------------------------
def draw_seed(seed: int, kind: str, level: str, draw: int) -> int:
    """The seed of one draw: a function of ``(seed, kind, level, draw)`` only."""
    return sample_seed(sample_seed(sample_seed(seed, KINDS[kind]), LEVELS.index(level)), draw)


def perturb_model(net: nn.Module, std: float, seed: int, *, mean: float = 1.0) -> nn.Module:
    """A deep copy of ``net`` with every parameter multiplied by i.i.d. ``N(mean, std²)`` noise.

    Noise is drawn on the CPU from ``seed``, parameter by parameter in
    ``named_parameters`` order, so it is the same on any device; buffers
    (BatchNorm statistics) are copied unchanged. ``net`` is not modified.
    """
    out = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for _, p in out.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * std + mean
            p.mul_(noise.to(device=p.device, dtype=p.dtype))
    return out


def perturb_input(images: Tensor, amplitude: float, indices: Tensor, seed: int) -> Tensor:
    """``images + U(-amplitude, amplitude)`` i.i.d., clipped to ``[images.min(), images.max()]``.

    Sample ``i``'s noise is a function of ``(seed, indices[i])`` only (not of the
    batch it is in). MetaQuantus clips to ``[x.min(), x_perturbed.max()]``, i.e.
    not from above; clipping to the clean range keeps inputs in the data's domain.

    Args:
        images: ``(N, C, H, W)``.
        amplitude: half-width ``a`` of the uniform noise, in input units.
        indices: ``(N,)`` dataset indices.
        seed: the draw's seed.
    """
    u = per_sample_rand(seed, indices.cpu(), tuple(images.shape[1:]), dtype=torch.float64)
    noise = ((2.0 * u - 1.0) * amplitude).to(device=images.device, dtype=images.dtype)
    return (images + noise).clamp(float(images.min()), float(images.max()))


# -- scoring ---------------------------------------------------------------------------------
def predict(model: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """Predicted classes ``(N,)`` in chunks of ``batch_size``."""
    with torch.no_grad():
        return torch.cat([model(c).argmax(1) for c in images.split(batch_size)])


def score_state(
    model: nn.Module,
    images: Tensor,
    explain_images: Tensor,
    s: Samples,
    explainers: Mapping[str, Any],
    rows: list[Row],
    batch_size: int,
) -> dict[str, Tensor]:
    """Every row's scores in one state of model and input: ``{label: (E, N)}``, QGE rows too.

    Args:
        model: the (possibly perturbed) classifier that is explained and scored.
        images: ``(N, C, H, W)`` the (possibly perturbed) inputs the metrics see.
        explain_images: the inputs the explainers see (``images`` unless the
            input test explains the clean ones).
        s: targets, indices and masks of the samples.
        explainers: name → explainer, in table order (``E`` of them).
        rows: the metric keys (:func:`make_rows`).
        batch_size: samples per explainer/metric call.

    ``Q(h) = qge + Q(inverse(h))`` (both from one ``quality_gaps`` call, as its
    docstring defines them).
    """
    out: dict[str, list[list[Tensor]]] = {
        label: [[] for _ in explainers] for r in rows for label in r.directions
    }
    for lo in range(0, len(s.targets), batch_size):
        sl = slice(lo, lo + batch_size)
        needs = {"masks": s.masks[sl] if s.masks is not None else None, "indices": s.indices[sl]}
        for e, explainer in enumerate(explainers.values()):
            heat = explainer(model, explain_images[sl], s.targets[sl])
            for r in rows:
                kw = {n: needs[n] for n in r.needs}
                res = r.gaps(model, images[sl], heat, s.targets[sl], **kw)
                qge = res[f"qge_{r.key}"].detach().double().cpu()
                out[r.label][e].append(qge + res[f"{r.key}_inverse"].detach().double().cpu())
                out[r.label + QGE_SUFFIX][e].append(qge)
    return {label: torch.stack([torch.cat(c) for c in per_e]) for label, per_e in out.items()}


@dataclass
class TestScores:
    """One test's perturbed scores: per level, ``K`` draws of ``{label: (E, N)}`` and keep masks."""

    scores: dict[str, list[dict[str, Tensor]]]
    keep: dict[str, list[Tensor]]  # level -> K x (N,) bool (NR: same prediction, AR: changed)
    agreement: dict[str, list[float]]  # level -> share of unchanged predictions per draw
    accuracy: dict[str, list[float]]  # level -> accuracy against the true labels per draw


def run_test(
    test: PerturbationTest,
    net: nn.Module,
    s: Samples,
    explainers: Mapping[str, Any],
    rows: list[Row],
    *,
    draws: int,
    seed: int,
    batch_size: int,
    explain_perturbed_input: bool = True,
    progress: tqdm | None = None,
) -> TestScores:
    """Scores under ``draws`` seeded perturbations at each level of ``test``; ``net`` is not modified."""
    res = TestScores({}, {}, {}, {})
    for level in LEVELS:
        res.scores[level], res.keep[level] = [], []
        res.agreement[level], res.accuracy[level] = [], []
        for d in range(draws):
            t0 = time.perf_counter()
            dseed = draw_seed(seed, test.kind, level, d)
            if test.kind == "model":
                model, images = perturb_model(net, test.levels[level], dseed), s.images
                explain_images = images
            else:
                model, images = net, perturb_input(s.images, test.levels[level], s.indices, dseed)
                explain_images = images if explain_perturbed_input else s.images
            pred = predict(model, images, batch_size)
            same = (pred == s.targets).cpu()
            res.keep[level].append(same if level == "NR" else ~same)
            res.agreement[level].append(float(same.double().mean()))
            res.accuracy[level].append(float((pred == s.labels).double().mean()))
            res.scores[level].append(
                score_state(model, images, explain_images, s, explainers, rows, batch_size)
            )
            log.info(
                "%s %s draw %d/%d: %.0f%% of predictions unchanged, %.0f s",
                test.name, level, d + 1, draws, 100 * res.agreement[level][-1],
                time.perf_counter() - t0,
            )  # fmt: skip
            if progress is not None:
                progress.update()
    return res


def evaluate(
    clean: dict[str, Tensor], tests: dict[str, TestScores], rows: list[Row]
) -> dict[str, dict[str, dict[str, float]]]:
    """``{row label: {test name: meta_consistency(...)}}`` for every plain and QGE row."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        for label, higher in r.directions.items():
            out[label] = {
                name: meta_consistency(
                    clean[label],
                    torch.stack([sc[label] for sc in t.scores["NR"]]),
                    torch.stack(t.keep["NR"]),
                    torch.stack([sc[label] for sc in t.scores["AR"]]),
                    torch.stack(t.keep["AR"]),
                    higher_is_better=higher,
                )
                for name, t in tests.items()
            }
    return out


# -- outputs ---------------------------------------------------------------------------------
def write_outputs(
    out: Path,
    results: dict[str, dict[str, dict[str, float]]],
    tests: list[PerturbationTest],
    scores: dict[str, TestScores],
    directions: dict[str, bool],
) -> None:
    """``reliability.*``, ``iec_ar_rule.*``, ``levels.*`` and ``figures/reliability_mc.png``."""
    names = [t.name for t in tests]
    header = ["metric", *(f"{n} {c}" for n in names for c in (*CRITERIA, "MC")), "MC (mean)"]
    rows = [
        [label, *(res[n][c] for n in names for c in (*CRITERIA, "MC")), mean_mc(res, names)]
        for label, res in results.items()
    ]
    write_table(out, "reliability", header, rows)
    rule_header = ["metric", "higher is better"]
    rule_header += [
        f"{n} IEC_AR {w}" for n in names for w in ("(correct)", "(MetaQuantus as released)")
    ]
    rule_rows = [
        [
            label,
            str(directions[label]),
            *(res[n][k] for n in names for k in ("IEC_AR", "IEC_AR_as_released")),
        ]
        for label, res in results.items()
    ]
    write_table(out, "iec_ar_rule", rule_header, rule_rows)
    level_rows = [
        [t.name, t.kind, level, t.levels[level], float(np.mean(scores[t.name].agreement[level])),
         float(np.mean(scores[t.name].accuracy[level]))]
        for t in tests for level in LEVELS
    ]  # fmt: skip
    write_table(
        out,
        "levels",
        ["test", "kind", "level", "magnitude", "same prediction", "accuracy"],
        level_rows,
    )
    plot_mc(out / "figures" / "reliability_mc.png", results, names)


def mean_mc(res: dict[str, dict[str, float]], names: list[str]) -> float:
    """The mean of the tests' MC scores (one number per metric, as the paper's Table 5 gives)."""
    return float(np.mean([res[n]["MC"] for n in names]))


def plot_mc(path: Path, results: dict[str, dict[str, dict[str, float]]], names: list[str]) -> None:
    """Grouped bars: MC per metric, plain and with QGE, one panel per test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain = [label for label in results if not label.endswith(QGE_SUFFIX)]
    x = np.arange(len(plain))
    fig, axes = plt.subplots(
        1, len(names), figsize=(1.2 + 1.6 * len(plain) * len(names), 3.2), squeeze=False
    )
    for ax, name in zip(axes[0], names, strict=True):
        for j, (suffix, what) in enumerate((("", "Q"), (QGE_SUFFIX, "QGE"))):
            mc = [results[p + suffix][name]["MC"] for p in plain]
            ax.bar(x + (j - 0.5) * 0.38, mc, width=0.38, label=what)
        ax.set_xticks(x, plain)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}: meta-consistency MC")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0, 0].legend(loc="upper left", ncols=2, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the study -------------------------------------------------------------------------------
def load_samples(dm: Any, net: nn.Module, n: int, device: torch.device, batch_size: int) -> Samples:
    """The first ``n`` test samples, with the clean model's predictions as targets."""
    test = dm.splits["test"]
    if not 2 <= n <= len(test):
        raise ConfigError(
            f"study.n_samples={n} must be in [2, {len(test)}] (the test split's size)"
        )
    b = unpack_batch(
        [torch.stack([torch.as_tensor(test[i][j]) for i in range(n)]) for j in range(len(test[0]))]
    )
    images = b.images.to(device)
    masks = None if b.masks is None else b.masks.to(device)
    return Samples(
        images, predict(net, images, batch_size), b.labels.to(device), b.index.to(device), masks
    )


def run(
    cfg: DictConfig,
    *,
    metrics: Mapping[str, Any],
    tests: Mapping[str, Any],
    n_samples: int = 64,
    draws: int = 3,
    batch_size: int = 64,
    explain_perturbed_input: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """The study (``experiment=qge_reliability``); see the module docstring.

    Args:
        cfg: the composed run config (dataset, model, explainer + ``compare_with``,
            metric entries, seed, paths).
        metrics: row label → ``{entry: <metric entry name>, key: <its per-sample key>}``.
        tests: test name → ``{kind: model | input, NR: <minor level>, AR: <disruptive level>}``.
        n_samples: the first ``n_samples`` test images are evaluated.
        draws: perturbation draws ``K`` per test and level.
        batch_size: samples per explainer and metric call.
        explain_perturbed_input: input test: explain the perturbed (true) or clean images.
        device: ``cpu`` or ``cuda``.

    Returns:
        The summary: settings, measured levels, the table's numbers, timings.
    """
    t0 = time.perf_counter()
    if not isinstance(draws, int) or draws < 1:
        raise ConfigError(f"study.draws={draws!r} must be a positive integer")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("study.device=cuda but no CUDA device is available; use study.device=cpu")
    out, seed, dev = Path(cfg.paths.output_dir), int(cfg.seed), torch.device(device)
    perturbation_tests = make_tests(tests)
    dm = build_datamodule(cfg)
    dm.setup()
    net, base = base_classifier(cfg, dm)
    net = net.to(dev)
    rows = make_rows(metrics, build_metrics(cfg))
    if any("masks" in r.needs for r in rows) and not dm.has_masks:
        raise ConfigError(
            f"dataset {dm.name} has no ground-truth masks; drop the localization rows from study.metrics"
        )
    explainers = {n: build_explainer(node, n) for n, node in explainer_configs(cfg).items()}
    if len(explainers) < 2:
        raise ConfigError(
            "IEC ranks explainers: give at least two (explainer=... compare_with=[...])"
        )
    s = load_samples(dm, net, n_samples, dev, batch_size)
    bar = tqdm(total=1 + 2 * draws * len(perturbation_tests), desc="reliability", disable=None)
    clean = score_state(net, s.images, s.images, s, explainers, rows, batch_size)
    bar.update()
    t_clean = time.perf_counter()
    log.info("unperturbed scores of %d samples: %.0f s", n_samples, t_clean - t0)
    scores = {
        t.name: run_test(t, net, s, explainers, rows, draws=draws, seed=seed, batch_size=batch_size,
                         explain_perturbed_input=explain_perturbed_input, progress=bar)
        for t in perturbation_tests
    }  # fmt: skip
    bar.close()
    results = evaluate(clean, scores, rows)
    directions = {label: d for r in rows for label, d in r.directions.items()}
    write_outputs(out, results, perturbation_tests, scores, directions)
    names = [t.name for t in perturbation_tests]
    for label, res in results.items():
        log.info("%s: %s", label, ", ".join(f"{n} MC {res[n]['MC']:.3f}" for n in names))
    return {
        "dataset": cfg.dataset.name,
        "base_classifier": base,
        "n_samples": n_samples,
        "draws": draws,
        "explainers": list(explainers),
        "explain_perturbed_input": explain_perturbed_input,
        "clean_accuracy": float((s.targets == s.labels).double().mean()),
        "directions": directions,
        "tests": {
            t.name: {
                "kind": t.kind,
                "levels": t.levels,
                "same_prediction": scores[t.name].agreement,
                "accuracy": scores[t.name].accuracy,
            }
            for t in perturbation_tests
        },  # fmt: skip
        "results": {
            label: {**res, "MC_mean": mean_mc(res, names)} for label, res in results.items()
        },
        "seconds": {"clean": t_clean - t0, "total": time.perf_counter() - t0},
    }
