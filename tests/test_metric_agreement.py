"""experiment=metric_agreement: the per-sample / per-method bookkeeping and one tiny run."""

from __future__ import annotations

import csv
import math
from collections import defaultdict

import pytest
import torch
from scipy import stats
from test_qge_images import run_study

from xaibench.errors import ConfigError
from xaibench.studies.metric_agreement import (
    agreement_rows,
    per_method_agreement,
    per_sample_agreement,
)

# 4 methods x 3 samples, made so that the two views disagree: on every sample the score
# ranks the methods against the truth, but the method means agree (method 3 is the best
# on average by both, through one large value each)
# (integers, so the tied method means are exactly tied)
SCORE = torch.tensor([[1, 2, 3], [2, 3, 1], [3, 1, 2], [0, 0, 12]], dtype=torch.float64)
TRUTH = torch.tensor([[3, 2, 1], [2, 1, 3], [1, 3, 2], [4, 4, 0]], dtype=torch.float64)


def test_per_sample_and_per_method_against_scipy():
    ps = per_sample_agreement(SCORE, TRUTH)
    taus = [stats.kendalltau(SCORE[:, j], TRUTH[:, j]).statistic for j in range(3)]
    rhos = [stats.spearmanr(SCORE[:, j], TRUTH[:, j]).statistic for j in range(3)]
    assert ps["kendall"] == pytest.approx(sum(taus) / 3)
    assert ps["spearman"] == pytest.approx(sum(rhos) / 3)
    assert ps["n"] == 3 and ps["kendall"] == pytest.approx(-1.0)  # every sample: reversed
    pm = per_method_agreement(SCORE, TRUTH)
    a, b = SCORE.mean(1).numpy(), TRUTH.mean(1).numpy()
    assert pm["kendall"] == pytest.approx(stats.kendalltau(a, b).statistic)
    assert pm["spearman"] == pytest.approx(stats.spearmanr(a, b).statistic)
    assert pm["p_spearman"] == pytest.approx(stats.spearmanr(a, b).pvalue)
    assert pm["n"] == 4 and pm["kendall"] == pytest.approx(1.0)  # ... the means agree


def test_undefined_samples_are_dropped_and_counted():
    truth = TRUTH.clone()
    truth[:, 1] = 5.0  # constant across methods on sample 1: no rank correlation there
    score = SCORE.clone()
    score[0, 2] = math.nan  # one method lost on sample 2: the other three still correlate
    ps = per_sample_agreement(score, truth)
    expect = [
        stats.kendalltau(score[:, 0], truth[:, 0]).statistic,
        stats.kendalltau(score[1:, 2], truth[1:, 2]).statistic,
    ]
    assert ps["n"] == 2
    assert ps["kendall"] == pytest.approx(sum(expect) / 2)
    pm = per_method_agreement(score, truth)  # method 0's mean skips its NaN
    a = torch.stack([score[0, :2].mean(), *score[1:].mean(1)]).numpy()
    assert pm["kendall"] == pytest.approx(stats.kendalltau(a, truth.mean(1).numpy()).statistic)


def test_lower_is_better_scores_are_negated():
    values = {"deletion": SCORE, "iou": TRUTH}
    (row,) = agreement_rows(values, {"deletion": False, "iou": True}, ["deletion"], ["iou"])
    assert row["score"] == "-deletion"
    assert row["method_tau"] == pytest.approx(-per_method_agreement(SCORE, TRUTH)["kendall"])
    assert row["sample_tau"] == pytest.approx(-per_sample_agreement(SCORE, TRUTH)["kendall"])
    with pytest.raises(ConfigError, match="'msi' is not a per-sample column"):
        agreement_rows(values, {}, ["msi"], ["iou"])


def test_metric_agreement_end_to_end(cfg_factory, shared_cache, one_thread):
    """LAX (main, monitors val/msi) and DeepFaith (compared, monitors val/l_lc) are both
    trained, each with its own monitor, next to two post-hoc methods and a baseline."""
    summary, out, cfg = run_study(
        cfg_factory, shared_cache, "metric_agreement",
        ["compare_with=[saliency,deepfaith,random]",
         "study.method_overrides.lax.explainer.max_epochs=1",
         "study.method_overrides.lax.explainer.val_samples=16",
         "study.method_overrides.deepfaith.explainer.val_samples=16",
         "study.method_overrides.deepfaith.trainer.limit_train_batches=1",
         "study.n_images=6", "study.batch_size=4", "metric.paper.step=0.1",
         "metric.paper.percent_step=0.1", "metric.qge_msi.step=0.1",
         "metric.pixel_flipping.features_in_step=2048"],
    )  # fmt: skip
    info = summary["datasets"]
    assert info["cub200"].startswith("skipped")  # no CUB files here
    digits = info["synthetic_digits"]
    assert digits["methods"] == ["lax", "saliency", "deepfaith", "random"]
    assert digits["correlated"] == ["lax", "saliency", "deepfaith"]  # not the baseline
    for name in ("lax", "deepfaith"):
        assert (out / "synthetic_digits" / "explainers" / name / f"{name}.pt").is_file()
    for name in ("agreement.md", "agreement.csv", "agreement.tex", "agreement_methods.csv"):
        assert (out / name).stat().st_size > 0
    assert (out / "figures" / "agreement_scatter.png").stat().st_size > 1000
    with open(out / "agreement.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(cfg.study.scores) * len(cfg.study.truths)
    # the per-method column recomputed from the per-sample file the run wrote
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(out / "agreement_per_sample.csv") as f:
        for r in csv.DictReader(f):
            for c in ("msi", "relevance_mass", "deletion_value"):
                per[r["method"]][c].append(float(r[c]))
    kept = digits["correlated"]

    def means(c: str) -> list[float]:
        return [torch.tensor(per[m][c]).nanmean().item() for m in kept]

    for score, sign in (("msi", 1), ("deletion_value", -1)):
        label = score if sign > 0 else f"-{score}"
        (row,) = [r for r in table if r["score"] == label and r["truth"] == "relevance_mass"]
        a = [sign * v for v in means(score)]
        expect = stats.kendalltau(a, means("relevance_mass")).statistic
        got = float(row["per-method tau"])
        assert (math.isnan(got) and math.isnan(expect)) or got == pytest.approx(expect, abs=1e-4)
