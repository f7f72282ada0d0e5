"""Contract tests of the faithfulness family: batch independence, directions, NaN, errors, known answers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from xaibench.metrics import get_metric, metric_direction
from xaibench.metrics.faithfulness import DEEPFAITH_METRICS, QUANTUS_METRICS
from xaibench.metrics.faithfulness.correlation import average_ranks, pearson, spearman

ALL = sorted(set(DEEPFAITH_METRICS) | {"infidelity"})
SMALL = {  # keyword arguments that keep every metric to a few dozen forward passes on 3x8x8 images
    "faithfulness_correlation": {"nr_runs": 6, "subset_size": 20},
    "faithfulness_estimate": {"features_in_step": 24},
    "infidelity": {"perturb_patch_sizes": (4,)},
    "infidelity_correlation": {"nr_runs": 6},
    "monotonicity_correlation": {"features_in_step": 24, "nr_samples": 2},
    "faithfulness_deletion": {"features_in_step": 24},
    "faithfulness_insertion": {"features_in_step": 24},
    "negative_perturbation": {"features_in_step": 24},
    "positive_perturbation": {"features_in_step": 24},
    "region_perturbation": {"regions_evaluation": 24},
    "irof": {"features_in_step": 24},
}


def _variants(name: str) -> list[str]:
    out = ["quantus"] if name in QUANTUS_METRICS else []
    out += ["deepfaith"] if name in DEEPFAITH_METRICS else []
    out += ["rise"] if name in ("faithfulness_deletion", "faithfulness_insertion") else []
    return out


CASES = [(name, v) for name in ALL for v in _variants(name)]


def _kwargs(name: str, variant: str) -> dict:
    kw = dict(SMALL[name], variant=variant)
    if variant == "quantus" and name == "region_perturbation":
        kw.update(patch_size=4, regions_evaluation=3)
    if variant == "rise":
        kw["features_in_step"] = 8
    return kw


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 5),
        )
        .double()
        .eval()
    )
    x = torch.rand(9, 3, 8, 8, dtype=torch.float64)
    h = torch.rand(9, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(9) % 5
    return model, x, h, y


def test_direction_table_covers_all_ten():
    assert len(DEEPFAITH_METRICS) == 10
    expected = {
        "faithfulness_correlation": True,
        "faithfulness_estimate": True,
        "infidelity": False,
        "infidelity_correlation": True,
        "monotonicity_correlation": True,
        "faithfulness_deletion": False,
        "faithfulness_insertion": True,
        "negative_perturbation": True,
        "positive_perturbation": False,
        "region_perturbation": True,
        "irof": True,
    }
    assert {name: metric_direction(name) for name in ALL} == expected


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_batch_size_and_order_do_not_change_values(data, name, variant):
    model, x, h, y = data
    metric = get_metric(name)
    kw = _kwargs(name, variant)
    ref = metric(model, x, h, y, batch_size=64, **kw)
    assert ref[name].shape == (9,)
    for bs in (1, 7):
        out = metric(model, x, h, y, batch_size=bs, **kw)
        for key, value in ref.items():
            torch.testing.assert_close(
                out[key], value, rtol=0, atol=1e-12, equal_nan=True, msg=f"{key} at batch {bs}"
            )
    # a shuffled batch with the same dataset indices gives the same per-sample values
    perm = torch.tensor([4, 0, 8, 2, 6, 1, 3, 7, 5])
    out = metric(model, x[perm], h[perm], y[perm], indices=perm, **kw)
    torch.testing.assert_close(out[name], ref[name][perm], rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize(
    ("name", "value"),
    # a constant map gives constant subset sums for fixed-size subsets; the 50 % masks vary in size, so 0 there
    [
        ("faithfulness_correlation", 0.5),
        ("faithfulness_estimate", 0.5),
        ("infidelity_correlation", 0.0),
    ],
)
def test_constant_heatmap_gives_nan_not_zero(data, name, value):
    model, x, h, y = data
    flat = torch.full_like(h, value)
    variant = "quantus" if name in QUANTUS_METRICS else "deepfaith"
    out = get_metric(name)(model, x, flat, y, **_kwargs(name, variant))
    assert torch.isnan(out[name]).all()


def test_monotonicity_constant_heatmap_nan(data):
    model, x, h, y = data
    out = get_metric("monotonicity_correlation")(
        model, x, torch.full_like(h, 0.3), y, variant="deepfaith", features_in_step=24
    )
    assert torch.isnan(out["monotonicity_correlation"]).all()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda x, h, y: (x, h * 2, y), r"\[0, 1\]"),
        (lambda x, h, y: (x, h.clone().fill_(float("nan")), y), "non-finite"),
        (lambda x, h, y: (x, h[:, :, :4], y), "must be"),
        (lambda x, h, y: (x, h, y + 10), "out of range"),
        (lambda x, h, y: (x[:0], h[:0], y[:0]), "empty batch"),
    ],
)
def test_bad_inputs_raise_clear_errors(data, mutate, message):
    model, x, h, y = data
    x2, h2, y2 = mutate(x, h, y)
    with pytest.raises(ValueError, match=message):
        get_metric("faithfulness_deletion")(
            model, x2, h2, y2, variant="deepfaith", features_in_step=24
        )


def test_quantus_variant_accepts_signed_attributions_but_not_nan(data):
    model, x, h, y = data
    out = get_metric("faithfulness_estimate")(model, x, h - 0.5, y, features_in_step=24)
    assert torch.isfinite(out["faithfulness_estimate"]).all()
    with pytest.raises(ValueError, match="non-finite"):
        get_metric("faithfulness_estimate")(model, x, h.clone().fill_(float("inf")), y)


def test_bad_options_raise(data):
    model, x, h, y = data
    fc = get_metric("faithfulness_correlation")
    with pytest.raises(ValueError, match="variant"):
        fc(model, x, h, y, variant="lax")
    with pytest.raises(ValueError, match="subset_size"):
        fc(model, x, h, y, subset_size=192)
    with pytest.raises(ValueError, match="baseline"):
        fc(model, x, h, y, baseline="grey", subset_size=10)
    with pytest.raises(ValueError, match="infidelity_correlation"):
        get_metric("infidelity")(model, x, h, y, variant="deepfaith")
    with pytest.raises(ValueError, match="variant"):
        get_metric("faithfulness_insertion")(model, x, h, y, variant="quantus")


def test_correlations_match_scipy_definitions():
    a = torch.tensor([[1.0, 2.0, 2.0, 4.0], [3.0, 1.0, 2.0, 5.0]], dtype=torch.float64)
    b = torch.tensor([[2.0, 1.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    assert average_ranks(a)[0].tolist() == [1.0, 2.5, 2.5, 4.0]
    rho = spearman(a, b)
    # row 0 by hand: ranks (1, 2.5, 2.5, 4) vs (2, 1, 3.5, 3.5) -> Pearson of the ranks
    ra = torch.tensor([1.0, 2.5, 2.5, 4.0], dtype=torch.float64)
    rb = torch.tensor([2.0, 1.0, 3.5, 3.5], dtype=torch.float64)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    assert math.isclose(
        float(rho[0]), float((ra * rb).sum() / (ra.norm() * rb.norm())), abs_tol=1e-12
    )
    assert torch.isnan(rho[1]) and torch.isnan(pearson(a, b)[1])


class _MaskModel(nn.Module):
    """Two classes; logit of class 0 = 8 · mean of the left half of channel 0 (class 1 = 0)."""

    def forward(self, x):
        left = x[:, 0, :, : x.shape[3] // 2].mean(dim=(1, 2))
        return torch.stack([8 * left, torch.zeros_like(left)], dim=1)


def test_neg_pos_known_answers():
    """A heatmap on the region the model reads: POS falls fast and freezes, NEG keeps the probability."""
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    good = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    good[..., :2] = torch.linspace(0.5, 1.0, 8, dtype=torch.float64).view(1, 1, 4, 2)
    y = torch.zeros(1, dtype=torch.int64)
    model = _MaskModel()
    pos = get_metric("positive_perturbation")(model, x, good, y, features_in_step=4)
    neg = get_metric("negative_perturbation")(model, x, good, y, features_in_step=4)
    # POS removes the 4 most relevant left pixels first: left mean 0.5 -> p = sigmoid(4); then 0 -> p = ½,
    # argmax ties at 0 (class 0 kept by argmax), so no flip; NEG removes the right half first: p stays sigmoid(8)
    p_full, p_half = torch.sigmoid(torch.tensor(8.0)), torch.sigmoid(torch.tensor(4.0))
    torch.testing.assert_close(
        pos["positive_perturbation_curve"][0, :2].float(), torch.stack([p_half, torch.tensor(0.5)])
    )
    torch.testing.assert_close(
        neg["negative_perturbation_curve"][0, :2].float(), torch.stack([p_full, p_full])
    )
    assert float(neg["negative_perturbation"][0]) > float(pos["positive_perturbation"][0])


def test_rise_deletion_curve_has_start_point_and_unit_area():
    model = _MaskModel()
    x = torch.ones(2, 1, 4, 4, dtype=torch.float64)
    h = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.int64)
    out = get_metric("faithfulness_deletion")(model, x, h, y, variant="rise", features_in_step=4)
    curve = out["deletion_curve"]
    assert curve.shape == (2, 5)  # n + 1 points for n = 16 / 4 steps
    torch.testing.assert_close(
        curve[:, 0], torch.sigmoid(torch.tensor([8.0, 8.0], dtype=torch.float64))
    )
    torch.testing.assert_close(curve[:, -1], torch.full((2,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(out["faithfulness_deletion"], torch.trapezoid(curve, dx=0.25, dim=1))


def test_monotonicity_compat_couples_samples_and_default_does_not(data):
    model, x, h, y = data
    mc = get_metric("monotonicity_correlation")
    kw = {"variant": "deepfaith", "features_in_step": 24}
    full = mc(model, x, h, y, **kw)["monotonicity_correlation"]
    alone = mc(model, x[:3], h[:3], y[:3], **kw)["monotonicity_correlation"]
    torch.testing.assert_close(alone, full[:3], equal_nan=True)
    full_c = mc(model, x, h, y, compat=True, **kw)["variances"]
    alone_c = mc(model, x[:3], h[:3], y[:3], compat=True, **kw)["variances"]
    assert not torch.allclose(alone_c, full_c[:3])


def test_config_lists_every_deepfaith_metric():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[1] / "configs" / "metric" / "faithfulness.yaml")
    assert set(cfg) == set(DEEPFAITH_METRICS)
    for name, entry in cfg.items():
        assert (
            entry._target_.rsplit(".", 1)[1] == name
            and entry._partial_
            and entry.variant == "deepfaith"
        )
