"""Registry-driven contract: every registered metric and every metric config."""

from __future__ import annotations

import math
from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf

from xaibench.metrics import METRICS, get_metric, list_metrics, metric_direction, metric_keys
from xaibench.models import resnet18

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs", "metric").glob("*.yaml"))
# tiny calls for metrics registered without `smoke=` kwargs (their defaults are paper-scale)
FALLBACK_SMOKE = {
    "monotonicity_correlation": {"features_in_step": 64, "nr_samples": 3},
    "faithfulness_correlation": {"nr_runs": 10},
}


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    model = resnet18(3, width=0.125, stem="stride2").eval()
    images = torch.rand(3, 3, 16, 16)
    heatmaps = torch.rand(3, 1, 16, 16)
    masks = heatmaps > 0.7
    return model, images, heatmaps, torch.tensor([0, 1, 2]), masks


def _inputs(name, batch):
    model, images, heatmaps, targets, masks = batch
    kw = dict(METRICS.meta(name).get("smoke") or FALLBACK_SMOKE.get(name, {}))
    if "masks" in METRICS.meta(name)["needs"]:
        kw["masks"] = masks
    return (model, images, heatmaps, targets), kw


@pytest.mark.parametrize("name", list_metrics())
def test_metric_contract(name, batch):
    args, kw = _inputs(name, batch)
    out = get_metric(name)(*args, **kw)
    assert isinstance(out, dict)
    for key in metric_keys(name):
        assert key in out, f"{name} misses declared key {key}"
        assert out[key].shape == (3,), f"{name}.{key}: {tuple(out[key].shape)}"
        if METRICS.meta(name)["nan_when"] is None:
            assert torch.isfinite(out[key]).all(), (
                f"{name}.{key} is not finite and declares no nan_when"
            )
        else:
            assert not torch.isinf(out[key]).any(), f"{name}.{key} is infinite"
        assert metric_direction(name, key) in (True, False, None)
    for key, value in out.items():
        assert value.dim() in (1, 2) and (value.dim() == 1 or value.shape[0] == 3), key


def test_direction_table():
    assert metric_direction("msi") is True
    assert metric_direction("insertion_deletion", "deletion") is False
    assert metric_direction("paper", "mask_penalty") is False
    with pytest.raises(ValueError, match=r"metric 'msi' has no per-sample key 'show_curve'"):
        metric_direction("msi", "show_curve")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_instantiates(path, batch):
    cfg = OmegaConf.load(path)
    entries = (
        {path.stem: cfg} if "_target_" in cfg else dict(cfg.items())
    )  # one metric or a mapping
    assert entries
    (model, images, heatmaps, targets, masks) = batch
    for entry, node in entries.items():
        fn = hydra.utils.instantiate(node)
        assert callable(fn), entry
        if path.stem not in {"msi", "insertion_deletion", "paper", "localization", "qge"}:
            continue  # the others are exercised above; keep the suite fast
        kw = {"masks": masks} if path.stem == "localization" else {}
        out = fn(model, images, heatmaps, targets, **kw)
        per_sample = [v for v in out.values() if v.shape == (3,)]
        assert per_sample and all(not math.isinf(float(v.abs().max())) for v in per_sample)
