"""One baseline for explainers and metrics: values by hand, shapes, blur against torchvision."""

from __future__ import annotations

import pytest
import torch

import xaibench.explainers
import xaibench.metrics
from xaibench.baselines import gaussian_blur, make_baseline


def _images():
    # sample 0: values 0..23, sample 1: 2 * (0..23) + 1; (N, C, H, W) = (2, 2, 3, 4)
    base = torch.arange(24, dtype=torch.float64).view(1, 2, 3, 4)
    return torch.cat([base, 2 * base + 1])


def test_one_definition_for_explainers_and_metrics():
    assert xaibench.explainers.make_baseline is make_baseline
    assert xaibench.metrics.make_baseline is make_baseline
    assert xaibench.metrics.gaussian_blur is gaussian_blur


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        (0.25, (0.25, 0.25)),
        ("mean", (11.5, 24.0)),  # per sample over all channels and positions
        ("min", (0.0, 1.0)),
        ("max", (23.0, 47.0)),
    ],
)
def test_deterministic_baselines_by_hand(kind, values):
    x = _images()
    b = make_baseline(x, kind)
    assert b.shape == x.shape  # full shape, as Captum's baselines need
    assert torch.equal(b[0], torch.full_like(x[0], values[0]))
    assert torch.equal(b[1], torch.full_like(x[1], values[1]))
    assert 0 in b.stride()  # an expanded view: no memory per pixel


def test_tensor_and_random_baselines():
    x = _images()
    per_channel = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    assert torch.equal(make_baseline(x, per_channel)[1, :, 2, 3], torch.tensor([1.0, 2.0]).double())
    u = make_baseline(x, "uniform", seed=0)
    assert u.shape == x.shape and bool((u[1] >= 1).all() and (u[1] <= 47).all())
    assert not torch.equal(u[0], u[0, :1].expand_as(u[0]))  # drawn per element
    with pytest.raises(ValueError, match=r"baseline tensor \(3,\) does not broadcast to images"):
        make_baseline(x, torch.zeros(3))
    with pytest.raises(
        ValueError,
        match=r"baseline='zeros' is unknown; give a number, a tensor or one of \['mean', 'min'",
    ):
        make_baseline(x, "zeros")
    with pytest.raises(
        ValueError, match=r"baseline='blur' needs images \(N,C,H,W\), got \(2, 24\)"
    ):
        make_baseline(x.flatten(1), "blur")


def test_blur_matches_torchvision():
    from torchvision.transforms import GaussianBlur

    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    ours = gaussian_blur(x, 1.5, kernel_size=5)
    torch.testing.assert_close(ours, GaussianBlur(5, 1.5)(x), rtol=1e-5, atol=1e-6)
    # the "blur" baseline: σ = 5 px, 4σ+1 = 21 taps
    big = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        make_baseline(big, "blur"), GaussianBlur(21, 5.0)(big), rtol=1e-5, atol=1e-6
    )
    const = torch.full((1, 2, 5, 6), 0.3, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(const, 5.0), const)  # smaller than the kernel


def test_expanded_fill_scores_like_a_materialised_one():
    # the engine indexes the compact form of an expanded fill; values must not change
    from metrics_testing import LinearModel

    model = LinearModel(48)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, 4, 4, dtype=torch.float64, generator=g)
    h = torch.rand(4, 1, 4, 4, dtype=torch.float64, generator=g)
    y = torch.tensor([0, 1, 2, 0])
    for kind in (0.4, "mean", "noise"):
        fill = make_baseline(x, kind, seed=1)
        kw = {"step": 0.1, "score": "logit"}
        a = xaibench.metrics.msi(model, x, h, y, baseline=fill, **kw)
        b = xaibench.metrics.msi(model, x, h, y, baseline=fill.clone(), **kw)
        assert torch.equal(a["show_curve"], b["show_curve"]), kind
        assert torch.equal(a["hide_curve"], b["hide_curve"]), kind
