"""The exhaustive tabular QGE study (``experiment=qge_tabular``): enumeration, the shared
2^F forward passes against direct perturbation, QGE and random-K against the metric
engine, the exact symmetry of QGE, the tabular loaders' errors, and the one command."""

from __future__ import annotations

import copy
import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from xaibench import pipeline
from xaibench.data.errors import DatasetNotFoundError
from xaibench.data.tabular import load_tabular
from xaibench.errors import ConfigError
from xaibench.metrics.qge import inverse, qge
from xaibench.metrics.registry import get_metric
from xaibench.studies import qge_tabular as st


@pytest.fixture(scope="module")
def iris_model():
    """A small MLP on iris (4 features, 24 permutations) and its first test row."""
    data = load_tabular("iris", "unused", seed=0)
    net, acc = st.train_mlp(data, hidden=(16,), steps=150, lr=0.02, seed=0)
    x = data.x_test[0]
    with torch.no_grad():
        target = int(net(x[None]).argmax())
    return {"net": net, "acc": acc, "x": x, "target": target, "data": data}


@pytest.fixture(scope="module")
def synth_model():
    """A random 5-feature, 3-class MLP (120 permutations) and an input: no training needed."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    return {"net": net.eval(), "x": torch.randn(5), "target": 1}


def all_explanations(f: int) -> torch.Tensor:
    return st.rank_explanations(torch.tensor(list(itertools.permutations(range(f)))))


def naive_q(net, x, target, baseline, expl, quality):
    """Q per explanation by direct perturbation: one forward pass per level, per explanation."""
    f = x.shape[0]
    net64 = copy.deepcopy(net).double()
    out = []
    for e in expl:
        order = e.argsort(descending=True, stable=True)
        probs = []
        for k in range(f + 1):
            xp = x.double().clone()
            gone = order[:k] if quality == "pixel_flipping" else order[k:]
            xp[gone] = baseline.double()[gone]
            with torch.no_grad():
                probs.append(float(net64(xp[None]).softmax(1)[0, target]))
        out.append(np.trapezoid(probs, dx=1.0 / f))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("f", [1, 3, 4, 5, 8])
def test_permutations_are_itertools_order_in_any_chunk(f):
    ref = torch.tensor(list(itertools.permutations(range(f)))).view(-1, f)
    n = len(ref)
    assert torch.equal(st.permutations(0, n, f), ref)
    assert torch.equal(st.permutations(n // 3, n // 2 + 1, f), ref[n // 3 : n // 2 + 1])


def test_rank_explanations_and_inverse_reverse_the_ranking():
    perms = st.permutations(0, 120, 5)
    e = st.rank_explanations(perms)
    assert torch.equal(e.argsort(dim=1, descending=True), perms)
    # xaibench's inverse on an (N, F) tensor: the reversed ranking, values F..1 kept
    assert torch.equal(inverse(e).argsort(dim=1, descending=True), perms.flip(1))
    assert torch.equal(inverse(e).sort(dim=1).values, e.sort(dim=1).values)


@pytest.mark.parametrize("quality", ["pixel_flipping", "insertion"])
@pytest.mark.parametrize("which", ["iris_model", "synth_model"])
def test_shared_subsets_equal_direct_perturbation(which, quality, request):
    m = request.getfixturevalue(which)
    f = m["x"].shape[0]
    base = torch.full((f,), 0.3 if which == "synth_model" else 0.0, dtype=torch.float64)
    table = st.subset_table(m["net"], m["x"], m["target"], base)
    assert table.shape == (2**f,)
    q, q_inv = st.exhaustive(table, f, quality, chunk=7)  # chunks that split the pool
    expl = all_explanations(f)
    assert torch.allclose(
        q, naive_q(m["net"], m["x"], m["target"], base, expl, quality), atol=1e-12
    )
    assert torch.allclose(
        q_inv, naive_q(m["net"], m["x"], m["target"], base, inverse(expl), quality), atol=1e-12
    )
    assert q.std() > 1e-3  # the orders really differ in quality


def test_q_and_qge_equal_the_registered_metric(iris_model):
    """Pixel flipping is insertion_deletion's ``deletion`` (percent mode, step 1/F, softmax);
    QGE is xaibench.metrics.qge.qge of it, with the sign that makes higher better."""
    m, f = iris_model, 4
    table = st.subset_table(m["net"], m["x"], m["target"], torch.zeros(f, dtype=torch.float64))
    q, q_inv = st.exhaustive(table, f, "pixel_flipping")
    expl = all_explanations(f)
    net64 = copy.deepcopy(m["net"]).double()
    images = m["x"].double().expand(len(expl), f).contiguous()
    targets = torch.full((len(expl),), m["target"])
    kw = {"mode": "percent", "step": 1 / f, "score": "confidence", "target": "label"}
    ref = get_metric("insertion_deletion")(net64, images, expl, targets, **kw)
    assert torch.allclose(q, ref["deletion"].double(), atol=1e-9)
    ref_qge = qge("insertion_deletion", net64, images, expl, targets, key="deletion", **kw)
    assert torch.allclose(-(q - q_inv), -ref_qge.double(), atol=1e-9)
    q_ins, _ = st.exhaustive(table, f, "insertion")
    assert torch.allclose(q_ins, ref["insertion"].double(), atol=1e-9)


def test_random_k_against_direct_draws(iris_model):
    m, f, ks = iris_model, 4, [1, 2, 5, 10]
    base = torch.zeros(f, dtype=torch.float64)
    table = st.subset_table(m["net"], m["x"], m["target"], base)
    q, _ = st.exhaustive(table, f, "pixel_flipping")
    rows = torch.arange(24)
    got = st.random_means(-q, rows, ks, torch.Generator().manual_seed(5))
    draws = torch.randint(24, (24, max(ks)), generator=torch.Generator().manual_seed(5))
    pool = all_explanations(f)
    for i in range(24):
        drawn = -naive_q(m["net"], m["x"], m["target"], base, pool[draws[i]], "pixel_flipping")
        want = torch.stack([drawn[:k].mean() for k in ks])
        assert torch.allclose(got[i], want, atol=1e-12)


@pytest.mark.parametrize("which", ["iris_model", "synth_model"])
def test_qge_is_exactly_antisymmetric_and_centred(which, request):
    """QGE(inverse(e)) = -QGE(e) bit for bit, so its mean over all permutations is 0; and
    pixel flipping and insertion give the same QGE (Q_ins(inverse(e)) = Q_del(e)) and, over
    all permutations, the same τ with their own Q (e ↦ inverse(e) negates both sides)."""
    m = request.getfixturevalue(which)
    f = m["x"].shape[0]
    table = st.subset_table(m["net"], m["x"], m["target"], torch.zeros(f, dtype=torch.float64))
    q, q_inv = st.exhaustive(table, f, "pixel_flipping")
    qge_del = -(q - q_inv)
    reversed_rank = {p: r for r, p in enumerate(itertools.permutations(range(f)))}
    partner = torch.tensor([reversed_rank[p[::-1]] for p in itertools.permutations(range(f))])
    assert torch.equal(qge_del[partner], -qge_del)
    assert abs(float(qge_del.mean())) < 1e-15
    assert float(qge_del.abs().mean()) > 1e-3
    q_ins, q_ins_inv = st.exhaustive(table, f, "insertion")
    assert torch.allclose(q_ins, q_inv, atol=1e-14)
    assert torch.allclose(q_ins - q_ins_inv, qge_del, atol=1e-14)
    # so over all permutations QGE keeps either quality's order equally well
    tau_ins = stats.kendalltau(qge_del, q_ins).statistic
    assert tau_ins == pytest.approx(stats.kendalltau(qge_del, -q).statistic, abs=1e-12)


def test_study_input_tau_matches_scipy(iris_model):
    m, f = iris_model, 4
    base = torch.zeros(f, dtype=torch.float64)
    r = st.study_input(
        m["net"], m["x"], m["target"], base, quality="pixel_flipping", ks=[1, 3], seeds=[0],
        input_index=2, rank_rows=torch.arange(24), n_strata=2, strata_ks=[1], chunk=10,
    )  # fmt: skip
    expl = all_explanations(f)
    q = -naive_q(m["net"], m["x"], m["target"], base, expl, "pixel_flipping")
    q_inv = -naive_q(m["net"], m["x"], m["target"], base, inverse(expl), "pixel_flipping")
    assert r["agree_qge"]["kendall"] == pytest.approx(stats.kendalltau(q - q_inv, q).statistic)
    assert r["agree_qge"]["spearman"] == pytest.approx(stats.spearmanr(q - q_inv, q).statistic)
    means = st.random_means(q, torch.arange(24), [1, 3], st.sample_generator(0, 2))
    tau3 = stats.kendalltau(q - means[:, 1], q).statistic
    assert r["agree_random"][3]["kendall"] == pytest.approx(tau3)
    assert r["qge_mean"] == pytest.approx(0.0, abs=1e-15)


def test_catch_up_k():
    assert st.catch_up_k(0.7, {1: 0.4, 2: 0.6, 5: 0.71, 10: 0.8}) == 5
    assert st.catch_up_k(0.9, {1: 0.4, 2: 0.6}) is None


def test_iris_and_diabetes_loaders_standardize():
    d = load_tabular("diabetes", "unused")
    assert d.num_features == 10 and d.num_classes == 2
    assert d.x_train.mean(0).abs().max() < 1e-5
    assert abs(float(d.y_train.double().mean()) - 0.5) < 0.05  # binarised at the median
    i = load_tabular("iris", "unused")
    assert i.num_features == 4 and i.num_classes == 3 and len(i.x_test) == 45


def test_missing_glass_and_avila_files_name_the_path(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_tabular("glass", tmp_path)
    assert str(tmp_path / "glass" / "glass.data") in str(e.value)
    (tmp_path / "avila").mkdir()
    (tmp_path / "avila" / "avila-tr.txt").write_text("0,0,0,0,0,0,0,0,0,0,A\n")
    with pytest.raises(DatasetNotFoundError) as e:
        load_tabular("avila", tmp_path)
    assert str(tmp_path / "avila" / "avila-ts.txt") in str(e.value)


def test_malformed_glass_file_is_named(tmp_path):
    (tmp_path / "glass").mkdir()
    (tmp_path / "glass" / "glass.data").write_text("1,1.5,13.6,4.4,1.1,71.7,0.06,8.7,0.0\n")
    with pytest.raises(DatasetNotFoundError, match="has 9 columns per line; glass.data has 11"):
        load_tabular("glass", tmp_path)


def test_glass_and_avila_files_are_read(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "glass").mkdir()
    lines = [",".join([str(i + 1), *map(str, rng.random(9).round(4)), str([1, 2, 7][i % 3])])
             for i in range(30)]  # fmt: skip
    (tmp_path / "glass" / "glass.data").write_text("\n".join(lines) + "\n")
    g = load_tabular("glass", tmp_path)
    assert g.num_features == 9 and g.num_classes == 3 and len(g.x_train) + len(g.x_test) == 30
    (tmp_path / "avila").mkdir()
    for name, n in (("avila-tr.txt", 20), ("avila-ts.txt", 7)):
        rows = [",".join([*map(str, rng.random(10).round(5)), "AWX"[i % 3]]) for i in range(n)]
        (tmp_path / "avila" / name).write_text("\n".join(rows) + "\n")
    a = load_tabular("avila", tmp_path)
    assert (len(a.x_train), len(a.x_test), a.num_features, a.num_classes) == (20, 7, 10, 3)


def test_bad_values_are_config_errors(cfg_factory):
    cfg = cfg_factory(["experiment=qge_tabular", "study.dataset=iris", "study.quality=msi"])
    with pytest.raises(ConfigError, match="study.quality='msi'"):
        pipeline.train(cfg)
    cfg = cfg_factory(["experiment=qge_tabular", "study.dataset=iris", "study.max_permutations=10"])
    with pytest.raises(ConfigError, match="24 permutations"):
        pipeline.train(cfg)
    cfg = cfg_factory(["experiment=qge_tabular", "study.dataset=iris", "study.ks=[1,2.5]"])
    with pytest.raises(ConfigError, match="study.ks"):
        pipeline.train(cfg)
    with pytest.raises(ConfigError, match="study.dataset='wine'"):
        load_tabular("wine", "unused")


FAST = [
    "experiment=qge_tabular",
    "study.dataset=iris",
    "study.steps=100",
    "study.hidden=[16]",
    "study.n_inputs=2",
    "study.seeds=2",
    "study.ks=[1,2,5]",
    "study.n_strata=2",
    "study.strata_ks=[1]",
]


@pytest.mark.parametrize("config_name", ["train.yaml", "eval.yaml"])
def test_one_command_writes_tables_and_figures(cfg_factory, config_name):
    cfg = cfg_factory(FAST, config_name)
    fn = pipeline.train if config_name == "train.yaml" else pipeline.evaluate_only
    summary = fn(cfg)
    out = Path(cfg.paths.output_dir)
    for stem in ("tau", "strata"):
        for ext in ("md", "csv", "tex"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0
    for fig in ("tau_vs_k", "qge_hist", "strata"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
    with open(out / "tau.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["transform"] for r in rows] == ["QGE", "random-1", "random-2", "random-5"]
    assert summary["forward_passes"] == {
        "distinct_per_input": 16,
        "naive_per_input": 24 * 5,
        "saved_factor": 7.5,
    }
    assert summary["num_permutations"] == math.factorial(4) and summary["rank_sample"] == 24
    assert summary["test_acc"] > 0.8
    for r in summary["inputs"]:
        assert abs(r["qge_mean_all"]) < 1e-15
    assert float(rows[0]["tau_mean"]) == pytest.approx(summary["tau"]["QGE"]["kendall_mean"])
    assert (out / "summary.json").is_file()
