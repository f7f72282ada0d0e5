"""Every bad input gets a ValueError that names the problem (messages asserted)."""

from __future__ import annotations

import pytest
import torch
from metrics_testing import heatmap_from, region_setup

from xaibench.metrics import get_metric, localization, msi


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
