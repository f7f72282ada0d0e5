"""The metric-reliability study (experiment=qge_reliability): MetaQuantus's IAC / IEC / MC
on hand-made scores with known answers (IEC_AR's direction for both metric directions, the
case the released MetaQuantus gets wrong), seeded perturbations that leave the model alone,
scores equal to direct metric calls, and one tiny end-to-end run that writes the table."""

from __future__ import annotations

import csv
import functools
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DIGITS
from torch import nn

from xaibench import pipeline
from xaibench.errors import ConfigError
from xaibench.explainers.captum_methods import SaliencyExplainer
from xaibench.explainers.simple import RandomExplainer
from xaibench.metrics import localization, msi, qge
from xaibench.studies import meta_eval as me
from xaibench.studies import qge_reliability as qr

ROWS = ["PF", "PF + QGE", "MSI", "MSI + QGE", "RRA", "RRA + QGE", "RMA", "RMA + QGE"]


# -- IAC / IEC / MC on hand-made scores ------------------------------------------------------
def test_iac_identical_scores_nr_one_ar_zero():
    q = np.arange(12.0).reshape(2, 6)
    keep = np.ones(6, bool)
    np.testing.assert_array_equal(me.iac(q, q.copy(), keep, adversarial=False), [1.0, 1.0])
    np.testing.assert_array_equal(me.iac(q, q.copy(), keep, adversarial=True), [0.0, 0.0])


def test_iac_is_exact_wilcoxon_p_on_kept_samples():
    # 10 kept pairs, all shifted up by distinct amounts: the exact two-sided p is 2 / 2**10
    q = np.arange(12.0)[None]
    q_hat = q + np.linspace(1, 2, 12)[None]
    keep = np.ones(12, bool)
    keep[[3, 8]] = False
    q_hat[0, [3, 8]] = [-50.0, 99.0]  # excluded samples change nothing
    p = 2 / 2**10
    assert me.iac(q, q_hat, keep, adversarial=False)[0] == pytest.approx(p, rel=1e-12)
    assert me.iac(q, q_hat, keep, adversarial=True)[0] == pytest.approx(1 - p, rel=1e-12)


def test_iac_nan_without_a_finite_kept_pair():
    q = np.array([[1.0, 2.0, 3.0], [1.0, np.nan, 3.0]])
    keep = np.array([False, True, False])
    out = me.iac(q, q + 1, keep, adversarial=False)
    assert out[0] == 1.0 and math.isnan(out[1])  # one pair: the exact two-sided p is 1
    assert me.iac(q, q, keep, adversarial=True)[0] == 0.0  # one zero difference (scipy raises)


def test_iec_nr_counts_agreeing_rank_positions():
    # 3 explainers x 2 samples: sample 0 keeps its order (3/3), sample 1 swaps the two lowest
    # (only position 3 agrees: 1/3) -> 4/6; a dropped sample does not count
    q = np.array([[1.0, 1.0, 5.0], [2.0, 2.0, 6.0], [3.0, 3.0, 7.0]])
    q_hat = np.array([[1.0, 2.0, 9.0], [2.0, 1.0, 1.0], [3.0, 3.0, 5.0]])
    keep = np.array([True, True, False])
    assert me.iec_nr(q, q_hat, keep) == pytest.approx(4 / 6)
    assert me.iec_nr(q, q, np.ones(3, bool)) == 1.0


@pytest.mark.parametrize(("higher", "expected"), [(True, 0.75), (False, 0.25)])
def test_iec_ar_counts_worse_scores_in_the_metrics_direction(higher, expected):
    q = np.ones((1, 5))
    q_hat = np.array([[0.0, 0.0, 0.0, 2.0, 1.0]])  # 3 lower, 1 higher, 1 tie (counts 0)
    keep = np.array([True, True, True, True, False])
    assert me.iec_ar(q, q_hat, keep, higher_is_better=higher) == pytest.approx(expected)


def test_iec_ar_as_released_metaquantus_reverses_higher_is_better():
    """MetaQuantus's `if score_direction:` is true for "higher" and "lower" alike, so it
    always counts a *rise* as the expected reaction: right for lower-is-better metrics,
    reversed for higher-is-better ones."""
    q = np.full((2, 4), 0.8)
    dropped = q - 0.5  # a destroyed model: every higher-is-better score got worse
    keep = np.ones(4, bool)
    assert me.iec_ar(q, dropped, keep, higher_is_better=True) == 1.0
    assert me.iec_ar_as_released(q, dropped, keep) == 0.0
    risen = q + 0.5  # every lower-is-better score got worse: both rules agree
    assert me.iec_ar(q, risen, keep, higher_is_better=False) == 1.0
    assert me.iec_ar_as_released(q, risen, keep) == 1.0


def test_iec_ar_needs_a_direction():
    with pytest.raises(ValueError, match="higher_is_better must be True or False"):
        me.iec_ar(np.ones((1, 2)), np.ones((1, 2)), np.ones(2, bool), higher_is_better=None)


@pytest.mark.parametrize("higher", [True, False])
def test_meta_consistency_of_an_ideal_metric(higher):
    # NR draws leave every score as it is; AR draws make every score worse by a distinct amount
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 20))
    worse = -1.0 if higher else 1.0
    q_nr = np.stack([q, q])
    q_ar = np.stack([q + worse * (1 + np.arange(20) / 20), q + worse * (2 + np.arange(20) / 10)])
    keep = np.ones((2, 20), bool)
    out = me.meta_consistency(q, q_nr, keep, q_ar, keep, higher_is_better=higher)
    p = 2 / 2**20  # exact two-sided Wilcoxon p of 20 same-signed distinct differences
    assert out["IAC_NR"] == 1.0 and out["IEC_NR"] == 1.0 and out["IEC_AR"] == 1.0
    assert out["IAC_AR"] == pytest.approx(1 - p, rel=1e-12)
    assert out["MC"] == pytest.approx((3 + 1 - p) / 4, rel=1e-12)
    assert out["MC_std"] == pytest.approx(0.0, abs=1e-12)
    assert out["IEC_AR_as_released"] == (0.0 if higher else 1.0)
    flipped = me.meta_consistency(q, q_nr, keep, q_ar, keep, higher_is_better=not higher)
    assert flipped["IEC_AR"] == 0.0 and flipped["MC"] == pytest.approx(out["MC"] - 0.25)


def test_meta_consistency_mc_is_mean_of_four_and_nan_when_one_is_undefined():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(3, 10))
    q_nr, q_ar = q + rng.normal(size=(2, 3, 10)) * 0.1, q + rng.normal(size=(2, 3, 10))
    keep_nr, keep_ar = rng.random((2, 10)) < 0.8, rng.random((2, 10)) < 0.7
    out = me.meta_consistency(q, q_nr, keep_nr, q_ar, keep_ar, higher_is_better=True)
    assert out["MC"] == pytest.approx(np.mean([out[c] for c in me.CRITERIA]))
    assert out["IAC_NR"] == pytest.approx(
        np.mean([me.iac(q, a, k, adversarial=False) for a, k in zip(q_nr, keep_nr, strict=True)])
    )
    none = np.zeros((2, 10), bool)  # no prediction ever changed: AR is undefined
    out = me.meta_consistency(q, q_nr, keep_nr, q_ar, none, higher_is_better=True)
    assert math.isnan(out["IAC_AR"]) and math.isnan(out["IEC_AR"]) and math.isnan(out["MC"])
    assert out["IAC_NR"] > 0


# -- perturbations ---------------------------------------------------------------------------
def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_perturb_model_is_seeded_multiplicative_and_leaves_the_model_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(50, 40), nn.BatchNorm1d(40), nn.Linear(40, 10))
    net[1].running_mean.fill_(0.3)
    before = _state(net)
    a, b = qr.perturb_model(net, 0.5, seed=7), qr.perturb_model(net, 0.5, seed=7)
    c = qr.perturb_model(net, 0.5, seed=8)
    for k, v in before.items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=0, atol=0)
        torch.testing.assert_close(a.state_dict()[k], b.state_dict()[k], rtol=0, atol=0)
    assert not torch.equal(a[0].weight, c[0].weight)
    torch.testing.assert_close(a[1].running_mean, net[1].running_mean, rtol=0, atol=0)
    ratio = (a[0].weight / net[0].weight).detach()  # the N(1, 0.5^2) factors of 2000 weights
    assert abs(float(ratio.mean()) - 1.0) < 0.05 and abs(float(ratio.std()) - 0.5) < 0.05


def test_perturb_input_is_per_sample_seeded_bounded_and_clipped():
    g = torch.Generator().manual_seed(0)
    x = torch.rand((3, 2, 5, 5), generator=g)
    idx = torch.tensor([4, 9, 2])
    out = qr.perturb_input(x, 0.1, idx, seed=3)
    torch.testing.assert_close(out, qr.perturb_input(x, 0.1, idx, seed=3), rtol=0, atol=0)
    # sample 9's noise does not depend on the batch it is in
    torch.testing.assert_close(qr.perturb_input(x[1:2], 0.1, idx[1:2], seed=3), out[1:2])
    assert not torch.equal(out, qr.perturb_input(x, 0.1, idx, seed=4))
    assert float((out - x).abs().max()) <= 0.1 + 1e-6
    big = qr.perturb_input(x, 5.0, idx, seed=3)
    assert float(big.min()) >= float(x.min()) and float(big.max()) <= float(x.max())


def test_draw_seeds_differ_by_kind_level_and_draw():
    seeds = {qr.draw_seed(0, k, lv, d) for k in qr.KINDS for lv in qr.LEVELS for d in range(3)}
    assert len(seeds) == 2 * 2 * 3
    assert qr.draw_seed(0, "model", "AR", 1) == qr.draw_seed(0, "model", "AR", 1)


# -- scoring on a tiny model -----------------------------------------------------------------
class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
        )
        self.head = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture
def tiny():
    g = torch.Generator().manual_seed(1)
    net = TinyNet().eval()
    images = torch.rand((6, 3, 12, 12), generator=g)
    masks = torch.zeros((6, 1, 12, 12), dtype=torch.bool)
    masks[:, :, 3:9, 2:8] = True
    with torch.no_grad():
        targets = net(images).argmax(1)
    s = qr.Samples(images, targets, targets.clone(), torch.arange(10, 16), masks)
    entries = {
        "msi": functools.partial(msi, step=0.1),
        "localization": functools.partial(localization),
    }
    rows = qr.make_rows(
        {
            "MSI": {"entry": "msi", "key": "msi"},
            "RMA": {"entry": "localization", "key": "relevance_mass"},
        },
        entries,
    )
    explainers = {"saliency": SaliencyExplainer(), "random": RandomExplainer(seed=0)}
    return net, s, rows, explainers, entries


def test_score_state_equals_direct_metric_and_qge_calls_at_any_chunk_size(tiny):
    net, s, rows, explainers, entries = tiny
    got = qr.score_state(net, s.images, s.images, s, explainers, rows, batch_size=6)
    chunked = qr.score_state(net, s.images, s.images, s, explainers, rows, batch_size=4)
    for e, ex in enumerate(explainers.values()):
        h = ex(net, s.images, s.targets)
        q_msi = entries["msi"](net, s.images, h, s.targets)["msi"].double()
        g_msi = qge(entries["msi"], net, s.images, h, s.targets, key="msi").double()
        q_rma = localization(net, s.images, h, s.targets, masks=s.masks)["relevance_mass"].double()
        g_rma = qge(
            "localization", net, s.images, h, s.targets, key="relevance_mass", masks=s.masks
        )
        torch.testing.assert_close(got["MSI"][e], q_msi, rtol=0, atol=1e-6)
        torch.testing.assert_close(got["MSI + QGE"][e], g_msi, rtol=0, atol=1e-6)
        torch.testing.assert_close(got["RMA"][e], q_rma, rtol=0, atol=1e-6)
        torch.testing.assert_close(got["RMA + QGE"][e], g_rma.double(), rtol=0, atol=1e-6)
    for label in got:  # saliency's maps are per sample; the random maps follow the batch shape
        torch.testing.assert_close(chunked[label][0], got[label][0], rtol=0, atol=1e-6)
    assert rows[0].directions == {"MSI": True, "MSI + QGE": True}


@pytest.mark.parametrize("kind", ["model", "input"])
def test_run_test_is_reproducible_and_leaves_the_model_untouched(tiny, kind):
    net, s, rows, explainers, _ = tiny
    before = _state(net)
    flags = [p.requires_grad for p in net.parameters()]
    test = qr.PerturbationTest("T", kind, {"NR": 0.001, "AR": 5.0 if kind == "input" else 2.0})
    a = qr.run_test(test, net, s, explainers, rows, draws=2, seed=0, batch_size=6)
    b = qr.run_test(test, net, s, explainers, rows, draws=2, seed=0, batch_size=6)
    for k, v in before.items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=0, atol=0)
    assert [p.requires_grad for p in net.parameters()] == flags and not net.training
    for level in qr.LEVELS:
        for d in range(2):
            assert torch.equal(a.keep[level][d], b.keep[level][d])
            for label in a.scores[level][d]:
                torch.testing.assert_close(
                    a.scores[level][d][label],
                    b.scores[level][d][label],
                    rtol=0,
                    atol=0,
                    equal_nan=True,
                )
        assert all(k.dtype == torch.bool and k.shape == (6,) for k in a.keep[level])
    assert a.agreement["NR"] == [1.0, 1.0]  # a 0.001 perturbation keeps every prediction
    assert not torch.equal(a.scores["AR"][0]["MSI"], a.scores["AR"][1]["MSI"])  # draws differ


def test_config_errors_name_the_study_key(tiny):
    *_, entries = tiny
    with pytest.raises(
        ConfigError, match=r"study.metrics.X.entry='nope'.*entries: \['localization', 'msi'\]"
    ):
        qr.make_rows({"X": {"entry": "nope", "key": "msi"}}, entries)
    with pytest.raises(ConfigError, match=r"study.metrics.X.key='iou2'"):
        qr.make_rows({"X": {"entry": "localization", "key": "iou2"}}, entries)
    with pytest.raises(ConfigError, match=r"study.tests.M.kind='weights'"):
        qr.make_tests({"M": {"kind": "weights", "NR": 0.1, "AR": 1.0}})
    with pytest.raises(ConfigError, match=r"study.tests.M.AR=0"):
        qr.make_tests({"M": {"kind": "model", "NR": 0.1, "AR": 0}})


# -- end to end ------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_study_writes_the_table_and_keeps_the_cached_classifier(
    cfg_factory, shared_cache, tmp_path_factory
):
    data = tmp_path_factory.getbasetemp() / "shared_data"
    cfg = cfg_factory(
        [
            "experiment=qge_reliability", *TINY_DIGITS, f"paths.data_dir={data}",
            "study.n_samples=8", "study.draws=1", "compare_with=[gradcam,random]",
            "metric.msi.step=0.1", "metric.faithfulness_deletion.features_in_step=4096",
        ],
        cache_dir=shared_cache,
    )  # fmt: skip
    dm = pipeline.build_datamodule(cfg)
    dm.setup()
    net, _ = pipeline.base_classifier(cfg, dm)  # cached here if no earlier test did
    path = pipeline.base_checkpoint_path(cfg, dm)
    sha, before = _sha256(path), _state(net)
    summary = pipeline.train(cfg)
    out = Path(cfg.paths.output_dir)
    assert _sha256(path) == sha
    net2, info = pipeline.base_classifier(cfg, dm, train_if_missing=False)
    assert info["cached"]
    for k, v in before.items():
        torch.testing.assert_close(net2.state_dict()[k], v, rtol=0, atol=0)
    for ext in ("md", "csv", "tex"):
        assert (out / f"reliability.{ext}").is_file() and (out / f"levels.{ext}").is_file()
    assert (out / "figures" / "reliability_mc.png").stat().st_size > 0
    with open(out / "reliability.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["metric"] for r in table] == ROWS
    assert summary["explainers"] == ["saliency", "gradcam", "random"]
    for r in table:
        res = summary["results"][r["metric"]]
        for test in ("MPT", "IPT"):
            crit = [float(r[f"{test} {c}"]) for c in me.CRITERIA]
            mc = float(r[f"{test} MC"])
            assert mc == pytest.approx(res[test]["MC"], rel=1e-5, nan_ok=True)
            if all(map(math.isfinite, crit)):
                assert mc == pytest.approx(sum(crit) / 4, rel=1e-5)
                assert all(0.0 <= c <= 1.0 for c in crit)
    assert summary["directions"]["PF"] is False and summary["directions"]["MSI + QGE"] is True
