"""Insertion / Deletion / Fid± by hand, the shared paper call, and engine de-duplication."""

from __future__ import annotations

import pytest
import torch
from metrics_testing import LinearModel, heatmap_from, region_setup

from xaibench.metrics import forward_counts, insertion_deletion, msi, paper_columns, plan_paper

T = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_value_mode_perfect_mask():
    # α = 1.0, 0.9, …, 0: insertion keeps h > α (nothing at α = 1, the region after),
    # deletion keeps h ≤ α (everything at α = 1, never the region after)
    model, images, targets, region = region_setup()
    out = insertion_deletion(
        model, images, heatmap_from(region, 1.0, 0.0), targets, mode="value", step=0.1
    )
    torch.testing.assert_close(out["insertion_curve"][0], T([0] + [1] * 10))
    torch.testing.assert_close(out["deletion_curve"][0], T([1] + [0] * 10))
    torch.testing.assert_close(out["insertion"], T([0.95, 0.95]))
    torch.testing.assert_close(out["deletion"], T([0.05, 0.05]))
    torch.testing.assert_close(out["fid_minus"], T([1 / 11, 1 / 11]))
    torch.testing.assert_close(out["fid_plus"], T([10 / 11, 10 / 11]))
    torch.testing.assert_close(out["steps"], torch.linspace(1, 0, 11, dtype=torch.float64))


def test_percent_mode_perfect_mask():
    # 16 positions, region = the top 4: top 0/4/8/12/16 kept or removed
    model, images, targets, region = region_setup()
    out = insertion_deletion(
        model, images, heatmap_from(region, 0.9, 0.1), targets, mode="percent", step=0.25
    )
    torch.testing.assert_close(out["insertion_curve"][0], T([0, 1, 1, 1, 1]))
    torch.testing.assert_close(out["deletion_curve"][0], T([1, 0, 0, 0, 0]))
    torch.testing.assert_close(out["insertion"], T([0.875, 0.875]))
    torch.testing.assert_close(out["fid_plus"], T([0.8, 0.8]))


def test_percent_mode_ties_are_stable():
    # constant map: the stable order keeps the first k positions in row-major order;
    # the region (top-left 2×2) is complete only once its last pixel (index 5) is in
    model, images, targets, region = region_setup()
    out = insertion_deletion(
        model, images, heatmap_from(region, 0.5, 0.5), targets, mode="percent", step=0.125
    )
    # k = 0, 2, 4, 6, …: positions 0..5 cover the region from k = 6 on
    torch.testing.assert_close(out["insertion_curve"][0], T([0, 0, 0, 1, 1, 1, 1, 1, 1]))


def test_paper_columns_equal_separate_calls_and_share_passes():
    torch.manual_seed(1)
    model = LinearModel(3 * 8 * 8)
    images = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    h = torch.rand(6, 1, 8, 8, dtype=torch.float64).round(decimals=1)  # values on the grid
    targets = torch.arange(6) % 3
    kw = {"score": "confidence", "step": 0.1}
    out = paper_columns(model, images, h, targets, alpha_min=0.5, **kw)
    m = msi(model, images, h, targets, alpha_min=0.5, **kw)
    for mode in ("value", "percent"):
        sep = insertion_deletion(model, images, h, targets, mode=mode, **kw)
        for key in ("insertion", "deletion", "fid_minus", "fid_plus"):
            torch.testing.assert_close(out[f"{key}_{mode}"], sep[key])
    for key in ("msi", "base_score", "mask_penalty", "show_curve"):
        torch.testing.assert_close(out[key], m[key])
    counts = forward_counts(plan_paper(h, alpha_min=0.5, step=0.1), h)
    # MSI (13) + value (23) + percent (23) variants per sample; Show ≡ insertion at α ≥ 0.5 etc.
    assert counts["naive"] == 6 * (13 + 23 + 23)
    assert counts["shared"] < counts["per_metric"] < counts["naive"]


def test_dedup_forward_rows_and_values():
    # a binary map: every α in (0, 1) keeps the same pixels, so value mode needs 4 distinct
    # inputs per sample (empty, region, full, complement) instead of 2·11 + 1
    model, images, targets, region = region_setup(n=3)
    h = heatmap_from(region, 1.0, 0.0, n=3)
    insertion_deletion(model, images, h, targets, mode="value", step=0.1)
    assert model.rows == 1 + 3 * 4  # one target-range check + 4 distinct variants per sample


@pytest.mark.parametrize("mode", ["value", "percent"])
def test_bad_mode_step(mode):
    model, images, targets, region = region_setup()
    with pytest.raises(ValueError, match=r"step=0.3 does not divide the range \[0, 1\]"):
        insertion_deletion(model, images, heatmap_from(region, 1, 0), targets, mode=mode, step=0.3)
    with pytest.raises(
        ValueError, match=r"mode='top' is unknown; choose one of \['value', 'percent'\]"
    ):
        insertion_deletion(model, images, heatmap_from(region, 1, 0), targets, mode="top")
