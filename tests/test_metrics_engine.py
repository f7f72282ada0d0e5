"""Engine: chunk-size invariance, de-duplication exactness, seeding independent of batching."""

from __future__ import annotations

import pytest
import torch
from metrics_testing import LinearModel

from xaibench.metrics import (
    descending_ranks,
    evaluate_variants,
    ffidelity,
    get_metric,
    make_baseline,
    paper_columns,
    per_sample_rand,
    sample_seed,
)
from xaibench.metrics.seeding import counter_uniform


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(7)
    model = LinearModel(2 * 6 * 6, classes=4)
    images = torch.rand(9, 2, 6, 6, generator=g, dtype=torch.float64)
    h = torch.rand(9, 1, 6, 6, generator=g, dtype=torch.float64).round(decimals=2)
    return model, images, h, model(images).argmax(1)


@pytest.mark.parametrize("name", ["paper", "ffidelity"])
def test_identical_for_batch_sizes_1_7_64(batch, name):
    model, images, h, y = batch
    kw = {"num_masks": 2, "step": 0.25} if name == "ffidelity" else {"step": 0.1}
    runs = [
        get_metric(name)(model, images, h, y, score="confidence", batch_size=b, **kw)
        for b in (1, 7, 64)
    ]
    for other in runs[1:]:
        for key, value in runs[0].items():
            torch.testing.assert_close(other[key], value, rtol=1e-12, atol=1e-12, msg=key)


def test_dedup_changes_no_value(batch):
    model, images, h, y = batch
    ranks = descending_ranks(h)
    ranges = (
        torch.randint(0, 37, (9, 20, 2), generator=torch.Generator().manual_seed(0)).sort(-1).values
    )
    ranges[:, 10:] = ranges[:, :10]  # every range twice
    from xaibench.metrics import evaluate_ranges

    fill = make_baseline(images, "mean")
    a = evaluate_ranges(model, images, y, ranks, ranges, fill=fill, score="logit", dedup=True)
    b = evaluate_ranges(model, images, y, ranks, ranges, fill=fill, score="logit", dedup=False)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_keys_shape_checked(batch):
    model, images, h, y = batch
    with pytest.raises(ValueError, match=r"keys \(9, 2\) must be \(N, K\) = \(9, 3\)"):
        evaluate_variants(
            model,
            images,
            y,
            lambda s, k: torch.ones(1, dtype=torch.bool),
            3,
            fill=images.new_zeros(1),
            keys=torch.zeros(9, 2),
        )


def test_ranks_stable_descending():
    h = torch.tensor([[0.2, 0.9, 0.2, 0.5]])
    assert descending_ranks(h).tolist() == [[2, 0, 3, 1]]


def test_seeding_depends_only_on_seed_and_index():
    assert sample_seed(0, 5) == sample_seed(0, 5) != sample_seed(1, 5)
    a = per_sample_rand(3, torch.tensor([4, 9]), (5,))
    b = per_sample_rand(3, torch.tensor([9]), (5,))
    assert torch.equal(a[1:], b)
    u = counter_uniform(3, torch.tensor([4, 9, 9]), torch.tensor([0, 0, 1]), 1000)
    assert torch.equal(u[1], counter_uniform(3, torch.tensor([9]), torch.tensor([0]), 1000)[0])
    assert (u >= 0).all() and (u < 1).all() and abs(float(u.mean()) - 0.5) < 0.03
    assert not torch.equal(u[1], u[2])


def test_random_baseline_per_sample(batch):
    _, images, _, _ = batch
    full = make_baseline(images, "noise", seed=1)
    part = make_baseline(images[3:], "noise", seed=1, indices=torch.arange(3, 9))
    torch.testing.assert_close(full[3:], part)


def test_ffidelity_by_hand():
    # region model on ones: removing any region pixel flips the prediction. With the
    # region at the top of the ranking, FFid+ > 0; bottom-k only touches the region at 100 %.
    from metrics_testing import heatmap_from, region_setup

    model, images, targets, region = region_setup()
    out = ffidelity(model, images, heatmap_from(region, 0.9, 0.1), targets, step=0.25, num_masks=20)
    assert out["ffid_plus"].shape == (2,) and out["ffid_plus_curve"].shape == (2, 4)
    assert (out["ffid_plus"] > 0.3).all()
    # bottom 25/50/75 %: 4/8/12 lowest positions, none in the region -> no drop
    assert torch.equal(out["ffid_minus_curve"][:, :3], torch.zeros(2, 3, dtype=torch.float64))
    torch.testing.assert_close(
        out["sparsities"], torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    )


def test_paper_constant_baseline_matches_tensor(batch):
    model, images, h, y = batch
    a = paper_columns(model, images, h, y, step=0.1, score="confidence", baseline="mean")
    b = paper_columns(
        model, images, h, y, step=0.1, score="confidence", baseline=make_baseline(images, "mean")
    )
    torch.testing.assert_close(a["msi"], b["msi"])
