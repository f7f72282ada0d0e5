"""experiment=qge_images: superpixel explanations, the τ/ρ bookkeeping, and one tiny run."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_DIGITS
from scipy import stats
from torch import nn

from xaibench.errors import ConfigError
from xaibench.metrics.faithfulness import faithfulness_correlation, faithfulness_deletion
from xaibench.metrics.qge import inverse
from xaibench.metrics.registry import entry_spec
from xaibench.studies.qge_images import (
    input_agreement,
    pool_random_means,
    score_explanations,
    summarize_rows,
    superpixel_explanations,
)


def _blocks(h, size: int):
    """``(n, 1, H, W)`` → ``(n, g, g, size*size)``: the pixels of each square."""
    n, _, hh, _ = h.shape
    g = hh // size
    return h.view(n, g, size, g, size).permute(0, 1, 3, 2, 4).reshape(n, g, g, size * size)


@pytest.mark.parametrize("size", [4, 8])
def test_superpixel_explanations_are_piecewise_constant_rank_permutations(size):
    h = superpixel_explanations(6, 32, size, generator=torch.Generator().manual_seed(0))
    s = (32 // size) ** 2
    assert h.shape == (6, 1, 32, 32)
    blocks = _blocks(h, size)
    assert torch.equal(blocks.amax(-1), blocks.amin(-1))  # constant on every square
    values = blocks[..., 0].reshape(6, s)
    ranks = torch.arange(s, dtype=torch.float32) / (s - 1)
    assert torch.equal(values.sort(dim=1).values, ranks.expand(6, s))  # a permutation of ranks
    assert len({tuple(v.tolist()) for v in values}) == 6  # six different rankings
    # QGE's inverse of such a map is the same kind of map with the order reversed: 1 - e
    assert torch.allclose(inverse(h), 1 - h)


def test_uniform_superpixel_values_and_bad_sizes():
    h = superpixel_explanations(
        3, 16, 4, generator=torch.Generator().manual_seed(1), values="uniform"
    )
    blocks = _blocks(h, 4)
    assert torch.equal(blocks.amax(-1), blocks.amin(-1))
    assert len(blocks[..., 0].unique()) == 3 * 16  # i.i.d. values, no ranks
    with pytest.raises(ConfigError, match="superpixel=5 must divide"):
        superpixel_explanations(1, 16, 5, generator=torch.Generator())
    with pytest.raises(ConfigError, match="study.values"):
        superpixel_explanations(1, 16, 4, generator=torch.Generator(), values="gauss")


def test_pool_draws_exclude_the_explanation_itself():
    q = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)
    means = pool_random_means(q, [1, 4], generator=torch.Generator().manual_seed(0))
    assert all(means[0, i] != q[i] and means[0, i] in q for i in range(5))
    assert torch.allclose(means[1], (q.sum() - q) / 4)  # K = N - 1: all the others
    with pytest.raises(ConfigError, match="K=5 needs at least 6"):
        pool_random_means(q, [5], generator=torch.Generator())


def test_tau_and_rho_against_scipy_on_a_hand_made_case():
    q = torch.tensor([0.10, 0.50, 0.30, 0.90, 0.70, 0.20, 0.60], dtype=torch.float64)
    q_inv = torch.tensor([0.80, 0.10, 0.90, 0.35, 0.05, 0.40, 0.50], dtype=torch.float64)
    out = input_agreement(q, q_inv, [1, 6], generator=torch.Generator().manual_seed(3))
    qge = (q - q_inv).numpy()
    assert out["tau_qge"] == pytest.approx(stats.kendalltau(qge, q.numpy()).statistic)
    assert out["rho_qge"] == pytest.approx(stats.spearmanr(qge, q.numpy()).statistic)
    k1 = (q - pool_random_means(q, [1], generator=torch.Generator().manual_seed(3))[0]).numpy()
    assert out["tau_k1"] == pytest.approx(stats.kendalltau(k1, q.numpy()).statistic)
    assert out["rho_k1"] == pytest.approx(stats.spearmanr(k1, q.numpy()).statistic)
    all_others = (q - (q.sum() - q) / 6).numpy()  # K = N - 1: Q minus the mean of the others
    assert out["tau_k6"] == pytest.approx(stats.kendalltau(all_others, q.numpy()).statistic)
    assert out["tau_k6"] == pytest.approx(1.0)  # (7q - sum) / 6 keeps Q's order exactly


def test_summary_gains_and_catch_up():
    rows = [
        {"dataset": "d", "metric": "m", "tau_qge": 0.8, "rho_qge": 0.9, "tau_k1": 0.5,
         "rho_k1": 0.6, "tau_k5": 0.85, "rho_k5": 0.95},
        {"dataset": "d", "metric": "m", "tau_qge": 0.6, "rho_qge": 0.7, "tau_k1": 0.1,
         "rho_k1": 0.2, "tau_k5": 0.75, "rho_k5": float("nan")},
    ]  # fmt: skip
    (s,) = summarize_rows(rows, [1, 5])
    assert s["tau_qge"] == pytest.approx(0.7)
    assert s["gain_tau_k1"] == pytest.approx(0.4)  # mean of 0.3 and 0.5
    assert s["gain_tau_k1_sd"] == pytest.approx(stats.tstd([0.3, 0.5]))
    assert s["rho_k5"] == pytest.approx(0.95)  # the NaN input is skipped
    assert s["catch_up_k"] == 5  # mean tau 0.8 >= 0.7


def test_scores_are_direct_metric_calls_on_each_explanation_and_its_inverse():
    """Every row of ``score_explanations`` is the metric called on (image, e) or (image,
    inverse e), a random metric drawing with the input's dataset index for both; the per-input
    τ of ``dataset_rows`` is scipy's on those scores."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 5)).eval()  # fmt: skip
    images = torch.rand((2, 3, 16, 16), generator=torch.Generator().manual_seed(1))
    inputs = {"images": images, "labels": torch.tensor([1, 3]), "index": torch.tensor([7, 2]),
              "masks": None}  # fmt: skip
    pf = functools.partial(faithfulness_deletion, variant="quantus", features_in_step=48)
    fc = functools.partial(faithfulness_correlation, nr_runs=3, subset_size=64)
    entries = {"pf": (pf, entry_spec(pf)), "fc": (fc, entry_spec(fc))}
    expl = torch.stack(
        [
            superpixel_explanations(5, 16, 4, generator=torch.Generator().manual_seed(i))
            for i in (0, 1)
        ]
    )  # (2 inputs, 5 explanations, 1, 16, 16)
    data = SimpleNamespace(name="toy", net=net, device=torch.device("cpu"))
    scores = score_explanations(data, entries, inputs, expl, rows_per_call=7)
    for (entry, key), fn in (
        (("pf", "faithfulness_deletion"), pf),
        (("fc", "faithfulness_correlation"), fc),
    ):
        q = scores[(entry, key)]
        assert q.shape == (2, 2, 5)
        for i in range(2):
            x = images[i].expand(5, -1, -1, -1)
            y, idx = inputs["labels"][i].expand(5), inputs["index"][i].expand(5)
            kw = {"indices": idx} if entry == "fc" else {}
            want = fn(net, x, expl[i], y, **kw)[key].double()
            want_inv = fn(net, x, inverse(expl[i]), y, **kw)[key].double()
            torch.testing.assert_close(q[i, 0], want, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(q[i, 1], want_inv, rtol=1e-6, atol=1e-7)
            a = input_agreement(q[i, 0], q[i, 1], [1], generator=torch.Generator())
            qge = (want - want_inv).numpy()
            assert a["tau_qge"] == pytest.approx(stats.kendalltau(qge, want.numpy()).statistic)


def run_study(cfg_factory, cache: Path, experiment: str, overrides: list[str]):
    """``train.py experiment=<experiment>`` at tiny size on the shared cached classifier:
    ``(summary, output folder, config)``. Shared by the study tests (metric_agreement too)."""
    from xaibench.pipeline import train

    cfg = cfg_factory([f"experiment={experiment}", *TINY_DIGITS, *overrides], cache_dir=cache)
    return train(cfg), Path(cfg.paths.output_dir), cfg


def test_qge_images_end_to_end_writes_tables_and_figure(cfg_factory, shared_cache, one_thread):
    summary, out, _ = run_study(
        cfg_factory, shared_cache, "qge_images",
        ["study.n_inputs=2", "study.n_explanations=10", "study.ks=[1,3]",
         "study.correct_only=false", "study.metrics=[pixel_flipping,localization]"],
    )  # fmt: skip
    assert summary["datasets"]["cifar10"].startswith("skipped")  # no CIFAR-10 files here
    for name in ("qge_images.md", "qge_images.csv", "qge_images.tex", "qge_images_per_input.csv"):
        assert (out / name).stat().st_size > 0
    assert (out / "figures" / "tau_vs_k.png").stat().st_size > 1000
    with open(out / "qge_images.csv") as f:
        table = {r["metric"]: r for r in csv.DictReader(f)}
    assert set(table) == {
        "pixel_flipping",
        "pointing_game",
        "relevance_mass",
        "relevance_rank",
        "iou",
    }
    # relevance mass is linear in e and inverse(e) = 1 - e with sum(e) fixed, so
    # QGE = 2 * RM - const: exactly Q's order on every input
    assert float(table["relevance_mass"]["tau QGE"]) == pytest.approx(1.0)
    assert -1 <= float(table["pixel_flipping"]["tau QGE"]) <= 1
    assert json.loads((out / "summary.json").read_text())["n_explanations"] == 10


@pytest.mark.parametrize("experiment", ["qge_images", "qge_reliability", "metric_agreement"])
def test_study_shares_the_demo_classifier(cfg_factory, tmp_path, experiment):
    """Each study composes experiment=demo_classifier, so it loads the demo's cached base
    classifier: same dataset and model config, same cache file."""
    from xaibench.pipeline import base_checkpoint_path, build_datamodule

    demo, study = cfg_factory(["experiment=demo"]), cfg_factory([f"experiment={experiment}"])
    assert study.dataset == demo.dataset and study.model == demo.model
    assert study.trainer == demo.trainer and study.seed == demo.seed
    path = base_checkpoint_path(study, build_datamodule(study))
    assert path == base_checkpoint_path(demo, build_datamodule(demo))
