"""Agreement of the ``quantus`` variants with Quantus 0.6 on identical inputs and random draws.

Quantus draws with ``np.random``; each test computes our draws (the public
helpers the metrics use) and hands exactly those to Quantus by replacing the
``np.random`` function it calls with one that returns them in Quantus's call
order. Model and data are float64 (Quantus builds its tensors with
``torch.Tensor``, so the default dtype is float64 for the test's duration).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xaibench.metrics.faithfulness import (
    faithfulness_correlation,
    faithfulness_deletion,
    faithfulness_estimate,
    infidelity,
    irof,
    monotonicity_correlation,
    region_perturbation,
)
from xaibench.metrics.faithfulness.common import uniform_draws
from xaibench.metrics.faithfulness.faithfulness_correlation import random_subsets

quantus = pytest.importorskip("quantus")
TOL = 1e-4  # required agreement; observed differences are ~1e-12 (float64 round-off)


@pytest.fixture(autouse=True)
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()
    x = torch.rand(4, 3, 8, 8)
    a = torch.rand(4, 3, 8, 8)  # distinct values: Quantus's unstable argsort then orders like ours
    y = torch.tensor([0, 1, 2, 3])
    return model, x, a, y


def _run(metric, model, x, a, y, **call):
    out = metric(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu", **call
    )
    return torch.as_tensor(np.asarray(out, dtype=np.float64))


def _feed(monkeypatch, name: str, values: list[np.ndarray]) -> None:
    """Make ``np.random.<name>`` return ``values`` one after another (then fail loudly)."""
    it = iter(values)
    monkeypatch.setattr(np.random, name, lambda *args, **kw: next(it))


@pytest.mark.parametrize("softmax", [False, True])
def test_faithfulness_correlation(setup, monkeypatch, softmax):
    model, x, a, y = setup
    ours = faithfulness_correlation(
        model, x, a, y, nr_runs=12, subset_size=20, softmax=softmax, seed=3
    )
    subsets = random_subsets(3, torch.arange(4), 12, 20, x[0].numel())
    _feed(monkeypatch, "choice", [subsets[i, r].numpy() for r in range(12) for i in range(4)])
    q = quantus.FaithfulnessCorrelation(
        nr_runs=12, subset_size=20, disable_warnings=True, return_aggregate=False
    )
    ref = _run(q, model, x, a, y, softmax=softmax)
    assert (ours["faithfulness_correlation"] - ref).abs().max() < TOL


def test_faithfulness_estimate(setup):
    model, x, a, y = setup
    ours = faithfulness_estimate(model, x, a, y, features_in_step=8)
    q = quantus.FaithfulnessEstimate(features_in_step=8, disable_warnings=True)
    assert (ours["faithfulness_estimate"] - _run(q, model, x, a, y)).abs().max() < TOL


def test_monotonicity_correlation_uniform_draws(setup, monkeypatch):
    model, x, a, y = setup
    steps, draws = x[0].numel() // 16, 3
    ours = monotonicity_correlation(model, x, a, y, features_in_step=16, nr_samples=draws, seed=1)
    u = uniform_draws(
        1, torch.arange(4), steps * draws
    )  # variant (step k, draw s) -> column k*draws + s
    _feed(monkeypatch, "uniform", [u[:, j].numpy() for j in range(steps * draws)])
    q = quantus.MonotonicityCorrelation(
        features_in_step=16, nr_samples=draws, disable_warnings=True
    )
    assert (ours["monotonicity_correlation"] - _run(q, model, x, a, y)).abs().max() < TOL


@pytest.mark.parametrize("baseline", ["black", "mean"])
def test_pixel_flipping(setup, baseline):
    model, x, a, y = setup
    ours = faithfulness_deletion(model, x, a, y, features_in_step=8, baseline=baseline)
    q = quantus.PixelFlipping(features_in_step=8, perturb_baseline=baseline, disable_warnings=True)
    assert (ours["deletion_curve"] - _run(q, model, x, a, y)).abs().max() < TOL
    q = quantus.PixelFlipping(
        features_in_step=8,
        perturb_baseline=baseline,
        disable_warnings=True,
        return_auc_per_sample=True,
    )
    assert (ours["faithfulness_deletion"] - _run(q, model, x, a, y)).abs().max() < TOL


@pytest.mark.parametrize("patch_size", [3, 4])  # 3 does not divide 8: Quantus's padded grid
def test_region_perturbation(setup, patch_size):
    model, x, a, y = setup
    ours = region_perturbation(model, x, a, y, patch_size=patch_size, regions_evaluation=5)
    q = quantus.RegionPerturbation(
        patch_size=patch_size, regions_evaluation=5, disable_warnings=True
    )
    ref = _run(q, model, x, a, y)
    assert (ours["region_perturbation_curve"] - ref).abs().max() < TOL
    assert (ours["region_perturbation"] - torch.trapezoid(ref, dx=1.0, dim=1)).abs().max() < TOL


@pytest.mark.parametrize("sizes", [(4,), (2, 4)])
def test_infidelity(setup, sizes):
    model, x, a, y = setup
    a = a - 0.5  # signed attributions, as Quantus allows
    ours = infidelity(model, x, a, y, perturb_patch_sizes=sizes)
    q = quantus.Infidelity(
        perturb_patch_sizes=list(sizes), n_perturb_samples=2, disable_warnings=True
    )
    assert (ours["infidelity"] - _run(q, model, x, a, y)).abs().max() < TOL


def test_irof_single_channel_batch_of_one(monkeypatch):
    """Quantus 0.6 IROF only runs for C = 1 and is per-sample only at batch size 1 (see irof's docstring)."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16 * 16, 4)
    ).eval()
    x, a, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16), torch.tensor([1, 2])
    ours = irof(model, x, a, y)
    q = quantus.IROF(disable_warnings=True, return_aggregate=False)
    ref = torch.cat(
        [_run(q, model, x[i : i + 1], a[i : i + 1], y[i : i + 1], batch_size=1) for i in range(2)]
    )
    assert (ours["irof"] - ref).abs().max() < TOL
