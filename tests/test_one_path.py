"""One path for every component: each explainer YAML and each metric YAML runs through
``pipeline.train`` on tiny data, ``compare_with`` composes the same YAML files, a bad value
fails before any training, and metrics that need masks give NaN columns where there are none.

Parametrised over the files in ``configs/``, so a new explainer or metric is tested here
without editing this file.
"""

from __future__ import annotations

import csv
import math
import shutil
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY_DIGITS
from fixtures import make_cifar

from xaibench import pipeline
from xaibench.errors import ConfigError

CONFIGS = ROOT / "configs"
EXPLAINER_YAMLS = sorted(p.stem for p in (CONFIGS / "explainer").glob("*.yaml") if p.stem != "none")
METRIC_YAMLS = sorted(p.stem for p in (CONFIGS / "metric").glob("*.yaml"))
# coarse grids and few draws: every metric file runs in seconds on 8 images
FAST_METRICS = {
    "paper": ["metric.paper.step=0.1", "metric.paper.percent_step=0.1"],
    "msi": ["metric.msi.step=0.1"],
    "insertion_deletion": [
        "metric.insertion_deletion_value.step=0.1",
        "metric.insertion_deletion_percent.step=0.1",
    ],
    "qge": ["metric.qge_msi.step=0.1", "metric.qge_deletion.step=0.1", "metric.qge_msi.k=2"],
    "fidelity": ["metric.ffidelity.num_masks=4", "metric.ffidelity.step=0.25"],
    "road": ["metric.road.percentiles=[30,70]"],
    "faithfulness": [
        "metric.faithfulness_correlation.nr_runs=5",
        "metric.infidelity_correlation.nr_runs=5",
        "dataset.hparams.metric_chunk=1024",  # 12 steps per curve on 3x64x64
    ],
}
TINY = [*TINY_DIGITS, "dataset.n_test=8", "dataset.eval_batch_size=8"]
# cheap settings for the slow methods, as a user would override them on the CLI
FAST_EXPLAINERS = {
    "lime": ["explainer.n_samples=16"],
    "kernel_shap": ["explainer.n_samples=16"],
    "integrated_gradients": ["explainer.n_steps=4"],
    "lax": ["explainer.max_epochs=1", "explainer.val_samples=8"],
    "deepfaith": [
        "explainer.max_epochs=1",
        "explainer.val_samples=8",
        "explainer.prior_methods=[saliency,gradcam]",
        "explainer.prior_samples=16",
        "explainer.n_subsets=4",
        "explainer.use_filter=false",  # the filter is tested in test_priors.py
    ],
}


def fast_metrics(names: list[str]) -> list[str]:
    return [o for n in names for o in FAST_METRICS.get(n, [])]


@pytest.fixture
def run(cfg_factory, shared_cache, tmp_path_factory):
    """``run(overrides, config_name)`` → (summary, output folder) on the shared tiny classifier."""
    data = tmp_path_factory.getbasetemp() / "shared_data"

    def go(overrides: list[str], config_name: str = "train.yaml"):
        cfg = cfg_factory(
            [*TINY, f"paths.data_dir={data}", *overrides], config_name, cache_dir=shared_cache
        )
        fn = pipeline.train if config_name == "train.yaml" else pipeline.evaluate_only
        return fn(cfg), Path(cfg.paths.output_dir)

    return go


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", EXPLAINER_YAMLS)
def test_every_explainer_yaml_runs(run, name):
    summary, out = run(
        [f"explainer={name}", *FAST_EXPLAINERS.get(name, []), *fast_metrics(["paper"])]
    )
    assert summary["explainer"] == name and list(summary["test"]) == [name]
    rows = read_rows(out / "per_sample.csv")
    assert [int(r["index"]) for r in rows] == list(range(8))
    msi = [float(r["msi"]) for r in rows]
    assert summary["test"][name]["msi"]["mean"] == pytest.approx(sum(msi) / 8, abs=1e-5)
    assert (out / "table.md").read_text().count(f"| {name} |") == 1


@pytest.mark.parametrize("name", METRIC_YAMLS)
def test_every_metric_yaml_runs(run, name):
    summary, out = run(["explainer=gradcam", f"metric={name}", *fast_metrics([name])])
    columns = list(read_rows(out / "per_sample.csv")[0])
    assert columns[0] == "index" and len(columns) == len(set(columns))
    stats = summary["test"]["gradcam"]
    assert list(stats) == columns[1:]
    # synthetic digits have masks: no column is lost to NaN except by a metric's own rule
    assert all(stats[c]["n"] + stats[c]["n_nan"] == 8 for c in stats)


def test_readme_metric_list_and_colliding_keys(run):
    files = ["paper", "qge", "faithfulness", "localization", "fidelity", "insertion_deletion"]
    summary, out = run(["explainer=gradcam", f"metric=[{','.join(files)}]", *fast_metrics(files)])
    columns = set(summary["test"]["gradcam"])
    # keys returned by several entries are namespaced by entry; unique keys keep their name
    for c in (
        "msi",
        "insertion_value",
        "pointing_game",
        "qge_msi",
        "qge_deletion",
        "random_gap_msi",
        "negative_perturbation/flip_step",
        "positive_perturbation/flip_step",
        "insertion_deletion_value/insertion",
        "insertion_deletion_percent/insertion",
        "faithfulness_correlation",
    ):
        assert c in columns, c
    assert "flip_step" not in columns and "insertion" not in columns


def test_masks_missing_gives_counted_nan_columns(cfg_factory, tmp_path, caplog):
    make_cifar(tmp_path / "cifar", n_per_batch=20)
    cfg = cfg_factory(
        [
            "dataset=cifar10",
            f"paths.data_dir={tmp_path / 'cifar'}",
            "dataset.val_size=20",
            "dataset.num_workers=0",
            "model.net.width=0.125",
            "model.max_epochs=1",
            "explainer=gradcam",
            "metric=[paper,localization,qge,faithfulness]",
            *fast_metrics(["paper", "qge"]),
            "metric.faithfulness_correlation.nr_runs=5",
            "metric.infidelity_correlation.nr_runs=5",
        ]
    )
    with caplog.at_level("WARNING"):
        stats = pipeline.train(cfg)["test"]["gradcam"]
    assert "needs ground-truth masks" in caplog.text
    assert stats["pointing_game"]["n"] == 0 and stats["pointing_game"]["n_nan"] == 20
    assert math.isnan(stats["pointing_game"]["mean"])
    assert stats["msi"]["n"] == 20 and stats["qge_msi"]["n"] + stats["qge_msi"]["n_nan"] == 20
    # the faithfulness chunks follow the dataset (64 of 3x32x32), so they fit a CIFAR image
    assert stats["faithfulness_deletion"]["n"] == 20
    assert "nan" in (tmp_path / "out" / "table.md").read_text()


def test_compare_with_honours_the_yaml(cfg_factory, tmp_path, shared_cache):
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    path = configs / "explainer" / "scorecam.yaml"
    path.write_text(path.read_text().replace("forward_batch_size: 64", "forward_batch_size: 7"))
    cfg = cfg_factory(
        [*TINY, "explainer=gradcam", "compare_with=[scorecam]", *fast_metrics(["paper"])],
        config_dir=configs,
        cache_dir=shared_cache,
    )
    from xaibench.build import build_explainer, explainer_configs

    nodes = explainer_configs(cfg)
    assert list(nodes) == ["gradcam", "scorecam"]
    assert build_explainer(nodes["scorecam"], "scorecam").forward_batch_size == 7
    path.write_text(path.read_text().replace("forward_batch_size: 7", "forward_batch_size: 0"))
    with pytest.raises(
        ConfigError, match=r"explainer 'scorecam' \(configs/explainer/scorecam.yaml\)"
    ):
        pipeline.train(cfg)


def test_explainer_none_trains_the_classifier_only(run):
    summary, out = run(["explainer=none", "compare_with=[gradcam]"])
    assert summary["explainer"] == "none" and "test" not in summary
    assert not (out / "table.md").exists()


def test_compare_with_unknown_name_suggests(cfg_factory):
    cfg = cfg_factory([*TINY, "explainer=gradcam", "compare_with=[gradcampp,scorcam]"])
    with pytest.raises(
        ConfigError, match=r"no explainer config .*scorcam.yaml\. Did you mean 'scorecam'\?"
    ):
        pipeline.train(cfg)


def test_bad_metric_argument_fails_before_training(cfg_factory, tmp_path):
    cfg = cfg_factory([*TINY, "explainer=lax", "++metric.paper.stpe=0.1"])
    start = time.perf_counter()
    with pytest.raises(
        ConfigError, match=r"metric entry 'paper'.*no argument 'stpe'\. Did you mean 'step'\?"
    ):
        pipeline.train(cfg)
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "cache" / "base").exists(), "the base classifier trained first"
    bad = cfg_factory([*TINY, "explainer=gradcam", "metric.paper.step=0.03"])
    with pytest.raises(ConfigError, match=r"metric entry 'paper': step=0.03 does not divide"):
        pipeline.train(bad)


def test_bad_explainer_value_fails_before_training(cfg_factory, tmp_path):
    cfg = cfg_factory([*TINY, "explainer=lax", "explainer.temperature=0"])
    with pytest.raises(ConfigError, match=r"explainer.temperature=0 must be a number > 0"):
        pipeline.train(cfg)
    assert not (tmp_path / "cache" / "base").exists()


def test_output_dir_that_is_a_file(cfg_factory, tmp_path):
    cfg = cfg_factory([*TINY, "explainer=gradcam"])
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"paths.output_dir=.*out is a file, not a folder"):
        pipeline.train(cfg)


def test_eval_py_honours_compare_with_and_loads_lax(run):
    summary, out = run(
        [
            "explainer=lax",
            *FAST_EXPLAINERS["lax"],
            "compare_with=[gradcam]",
            *fast_metrics(["paper"]),
        ]
    )
    weights = out / "lax.pt"
    assert summary["explainer_training"]["lax"]["weights"] == str(weights) and weights.exists()
    again, eval_out = run(
        [
            "explainer=lax",
            f"ckpt_path={weights}",
            "compare_with=[kpcacam,gradcam]",
            *fast_metrics(["paper"]),
        ],
        "eval.yaml",
    )
    assert list(again["test"]) == ["lax", "kpcacam", "gradcam"]
    for method in ("lax", "gradcam"):  # same classifier, same test images, same numbers
        assert again["test"][method]["msi"]["mean"] == pytest.approx(
            summary["test"][method]["msi"]["mean"], abs=1e-9
        )
    table = (eval_out / "table.md").read_text()
    assert all(f"| {m} |" in table for m in ("lax", "kpcacam", "gradcam"))
    assert (eval_out / "compare" / "kpcacam" / "per_sample.csv").exists()


def test_eval_py_refuses_a_trained_explainer_without_weights(run):
    run(["explainer=gradcam", *fast_metrics(["paper"])])  # the cached classifier exists
    with pytest.raises(ConfigError, match=r"explainer 'lax' is trained: give its weights"):
        run(["explainer=lax", *fast_metrics(["paper"])], "eval.yaml")
