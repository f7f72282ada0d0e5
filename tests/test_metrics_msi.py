"""MSI against hand-computed answers (α_min = 0.5, step = 0.1: grid 0.5, 0.6, …, 1.0)."""

from __future__ import annotations

import pytest
import torch
from metrics_testing import LinearModel, heatmap_from, region_setup

from xaibench.metrics import msi

A, STEP = 0.5, 0.1


def run(h, **kw):
    model, images, targets, _ = region_setup(n=h.shape[0])
    return msi(model, images, h, targets, alpha_min=A, step=STEP, **kw)


def expect(out, *, msi_, base, penalty, show, hide):
    n = out["msi"].shape[0]
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(out["show_curve"], t(show).expand(n, -1))
    torch.testing.assert_close(out["hide_curve"], t(hide).expand(n, -1))
    torch.testing.assert_close(out["base_score"], t(base).expand(n))
    torch.testing.assert_close(out["mask_penalty"], t(penalty).expand(n))
    torch.testing.assert_close(out["msi"], t(msi_).expand(n))


def test_alphas_grid():
    _, _, _, region = region_setup()
    out = run(heatmap_from(region, 1.0, 0.0))
    torch.testing.assert_close(out["alphas"], torch.linspace(0.5, 1.0, 6, dtype=torch.float64))


def test_perfect_mask():
    # Show(>α) keeps the region for α < 1, nothing at α = 1: AUC_show = (4 + ½)/5 = 0.9;
    # Hide keeps the region only at α = 1: AUC_hide = ½/5 = 0.1; Show(>½) - Show(≤½) = 1.
    _, _, _, region = region_setup()
    out = run(heatmap_from(region, 1.0, 0.0))
    expect(
        out,
        base=0.9,
        penalty=4 / 16,
        msi_=0.9 - 0.25,
        show=[1, 1, 1, 1, 1, 0],
        hide=[0, 0, 0, 0, 0, 1],
    )


def test_full_mask():
    # as the perfect mask, but Show(≤½) keeps nothing (still 0) and the penalty is 1
    _, _, _, region = region_setup()
    out = run(heatmap_from(region, 1.0, 1.0))
    expect(out, base=0.9, penalty=1.0, msi_=-0.1, show=[1, 1, 1, 1, 1, 0], hide=[0, 0, 0, 0, 0, 1])


def test_inverted_mask():
    # nothing above α_min helps; the complement (the region) is sufficient: base = ½(0 - 1 + 0)
    _, _, _, region = region_setup()
    out = run(heatmap_from(region, 0.0, 1.0))
    expect(out, base=-0.5, penalty=12 / 16, msi_=-1.25, show=[0] * 6, hide=[0] * 6)


def test_values_on_alpha_min():
    # h = α_min on the region: Show(>α) is strict (never keeps it), Show(≤α_min) and
    # Hide(α_min ≤ h ≤ α) keep it everywhere, and the penalty counts it (h ≥ α_min)
    _, _, _, region = region_setup()
    out = run(heatmap_from(region, 0.5, 0.0))
    expect(out, base=-1.0, penalty=0.25, msi_=-1.25, show=[0] * 6, hide=[1] * 6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_on_grid_point(dtype):
    # h = 0.7 on the region: Show(>0.7) is false at the grid point 0.7 and Hide(≤0.7) true,
    # also for float32 0.7 (0.699999988). AUC_show = (1 + ½)·0.1/0.5 = 0.3, AUC_hide = 3.5·0.1/0.5 = 0.7
    _, _, _, region = region_setup()
    h = heatmap_from(region, 0.7, 0.0).to(dtype)
    out = run(h)
    expect(
        out,
        base=0.5 * (1 + 0.3 - 0.7),
        penalty=0.25,
        msi_=0.3 - 0.25,
        show=[1, 1, 0, 0, 0, 0],
        hide=[0, 0, 1, 1, 1, 1],
    )


@pytest.mark.parametrize(
    ("value", "base", "penalty", "show", "hide"),
    [
        (0.3, -0.5, 0.0, [0] * 6, [0] * 6),  # below α_min: only the complement (everything) shows
        (0.5, -1.0, 1.0, [0] * 6, [1] * 6),  # on α_min: MSI = -2, the theoretical minimum
        (1.0, 0.9, 1.0, [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]),
    ],
)
def test_constant_maps(value, base, penalty, show, hide):
    _, _, _, region = region_setup()
    out = run(heatmap_from(region, value, value))
    expect(out, base=base, penalty=penalty, msi_=base - penalty, show=show, hide=hide)


def test_channel_heatmap_matches_broadcast():
    model, images, targets, region = region_setup(channels=3)
    h1 = heatmap_from(region, 1.0, 0.0)
    a = msi(model, images, h1, targets, alpha_min=A, step=STEP)
    b = msi(model, images, h1.expand(-1, 3, -1, -1), targets, alpha_min=A, step=STEP)
    torch.testing.assert_close(a["base_score"], b["base_score"])
    torch.testing.assert_close(a["mask_penalty"], b["mask_penalty"])


def test_confidence_and_predicted_targets():
    torch.manual_seed(0)
    model = LinearModel(16)
    images = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    h = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    preds = model(images).argmax(1)
    a = msi(
        model,
        images,
        h,
        torch.zeros(5, dtype=torch.int64),
        target="predicted",
        score="confidence",
        step=0.1,
    )
    b = msi(model, images, h, preds, score="confidence", step=0.1)
    torch.testing.assert_close(a["msi"], b["msi"])
    assert ((a["show_curve"] > 0) & (a["show_curve"] < 1)).all()


def test_does_not_mutate_inputs():
    model, images, targets, region = region_setup()
    h = heatmap_from(region, 1.0, 0.0)
    snap = (images.clone(), h.clone(), targets.clone())
    msi(model, images, h, targets, alpha_min=A, step=STEP)
    for before, after in zip(snap, (images, h, targets), strict=True):
        assert torch.equal(before, after)
