"""Resumable, sharded evaluation: an evaluation interrupted after some ranges and rerun
with the same command scores only the rest and writes the rows of an uninterrupted run;
``evaluation.shard=i/n`` jobs split the test set and the plain command merges them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_DIGITS

from xaibench import pipeline
from xaibench.errors import ConfigError
from xaibench.eval import callback as callback_module
from xaibench.eval.shards import parse_selection, shard_ranges

TINY = [
    *TINY_DIGITS,
    "dataset.n_test=26",
    "dataset.eval_batch_size=8",
    "metric=[paper]",
    "metric.paper.step=0.1",
    "metric.paper.percent_step=0.1",
    "explainer=saliency",
    "evaluation.shard_size=8",  # ranges 0-8, 8-16, 16-24, 24-26
]


@pytest.fixture
def run(cfg_factory, shared_cache, tmp_path_factory):
    """``run(overrides, cache)`` → (summary, output folder); ``cache`` holds the ranges."""
    data = tmp_path_factory.getbasetemp() / "shared_data"

    def go(overrides: list[str], cache: Path):
        cfg = cfg_factory([*TINY, f"paths.data_dir={data}", *overrides], cache_dir=shared_cache)
        cfg.paths.cache_dir = str(cache)
        go.runs += 1
        cfg.paths.output_dir = str(cache.parent / f"out{go.runs}")  # one folder per run
        base = shared_cache / "base"  # the tiny classifier, shared
        if base.exists() and not (cache / "base").exists():
            cache.mkdir(parents=True, exist_ok=True)
            (cache / "base").symlink_to(base)
        return pipeline.train(cfg), Path(cfg.paths.output_dir)

    go.runs = 0
    return go


@pytest.fixture
def scored(monkeypatch):
    """Counts the ranges scored; ``scored.fail_at = k`` raises in the k-th range."""

    class Counting(callback_module.EvaluationCallback):
        calls: list[str] = []
        fail_at: int | None = None

        def on_test_epoch_start(self, trainer, pl_module):
            Counting.calls.append(self.shard_path.name)
            if Counting.fail_at == len(Counting.calls):
                raise RuntimeError("interrupted")
            super().on_test_epoch_start(trainer, pl_module)

    Counting.calls = []
    monkeypatch.setattr(pipeline, "EvaluationCallback", Counting)
    return Counting


def test_interrupted_evaluation_resumes_with_identical_rows(run, scored, tmp_path):
    _, whole = run([], tmp_path / "a")
    assert len(scored.calls) == 4
    scored.calls, scored.fail_at = [], 3
    with pytest.raises(RuntimeError, match="interrupted"):
        run([], tmp_path / "b")
    scored.calls, scored.fail_at = [], None
    summary, resumed = run([], tmp_path / "b")
    assert scored.calls == ["0000016-0000024.pt", "0000024-0000026.pt"]  # the rest only
    assert (resumed / "per_sample.csv").read_text() == (whole / "per_sample.csv").read_text()
    assert summary["test"]["saliency"]["msi"]["n"] == 26


def test_sharded_jobs_then_merge(run, scored, tmp_path):
    _, whole = run([], tmp_path / "a")
    scored.calls = []
    cache = tmp_path / "b"
    s0, out0 = run(["evaluation.shard=0/2"], cache)
    s1, _ = run(["evaluation.shard=1/2"], cache)
    assert scored.calls == ["0000000-0000008.pt", "0000016-0000024.pt",
                            "0000008-0000016.pt", "0000024-0000026.pt"]  # fmt: skip
    assert s0["test"]["saliency"] == {} and not (out0 / "table.md").exists()
    scored.calls = []
    merged, out = run([], cache)  # the merge step: every range found, none scored again
    assert scored.calls == []
    assert (out / "per_sample.csv").read_text() == (whole / "per_sample.csv").read_text()
    assert merged["test"]["saliency"]["msi"]["n"] == 26


def test_a_changed_metric_config_does_not_reuse_ranges(run, scored, tmp_path):
    run([], tmp_path / "a")
    scored.calls = []
    run(["metric.paper.step=0.25"], tmp_path / "a")
    assert len(scored.calls) == 4


def test_selection_and_ranges_are_checked():
    assert parse_selection("1/4") == (1, 4) and parse_selection(None) is None
    for bad in ("4/4", "a/b", "1", "-1/2"):
        with pytest.raises(ConfigError, match="evaluation.shard"):
            parse_selection(bad)
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(10, 0) == [(0, 10)]


def test_n_test_scores_a_prefix_with_the_same_rows(run, scored, tmp_path):
    _, whole = run([], tmp_path / "a")
    scored.calls = []
    summary, out = run(["evaluation.n_test=11"], tmp_path / "a")
    assert scored.calls == ["0000000-0000008.pt", "0000008-0000011.pt"]  # a new key: rescored
    prefix = (whole / "per_sample.csv").read_text().splitlines()[:12]
    assert (out / "per_sample.csv").read_text().splitlines() == prefix
    assert summary["test"]["saliency"]["msi"]["n"] == 11
    assert summary["timing"]["saliency"]["test_images"] == 11
    for bad in ("0", "-3", "ten"):
        with pytest.raises(ConfigError, match="evaluation.n_test"):
            run([f"evaluation.n_test={bad}"], tmp_path / "c")
    summary, _ = run(["evaluation.n_test=27"], tmp_path / "a")  # more than there are: all 26
    assert summary["test"]["saliency"]["msi"]["n"] == 26
