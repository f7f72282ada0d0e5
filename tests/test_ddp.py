"""DDP evaluation and training on the CPU (gloo): ``trainer=ddp_cpu`` (``ddp_spawn``, two
processes) gives the rows and values of a one-process run, the summary reaches the caller,
LAX trains with the classifier frozen, and a multirun with ``strategy=ddp`` is refused.

37 test images in batches of 8 on 2 ranks: DistributedSampler pads the shards with
repeated samples, which the callback must drop (de-duplication by ``index``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_DIGITS

from xaibench import pipeline
from xaibench.errors import ConfigError

TINY = [
    *TINY_DIGITS,
    "dataset.n_test=37",
    "dataset.eval_batch_size=8",
    "metric=[paper]",
    "metric.paper.step=0.1",
    "metric.paper.percent_step=0.1",
]
LAX = ["explainer=lax", "explainer.max_epochs=1", "explainer.val_samples=16"]


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


def rows(path: Path) -> dict[int, dict[str, float]]:
    with open(path) as f:
        out = {}
        for r in csv.DictReader(f):
            i = int(r.pop("index"))
            assert i not in out, f"index {i} written twice in {path}"
            out[i] = {k: float(v) for k, v in r.items()}
        return out


def assert_same_rows(a: Path, b: Path, tol: float = 1e-5) -> None:
    ra, rb = rows(a), rows(b)
    assert sorted(ra) == sorted(rb) == list(range(len(ra)))  # none lost, none duplicated
    for i in ra:
        assert ra[i].keys() == rb[i].keys()
        for k, v in ra[i].items():
            w = rb[i][k]
            assert (math.isnan(v) and math.isnan(w)) or abs(v - w) <= tol, (i, k, v, w)


def test_ddp_spawn_gives_the_one_process_rows_and_summary(run):
    """A gradient explainer (saliency, captum) and Grad-CAM: same rows, values, and summary."""
    methods = ["explainer=saliency", "compare_with=[gradcam]"]
    one, out1 = run(methods)
    two, out2 = run([*methods, "trainer=ddp_cpu"])
    assert len(rows(out1 / "per_sample.csv")) == 37
    for name, sub in (("saliency", ""), ("gradcam", "compare/gradcam")):
        assert_same_rows(out1 / sub / "per_sample.csv", out2 / sub / "per_sample.csv")
        s1, s2 = one["test"][name], two["test"][name]
        assert s2, f"the DDP summary of {name} did not reach the caller"
        assert s1.keys() == s2.keys()
        assert s2["msi"]["n"] == 37
        assert abs(s1["msi"]["mean"] - s2["msi"]["mean"]) <= 1e-6
    table = (out2 / "table.md").read_text()
    assert "| saliency |" in table and "| gradcam |" in table


def test_lax_trains_under_ddp_and_evaluates_like_one_process(run, shared_cache):
    """LAX under ddp_spawn: the head trains (record read back in the caller), the cached
    classifier is untouched, and its evaluation under DDP equals the one-process one."""
    base = next((shared_cache / "base").glob("*.pt"), None)
    before = None if base is None else torch.load(base, weights_only=True)["state_dict"]
    summary, out = run([*LAX, "trainer=ddp_cpu"])
    record = summary["explainer_training"]["lax"]
    assert record["best_score"] is not None and math.isfinite(record["best_score"])
    assert record["best_epoch"] == 0 and Path(record["weights"]).exists()
    assert summary["test"]["lax"]["msi"]["n"] == 37
    base = next((shared_cache / "base").glob("*.pt"))
    after = torch.load(base, weights_only=True)["state_dict"]
    if before is not None:  # running BatchNorm statistics included
        assert all(torch.equal(before[k], after[k]) for k in before)
    weights = [*LAX, f"ckpt_path={record['weights']}"]
    _, one = run(weights, "eval.yaml")
    _, two = run([*weights, "trainer=ddp_cpu"], "eval.yaml")
    assert_same_rows(out / "per_sample.csv", one / "per_sample.csv")
    assert_same_rows(one / "per_sample.csv", two / "per_sample.csv")


def test_multirun_with_ddp_on_several_devices_is_refused(cfg_factory, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from xaibench.build import check_launch

    cfg = cfg_factory([*TINY, "trainer=ddp_cpu", "trainer.strategy=ddp"])
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: _Mode(RunMode.MULTIRUN)))
    with pytest.raises(ConfigError, match="ddp_spawn"):
        check_launch(cfg)
    check_launch(cfg_factory([*TINY, "trainer=ddp_cpu"]))  # ddp_spawn: fine
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: _Mode(RunMode.RUN)))
    check_launch(cfg)  # a single run with ddp: fine


class _Mode:
    def __init__(self, mode) -> None:
        self.mode = mode
