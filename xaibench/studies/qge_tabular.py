"""The QGE paper's exhaustive tabular experiment (§4.1a, Fig. 2-5): ``experiment=qge_tabular``.

A small MLP is trained on a tabular dataset; for each of a few test inputs *every* ranking
of its F features is an explanation, and its quality Q, QGE and the random-K transform are
compared by how well they keep Q's order (Kendall τ, Spearman ρ).

Explanations. Permutation ``p`` (``p[j]`` = feature of rank ``j``, rank 0 the most
important) is the attribution vector ``e`` with ``e[p[j]] = F - j``. The F! permutations
are numbered in lexicographic order and decoded chunk by chunk from their numbers
(factorial number system), so no chunk holds more than ``chunk`` of them.

Quality (``quality``), from the target's softmax probability with features replaced by the
baseline (the training mean, 0 after standardization, by default):

- ``pixel_flipping``: delete features cumulatively in ``e``'s order; the trapezoid area of
  the probability after 0, 1, …, F deletions on ``[0, 1]``. Lower is better. It equals
  xaibench's ``insertion_deletion`` ``deletion`` (``mode=percent``, ``step=1/F``,
  ``score=confidence``) on the same input.
- ``insertion``: keep the top-k features of ``e`` and replace the others, k = 0…F; the
  same area. Higher is better. This is the paper's eq. 6 up to an affine map (it averages
  the F + 1 levels; the end points are the same for every explanation).

Shared forward passes. After k deletions the deleted set is the first k features of ``p``,
so all F! curves visit only the 2^F subsets of the features. Each subset is forwarded once
(a table ``(2^F,)`` indexed by the subset's bitmask); a curve is that table gathered at the
prefix bitmasks ``cumsum(1 << p)``: 2^F forward passes instead of F!·(F+1).

Transforms, oriented so that higher is better: ``q = Q`` or ``-Q`` for a lower-is-better Q;
``QGE(e) = q(e) - q(inverse(e))`` with :func:`xaibench.metrics.qge.inverse` (eq. 5) and
``random_K(e) = q(e) - mean_{j<K} q(r_j)``, the ``r_j`` drawn uniformly with replacement from
the F! permutations (nested: K uses the first K of the same draws). Because the insertion
curve of ``inverse(e)`` is the deletion curve of ``e`` read backwards,
``Q_ins(inverse(e)) = Q_del(e)`` and both qualities give the same QGE; only the order it is
compared with differs. τ and ρ are computed over a seeded sample of ``rank_sample``
permutations (all of them when F! is not larger), the same rows for every transform; the QGE
τ over all F! permutations is also in the summary.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm.auto import tqdm

from xaibench.data.tabular import TabularData, load_tabular
from xaibench.errors import ConfigError
from xaibench.metrics.plan import trapezoid_mean
from xaibench.metrics.qge import inverse
from xaibench.metrics.seeding import sample_generator
from xaibench.studies.common import rank_agreement, write_table

log = logging.getLogger(__name__)

QUALITIES = {"pixel_flipping": False, "insertion": True}
"""Quality name → higher is better."""
DRAW_CHUNK = 65536
"""Rows of random draws made at a time (the draws depend only on the seed and the rows)."""


# ---------------------------------------------------------------- the classifier


def train_mlp(
    data: TabularData,
    *,
    hidden: Sequence[int] = (64, 64),
    steps: int = 500,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> tuple[nn.Sequential, float]:
    """An MLP (ReLU) trained full-batch with Adam for ``steps`` steps; ``(model, test accuracy)``.

    Deterministic: seeded initialisation (the global RNG is restored afterwards), no
    shuffling, and one intra-op thread while training (the sums do not depend on the
    machine's thread count; the matrices are too small to gain from more). The model
    returns logits ``(n, C)`` for features ``(n, F)`` and is in eval mode.
    """
    sizes = [data.num_features, *[int(h) for h in hidden], data.num_classes]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        net = nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net.train()
        for _ in range(int(steps)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(data.x_train), data.y_train).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    with torch.no_grad():
        acc = (net(data.x_test).argmax(1) == data.y_test).double().mean().item()
    return net, acc


# ---------------------------------------------------------------- enumeration and Q


TAIL = 7
"""Permutations of the last ``TAIL`` positions come from one cached table (``TAIL!`` rows)."""


@functools.cache
def _tail_table(m: int) -> Tensor:
    """All permutations of ``range(m)`` in lexicographic order, ``(m!, m)`` int64."""
    return torch.tensor(list(itertools.permutations(range(m))), dtype=torch.int64).view(-1, m)


def _decode_head(ranks: Tensor, num_features: int, digits: int) -> tuple[Tensor, Tensor]:
    """The first ``digits`` entries ``(n, digits)`` of the permutations numbered ``ranks (n,)``
    and the mask ``(n, F)`` of the features they leave unused (factorial number system)."""
    rest = ranks.clone()
    free = torch.ones(len(ranks), num_features, dtype=torch.bool)
    rows = torch.arange(len(ranks))
    head = torch.empty(len(ranks), digits, dtype=torch.int64)
    for i in range(digits):
        base = math.factorial(num_features - 1 - i)
        digit, rest = rest // base, rest % base
        # first position where the count of free features exceeds the digit: the digit-th free one
        pick = (free.cumsum(1) > digit[:, None]).to(torch.uint8).argmax(1)
        head[:, i] = pick
        free[rows, pick] = False
    return head, free


def permutations(start: int, stop: int, num_features: int) -> Tensor:
    """The permutations numbered ``start … stop-1`` in lexicographic order, ``(stop-start, F)`` int64
    (the order of ``itertools.permutations(range(F))``).

    Number ``r = h·m! + l`` (``m = min(F, TAIL)``): the first ``F - m`` entries decode ``h``
    in the factorial number system, once per distinct ``h``; the last ``m`` are the unused
    features, ascending, arranged by row ``l`` of the lexicographic table of ``range(m)``.
    """
    f = num_features
    m = min(f, TAIL)
    ranks = torch.arange(start, stop, dtype=torch.int64)
    heads, which = torch.unique(ranks // math.factorial(m), return_inverse=True)
    head, free = _decode_head(heads * math.factorial(m), f, f - m)
    unused = torch.arange(f).expand(len(heads), f)[free].view(len(heads), m)  # ascending per row
    tail = unused[which].gather(1, _tail_table(m)[ranks % math.factorial(m)])
    return torch.cat([head[which], tail], dim=1)


def rank_explanations(perms: Tensor) -> Tensor:
    """Attribution vectors ``(n, F)`` float64 with ``e[p[j]] = F - j`` for permutations ``(n, F)``."""
    f = perms.shape[1]
    values = torch.arange(f, 0, -1, dtype=torch.float64).expand(perms.shape)
    return torch.empty(perms.shape, dtype=torch.float64).scatter_(1, perms, values)


def subset_table(model: nn.Module, x: Tensor, target: int, baseline: Tensor) -> Tensor:
    """Target probability ``(2^F,)`` float64 of ``x (F,)`` with the features in each subset
    replaced by ``baseline (F,)``; entry ``m`` replaces feature ``f`` iff bit ``f`` of ``m`` is set.

    The model is run in float64 on a copy (the caller's model is not changed).
    """
    f = x.shape[0]
    masks = (torch.arange(2**f)[:, None] >> torch.arange(f)) & 1  # (2^F, F) bit f of m
    inputs = torch.where(masks.bool(), baseline.double(), x.double())
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return net(inputs).softmax(dim=1)[:, target]


def curves(table: Tensor, explanations: Tensor, quality: str) -> Tensor:
    """Perturbation curves ``(n, F+1)`` of explanations ``(n, F)``, level k = 0 … F.

    ``pixel_flipping``: after deleting the k most attributed features; ``insertion``: keeping
    only them. Ties rank the earlier feature first (stable descending sort, as
    :func:`~xaibench.metrics.qge.inverse` and ``insertion_deletion``).
    """
    n, f = explanations.shape
    order = explanations.argsort(dim=1, descending=True, stable=True)  # (n, F) rank → feature
    deleted = torch.cat(
        [torch.zeros(n, 1, dtype=torch.int64), (1 << order).cumsum(dim=1)], dim=1
    )  # (n, F+1) bitmask of the first k features
    if quality == "insertion":
        deleted = (2**f - 1) - deleted  # the complement: all but the first k
    return table[deleted]


def quality_scores(table: Tensor, explanations: Tensor, quality: str) -> Tensor:
    """Q ``(n,)`` float64: the trapezoid area of :func:`curves` on ``[0, 1]``."""
    return trapezoid_mean(curves(table, explanations, quality))


def exhaustive(
    table: Tensor, num_features: int, quality: str, *, chunk: int = 262144, progress: bool = False
) -> tuple[Tensor, Tensor]:
    """``Q(e)`` and ``Q(inverse(e))`` for all F! explanations, each ``(F!,)`` float64 by number."""
    n = math.factorial(num_features)
    q, q_inv = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    starts = range(0, n, chunk)
    for start in tqdm(
        starts, desc="permutations", unit="chunk", disable=None if progress else True
    ):
        stop = min(n, start + chunk)
        e = rank_explanations(permutations(start, stop, num_features))
        q[start:stop] = quality_scores(table, e, quality)
        q_inv[start:stop] = quality_scores(table, inverse(e), quality)
    return q, q_inv


def random_means(q: Tensor, rows: Tensor, ks: Sequence[int], generator: torch.Generator) -> Tensor:
    """``mean_{j<K} q[r_j]`` ``(len(rows), len(ks))``: per row, ``max(ks)`` uniform draws
    ``r_j`` from ``[0, len(q))`` (with replacement, :data:`DRAW_CHUNK` rows at a time), K-th
    column = the mean of the first K draws."""
    kmax, cols = max(ks), torch.tensor(list(ks)) - 1
    denom = torch.tensor(list(ks), dtype=q.dtype)
    out = torch.empty(len(rows), len(ks), dtype=q.dtype)
    for start in range(0, len(rows), DRAW_CHUNK):
        stop = min(len(rows), start + DRAW_CHUNK)
        idx = torch.randint(len(q), (stop - start, kmax), generator=generator)
        drawn = q.index_select(0, idx.view(-1)).view(idx.shape)  # (rows, kmax) q of the draws
        out[start:stop] = drawn.cumsum(dim=1)[:, cols] / denom
    return out


# ---------------------------------------------------------------- one input


def _rank_rows(n: int, rank_sample: int | None, seed: int) -> Tensor:
    """The permutation numbers τ and ρ are computed on: all, or a seeded sample (sorted)."""
    if rank_sample is None or rank_sample >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:rank_sample].sort().values


def _strata(q: Tensor, transforms: dict[str, Tensor], n_strata: int) -> dict[str, list[float]]:
    """Kendall τ of each transform with ``q`` inside each of ``n_strata`` equal-count bins of ``q``
    (bin 0 = the worst explanations)."""
    rank = torch.empty_like(q, dtype=torch.int64)
    rank[q.argsort(stable=True)] = torch.arange(len(q))
    bins = rank * n_strata // len(q)
    return {
        name: [rank_agreement(t[bins == b], q[bins == b])["kendall"] for b in range(n_strata)]
        for name, t in transforms.items()
    }


def study_input(
    model: nn.Module,
    x: Tensor,
    target: int,
    baseline: Tensor,
    *,
    quality: str,
    ks: Sequence[int],
    seeds: Sequence[int],
    input_index: int,
    rank_rows: Tensor,
    n_strata: int,
    strata_ks: Sequence[int],
    chunk: int,
) -> dict[str, Any]:
    """Everything for one input: Q over all permutations, QGE, random-K, τ/ρ, strata, times."""
    t0 = time.perf_counter()
    table = subset_table(model, x, target, baseline)
    q_raw, q_inv_raw = exhaustive(table, x.shape[0], quality, chunk=chunk, progress=True)
    sign = 1.0 if QUALITIES[quality] else -1.0
    q, qge = sign * q_raw, sign * (q_raw - q_inv_raw)
    t_exh = time.perf_counter() - t0

    t1 = time.perf_counter()
    qs, qges = q[rank_rows], qge[rank_rows]
    agree = {"qge": rank_agreement(qges, qs)}
    rand: dict[int, list[dict[str, float]]] = {k: [] for k in ks}
    strata_in = {"QGE": qges}
    for s in seeds:
        means = random_means(q, rank_rows, ks, sample_generator(s, input_index))
        for j, k in enumerate(ks):
            rand[k].append(rank_agreement(qs - means[:, j], qs))
            if k in strata_ks:
                strata_in[f"random-{k} (seed {s})"] = qs - means[:, j]
    strata = _strata(qs, strata_in, n_strata)
    full = agree["qge"] if len(rank_rows) == len(q) else rank_agreement(qge, q)
    t_rank = time.perf_counter() - t1
    return {
        "agree_qge": agree["qge"],
        "agree_random": {k: _seed_mean(v) for k, v in rand.items()},
        "strata": strata,
        "qge": qge,
        "qge_full": full,
        "p_clean": float(table[0]),
        "p_baseline": float(table[-1]),
        "q_mean": float(q_raw.mean()),
        "q_std": float(q_raw.std()),
        "qge_mean": float(qge.mean()),
        "qge_positive": float((qge > 0).double().mean()),
        "exhaustive_s": t_exh,
        "rank_s": t_rank,
    }


def _seed_mean(vals: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([v[key] for v in vals])) for key in vals[0]}


# ---------------------------------------------------------------- outputs


def catch_up_k(qge_value: float, random_values: dict[int, float]) -> int | None:
    """The smallest K whose random-K value reaches QGE's (``None``: none does)."""
    return next((k for k in sorted(random_values) if random_values[k] >= qge_value), None)


def _tau_rows(per_input: list[dict[str, Any]], ks: Sequence[int]) -> tuple[list[str], list[list]]:
    n = len(per_input)
    header = ["transform", "Q evals", *[f"tau_{i}" for i in range(n)]]
    header += [f"rho_{i}" for i in range(n)] + ["tau_mean", "tau_std", "rho_mean", "rho_std"]
    entries = [("QGE", 2, [r["agree_qge"] for r in per_input])]
    entries += [(f"random-{k}", k + 1, [r["agree_random"][k] for r in per_input]) for k in ks]
    rows = []
    for name, cost, agree in entries:
        tau = [a["kendall"] for a in agree]
        rho = [a["spearman"] for a in agree]
        rows.append([name, cost, *tau, *rho, *_mean_std(tau), *_mean_std(rho)])
    return header, rows


def _mean_std(v: list[float]) -> list[float]:
    return [float(np.mean(v)), float(np.std(v))]


def _strata_rows(per_input: list[dict[str, Any]], n_strata: int, strata_ks: Sequence[int]):
    """Rows: quality bin; columns: mean τ over inputs (random-K also over seeds)."""
    names = ["QGE", *[f"random-{k}" for k in strata_ks]]
    header = ["quality bin (worst→best)", *[f"tau {n}" for n in names]]

    def mean_tau(name: str, b: int) -> float:
        vals = [
            v[b]
            for r in per_input
            for key, v in r["strata"].items()
            if key == name or key.startswith(f"{name} (")
        ]
        return float(np.nanmean(vals))

    rows = [
        [f"{100 * b // n_strata}-{100 * (b + 1) // n_strata}%", *[mean_tau(n, b) for n in names]]
        for b in range(n_strata)
    ]
    return header, rows


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tau_vs_k(
    path: Path, per_input: list[dict[str, Any]], ks: Sequence[int], title: str
) -> None:
    """τ (and ρ) of random-K versus K, QGE as a horizontal line (paper Fig. 2 and 5)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, sym in zip(
        axes, ("kendall", "spearman"), ("Kendall τ", "Spearman ρ"), strict=True
    ):
        rnd = np.array([[r["agree_random"][k][key] for k in ks] for r in per_input])
        qg = np.array([r["agree_qge"][key] for r in per_input])
        for row in rnd:
            ax.plot(ks, row, color="tab:blue", alpha=0.2, lw=0.8)
        ax.errorbar(ks, rnd.mean(0), yerr=rnd.std(0), color="tab:blue", marker="o", ms=3,
                    capsize=2, label="random-K (mean ± sd over inputs)")  # fmt: skip
        ax.axhline(qg.mean(), color="tab:red", label=f"QGE ({qg.mean():.3f})")
        ax.axhspan(qg.mean() - qg.std(), qg.mean() + qg.std(), color="tab:red", alpha=0.12)
        ax.set_xscale("log")
        ax.set_xticks(list(ks))
        ax.set_xticklabels(
            [str(k) if k <= 10 or k in (20, 50, 100) else "" for k in ks], fontsize=7
        )
        ax.set_xlabel("K (random explanations averaged)")
        ax.set_ylabel(f"{sym} with Q")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    _save(fig, path, plt)


def plot_qge_hist(path: Path, per_input: list[dict[str, Any]], title: str) -> None:
    """The distribution of QGE over all permutations, one step histogram per input (Fig. 4)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, r in enumerate(per_input):
        v = r["qge"].numpy()
        ax.hist(v, bins=120, histtype="step", density=True,
                label=f"input {i} (mean {v.mean():+.1e})")  # fmt: skip
    ax.axvline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("QGE (higher = better than its inverse)")
    ax.set_ylabel("density over all permutations")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    _save(fig, path, plt)


def plot_strata(path: Path, header: list[str], rows: list[list], title: str) -> None:
    """τ within quality bins (paper Fig. 3)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = np.arange(len(rows))
    for j, name in enumerate(header[1:], start=1):
        ax.plot(x, [r[j] for r in rows], marker="o", ms=3, label=name.removeprefix("tau "))
    ax.set_xticks(x, [r[0] for r in rows], rotation=45, fontsize=7)
    ax.set_xlabel("bin of Q (worst → best explanations)")
    ax.set_ylabel("Kendall τ with Q within the bin")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    _save(fig, path, plt)


def _save(fig, path: Path, plt) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- the study


def _check(
    quality: str, ks: Sequence[int], seeds: int, n_strata: int, num_features: int, max_perm: int
) -> None:
    if quality not in QUALITIES:
        raise ConfigError(f"study.quality={quality!r} is unknown; choose one of {list(QUALITIES)}")
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigError(f"study.ks={list(ks)} must be positive integers (random draws per K)")
    if seeds < 1 or n_strata < 1:
        raise ConfigError(f"study.seeds={seeds} and study.n_strata={n_strata} must be >= 1")
    if math.factorial(num_features) > max_perm:
        raise ConfigError(
            f"{num_features} features have {math.factorial(num_features):,} permutations, more "
            f"than study.max_permutations={max_perm:,}; use a dataset with fewer features "
            "or raise study.max_permutations"
        )


def _baseline(data: TabularData, baseline: float | str) -> Tensor:
    """The replacement value per feature ``(F,)``: a constant (standardized units) or ``train_mean``."""
    if baseline == "train_mean":
        return data.x_train.double().mean(dim=0)
    try:
        return torch.full((data.num_features,), float(baseline), dtype=torch.float64)
    except (TypeError, ValueError):
        raise ConfigError(
            f"study.baseline={baseline!r} must be a number (standardized units) or 'train_mean'"
        ) from None


def _targets(net: nn.Module, x: Tensor, y: Tensor, target: str) -> Tensor:
    if target == "label":
        return y
    if target == "predicted":
        with torch.no_grad():
            return net(x).argmax(dim=1)
    raise ConfigError(f"study.target={target!r} must be 'predicted' or 'label'")


def run(
    cfg: DictConfig,
    *,
    dataset: str = "diabetes",
    test_fraction: float = 0.3,
    hidden: Sequence[int] = (64, 64),
    steps: int = 500,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    n_inputs: int = 5,
    target: str = "predicted",
    quality: str = "pixel_flipping",
    baseline: float | str = 0.0,
    ks: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 50, 100),
    seeds: int = 3,
    rank_sample: int | None = 200000,
    n_strata: int = 10,
    strata_ks: Sequence[int] = (1, 5, 10),
    chunk: int = 262144,
    max_permutations: int = 4000000,
) -> dict[str, Any]:
    """The exhaustive study; tables and figures in ``cfg.paths.output_dir``, returns the summary.

    Args:
        cfg: the run config (``seed``, ``paths.data_dir``, ``paths.output_dir``).
        dataset: ``diabetes``, ``iris``, ``glass`` or ``avila`` (:mod:`xaibench.data.tabular`).
        test_fraction: test share of the seeded stratified split (not ``avila``).
        hidden, steps, lr, weight_decay: the MLP and its full-batch Adam training.
        n_inputs: the first ``n_inputs`` test rows are explained.
        target: the class explained, ``predicted`` or ``label``.
        quality: ``pixel_flipping`` (deletion area, lower better) or ``insertion`` (higher better).
        baseline: replacement of a removed feature, standardized units (0 = the training
            mean) or ``train_mean``.
        ks: the K of random-K; ``seeds`` independent draw sets averaged.
        rank_sample: permutations τ/ρ are computed on (seeded sample; ``null`` = all).
        n_strata, strata_ks: quality bins of the stratified τ and the K shown there.
        chunk: permutations per enumeration chunk (bounds memory).
        max_permutations: refuse a dataset with more than this many permutations.
    """
    t_start = time.perf_counter()
    ks, strata_ks = list(ks), list(strata_ks)
    seed, out = int(cfg.seed), Path(cfg.paths.output_dir)
    data = load_tabular(dataset, cfg.paths.data_dir, seed=seed, test_fraction=test_fraction)
    f = data.num_features
    _check(quality, ks, int(seeds), int(n_strata), f, int(max_permutations))
    if not 1 <= n_inputs <= len(data.x_test):
        raise ConfigError(
            f"study.n_inputs={n_inputs} must be in [1, {len(data.x_test)}] (test rows)"
        )
    strata_ks = [k for k in strata_ks if k in ks]

    t0 = time.perf_counter()
    net, acc = train_mlp(
        data, hidden=hidden, steps=steps, lr=lr, weight_decay=weight_decay, seed=seed
    )
    t_train = time.perf_counter() - t0
    log.info(
        "%s: MLP test accuracy %.3f (%d features, %d permutations)",
        dataset,
        acc,
        f,
        math.factorial(f),
    )

    x, y = data.x_test[:n_inputs], data.y_test[:n_inputs]
    tgt = _targets(net, x, y, target)
    base = _baseline(data, baseline)
    rows = _rank_rows(math.factorial(f), rank_sample, seed)
    per_input = []
    for i in range(n_inputs):
        r = study_input(
            net, x[i], int(tgt[i]), base, quality=quality, ks=ks,
            seeds=[seed + s for s in range(int(seeds))], input_index=i, rank_rows=rows,
            n_strata=int(n_strata), strata_ks=strata_ks, chunk=int(chunk),
        )  # fmt: skip
        log.info(
            "input %d: exhaustive %.1f s, ranks %.1f s, QGE τ %.3f, random-1 τ %.3f",
            i, r["exhaustive_s"], r["rank_s"], r["agree_qge"]["kendall"],
            r["agree_random"][ks[0]]["kendall"],
        )  # fmt: skip
        per_input.append(r)

    header, tau_rows = _tau_rows(per_input, ks)
    write_table(out, "tau", header, tau_rows)
    s_header, s_rows = _strata_rows(per_input, int(n_strata), strata_ks)
    write_table(out, "strata", s_header, s_rows)
    title = f"{dataset}: {quality}, {n_inputs} inputs × {math.factorial(f):,} explanations"
    plot_tau_vs_k(out / "figures" / "tau_vs_k.png", per_input, ks, title)
    plot_qge_hist(out / "figures" / "qge_hist.png", per_input, title)
    plot_strata(out / "figures" / "strata.png", s_header, s_rows, title)
    return _summary(
        per_input, tau_rows, ks, data, acc, y, tgt, quality, rows, t_train,
        time.perf_counter() - t_start,
    )  # fmt: skip


def _summary(per_input, tau_rows, ks, data, acc, y, tgt, quality, rows, t_train, t_total):
    """The JSON-able headline numbers (``summary.json``)."""
    f = data.num_features
    n_perm = math.factorial(f)
    tau = {r[0]: {"kendall_mean": r[-4], "kendall_std": r[-3], "spearman_mean": r[-2],
                  "spearman_std": r[-1]} for r in tau_rows}  # fmt: skip
    q_tau, q_rho = tau["QGE"]["kendall_mean"], tau["QGE"]["spearman_mean"]
    rnd = {k: tau[f"random-{k}"] for k in ks}
    naive = n_perm * (f + 1)
    return {
        "dataset": data.name,
        "num_features": f,
        "feature_names": list(data.feature_names),
        "num_permutations": n_perm,
        "quality": quality,
        "quality_higher_is_better": QUALITIES[quality],
        "test_acc": acc,
        "rank_sample": len(rows),
        "tau": tau,
        "catch_up_k": {
            "kendall": catch_up_k(q_tau, {k: v["kendall_mean"] for k, v in rnd.items()}),
            "spearman": catch_up_k(q_rho, {k: v["spearman_mean"] for k, v in rnd.items()}),
        },
        "inputs": [
            {
                "test_row": i,
                "label": int(y[i]),
                "target": int(tgt[i]),
                "p_clean": r["p_clean"],
                "p_baseline": r["p_baseline"],
                "q_mean": r["q_mean"],
                "q_std": r["q_std"],
                "qge_mean_all": r["qge_mean"],
                "qge_positive_share": r["qge_positive"],
                "qge_all": r["qge_full"],
                "exhaustive_s": r["exhaustive_s"],
                "rank_s": r["rank_s"],
            }
            for i, r in enumerate(per_input)
        ],  # fmt: skip
        "forward_passes": {
            "distinct_per_input": 2**f,
            "naive_per_input": naive,
            "saved_factor": naive / 2**f,
        },
        "wall_s": {
            "train": t_train,
            "exhaustive_max": max(r["exhaustive_s"] for r in per_input),
            "rank_max": max(r["rank_s"] for r in per_input),
            "total": t_total,
        },
    }
