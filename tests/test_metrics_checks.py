"""Every bad input gets a ValueError that names the problem (messages asserted)."""

from __future__ import annotations

import pytest
import torch
from metrics_testing import heatmap_from, region_setup

from xaibench.metrics import METRICS, get_metric, inverse, localization, msi, prepare_batch
from xaibench.models import resnet18


def _good():
    model, images, targets, region = region_setup()
    return model, images, heatmap_from(region, 1.0, 0.0), targets


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m, x, h, y: (m, x, h * 2, y), r"heatmaps must lie in \[0, 1\], got \[0, 2\]"),
        (
            lambda m, x, h, y: (m, x, h - 0.5, y),
            r"heatmaps must lie in \[0, 1\], got \[-0.5, 0.5\]",
        ),
        (
            lambda m, x, h, y: (m, x, h.masked_fill(h > 0.5, float("nan")), y),
            r"heatmaps contain 8 non-finite values \(NaN/inf\)",
        ),
        (
            lambda m, x, h, y: (m, x, h[:, :, :3], y),
            r"heatmaps \(2, 1, 3, 4\) must be \(2, 1, 4, 4\) to match images \(2, 1, 4, 4\)",
        ),
        (lambda m, x, h, y: (m, x, h[:1], y), r"heatmaps \(1, 1, 4, 4\) must be"),
        (
            lambda m, x, h, y: (m, x, h, y + 5),
            r"targets out of range: got values in \[6, 6\] but the model has 2 classes",
        ),
        (lambda m, x, h, y: (m, x, h, y - 2), r"targets out of range: got values in \[-1, -1\]"),
        (lambda m, x, h, y: (m, x, h, y[:1]), r"targets \(1,\) must be \(2,\)"),
        (lambda m, x, h, y: (m, x, h, y.double()), "targets must be integer class indices"),
        (lambda m, x, h, y: (m, x[:0], h[:0], y[:0]), "empty batch: images has N = 0"),
        (lambda m, x, h, y: (m, x.numpy(), h, y), "images must be a torch.Tensor"),
    ],
)
def test_bad_inputs(change, message):
    args = change(*_good())
    with pytest.raises((ValueError, TypeError), match=message):
        msi(*args, step=0.1)


@pytest.mark.parametrize("alpha_min", [0.0, 1.0, -0.2, 1.5])
def test_alpha_min_outside(alpha_min):
    with pytest.raises(ValueError, match=rf"alpha_min must be in \(0, 1\), got {alpha_min}"):
        msi(*_good(), alpha_min=alpha_min, step=0.1)


def test_step_must_divide():
    with pytest.raises(
        ValueError,
        match=r"step=0.03 does not divide 1 - alpha_min = 0.5 \(0.5 / 0.03 = 16.67 steps\)",
    ):
        msi(*_good(), alpha_min=0.5, step=0.03)
    with pytest.raises(ValueError, match=r"step must be in \(0, 0.5\], got 0"):
        msi(*_good(), alpha_min=0.5, step=0)


def test_unknown_score_and_target():
    with pytest.raises(ValueError, match=r"score='acc' is unknown; choose one of \['accuracy'"):
        msi(*_good(), score="acc", step=0.1)
    with pytest.raises(
        ValueError, match=r"target='pred' is unknown; choose one of \['label', 'predicted'\]"
    ):
        msi(*_good(), target="pred", step=0.1)


def test_unknown_metric_suggests():
    with pytest.raises(
        ValueError, match=r"unknown metric 'mis'\. Did you mean 'msi'\? Known: .*msi"
    ):
        get_metric("mis")


def test_mask_errors():
    model, images, h, targets = _good()
    with pytest.raises(
        ValueError, match=r"masks \(2, 1, 3, 3\) must match heatmaps \(2, 1, 4, 4\)"
    ):
        localization(model, images, h, targets, masks=torch.zeros(2, 1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="masks must be bool, got torch.float32"):
        localization(model, images, h, targets, masks=torch.zeros(2, 1, 4, 4))


def _float32_setup():
    model = resnet18(3, width=0.125, stem="stride2").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    return model, x, torch.rand(2, 1, 16, 16, generator=g), torch.tensor([0, 1])


@pytest.mark.parametrize(
    "name", ["msi", "paper", "ffidelity", "faithfulness_correlation", "region_perturbation"]
)
def test_image_dtype_must_match_the_model(name):
    model, x, h, y = _float32_setup()
    kw = METRICS.meta(name)["smoke"]
    with pytest.raises(
        ValueError,
        match=r"^images are float64 but the model's parameters are float32; "
        r"use images\.float\(\) or model\.double\(\)$",
    ):
        get_metric(name)(model, x.double(), h, y, **kw)
    with pytest.raises(
        ValueError,
        match=r"^images are float16 but the model's parameters are float32; "
        r"use images\.float\(\) or model\.half\(\)$",
    ):
        prepare_batch(model, x.half(), h, y)
    with pytest.raises(
        ValueError,
        match=r"^images are uint8 but the model's parameters are float32; use images\.float\(\)$",
    ):
        prepare_batch(model, (x * 255).to(torch.uint8), h, y)


def test_either_fix_of_a_dtype_mismatch_works():
    model, x, h, y = _float32_setup()
    kw = {"step": 0.1, "score": "confidence"}
    as_float = msi(model, x.double().float(), h, y, **kw)["msi"]
    as_double = msi(model.double(), x.double(), h, y, **kw)["msi"]
    assert as_float.dtype == torch.float32 and as_double.dtype == torch.float64
    torch.testing.assert_close(as_double, as_float.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_images_refused(bad):
    model, x, h, y = _float32_setup()
    x[1, 2, 3, 4] = bad
    x[0, 0, 0, 0] = bad
    message = r"images contain 2 non-finite values \(NaN/inf\); clean the data first"
    with pytest.raises(ValueError, match=message):
        msi(model, x, h, y, step=0.1)
    with pytest.raises(ValueError, match=message):
        get_metric("faithfulness_deletion")(model, x, h, y, variant="deepfaith")
    with pytest.raises(ValueError, match=message):
        localization(None, x, h, y, masks=h > 0.5)
    with pytest.raises(ValueError, match=r"heatmaps contain 1 non-finite values"):
        inverse(h.masked_fill(h == h.max(), bad))
