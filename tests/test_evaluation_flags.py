"""The ``evaluation`` block's forward flags through the real pipeline: ``share_forward``
keeps every per-sample value and forwards fewer rows (counted by a pre-hook on the
classifier, and by the run's ``forwards`` record); ``channels_last`` keeps the values and
reports 0 flipped samples; ``autocast`` on a CPU run is a config error."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import TINY_DIGITS

from xaibench import pipeline
from xaibench.errors import ConfigError
from xaibench.metrics.shared_forward import row_counter

TINY = [
    *TINY_DIGITS,
    "dataset.n_test=16",
    "dataset.eval_batch_size=16",
    "metric=[paper,qge]",
    "metric.paper.step=0.1",
    "metric.paper.percent_step=0.1",
    "metric.qge_msi.step=0.1",
    "metric.qge_deletion.step=0.1",
    "explainer=saliency",
]


@pytest.fixture
def run(cfg_factory, shared_cache, tmp_path, monkeypatch, one_thread):
    """``run(overrides)`` → (per-sample rows, the run's ``EvaluationResult.run``, rows the
    classifier computed during evaluation). Each run has its own evaluation cache (nothing
    read back) and shares the tiny base classifier."""
    evaluate, counted = pipeline.evaluate, {}

    def counting_evaluate(cfg, dm, net, *args, **kw):
        with row_counter(net) as counts:
            result = evaluate(cfg, dm, net, *args, **kw)
        counted["rows"], counted["run"] = counts[0], result.run
        return result

    monkeypatch.setattr(pipeline, "evaluate", counting_evaluate)

    def go(overrides: list[str]):
        go.runs += 1
        cfg = cfg_factory([*TINY, *overrides], cache_dir=shared_cache)
        cfg.paths.output_dir = str(tmp_path / f"out{go.runs}")
        cfg.paths.cache_dir = str(tmp_path / f"cache{go.runs}")
        (tmp_path / f"cache{go.runs}").mkdir()
        if (shared_cache / "base").exists():
            (tmp_path / f"cache{go.runs}" / "base").symlink_to(shared_cache / "base")
        summary = pipeline.train(cfg)
        # run_methods records what evaluate measured beside the timing
        assert summary["timing"] and all(
            t["forwards"] == counted["run"]["forwards"] for t in summary["timing"].values()
        )
        if not (shared_cache / "base").exists():  # the first run trained it: share it
            (Path(cfg.paths.cache_dir) / "base").rename(shared_cache / "base")
        return per_sample(Path(cfg.paths.output_dir)), counted["run"], counted["rows"]

    go.runs = 0
    return go


def per_sample(out: Path) -> dict[str, torch.Tensor]:
    """``per_sample.csv`` as column → ``(N,)`` float64, rows in the file's order."""
    with open(out / "per_sample.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: torch.tensor([float(r[k]) for r in rows], dtype=torch.float64) for k in rows[0]}


def assert_same_values(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float):
    assert a.keys() == b.keys() and len(a["msi"]) == 16
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, equal_nan=True, msg=k)


def test_share_forward_same_values_fewer_rows(run):
    shared, run_on, rows_on = run([])
    single, run_off, rows_off = run(["evaluation.share_forward=false"])
    # values: the same rows forwarded, in batches that may differ in size (see shared_forward)
    assert_same_values(shared, single, atol=1e-5)
    on, off = run_on["forwards"], run_off["forwards"]
    assert on["rows"] == off["rows"] == off["forwarded"] and off["saved"] == 0
    assert 0 < on["forwarded"] < on["rows"]
    # the pre-hook counts every row the classifier computed (explainer, fast check, metrics):
    # sharing removed exactly the rows the record says it saved
    assert rows_off - rows_on == on["saved"] > 0
    assert "fast_forward" not in run_on


def test_channels_last_same_values_no_flips(run):
    plain, _, _ = run([])
    fast, record, _ = run(["evaluation.channels_last=true"])
    assert_same_values(plain, fast, atol=1e-5)
    check = record["fast_forward"]
    assert check["channels_last"] is True and check["compile"] is False
    assert check["flipped"] == 0 and check["n"] == 16
    assert 0 <= check["max_abs_logit_diff"] < 1e-4
    assert record["forwards"]["forwarded"] > 0


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("evaluation.autocast=bf16", "evaluation.autocast=bf16 needs a CUDA device"),
        ("evaluation.autocast=fp16", "evaluation.autocast='fp16' must be null or bf16"),
        ("evaluation.channels_last=maybe", "evaluation.channels_last='maybe' must be true"),
    ],
)
def test_bad_flags_are_config_errors(run, override, match):
    with pytest.raises(ConfigError, match=match):
        run([override])
