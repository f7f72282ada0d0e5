"""ROAD (``xaibench.metrics.road``) against pytorch-grad-cam 1.5.7's ROAD, its noise, Quantus#333.

The reference adds numpy-global noise, so each comparison runs both sides
with noise 0 (grad-cam's imputer has a ``noise`` attribute); the noise is
tested on its own (per sample, batch-order free, the stated std).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.perturbation_confidence import (
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import (
    NoisyLinearImputer,
    ROADLeastRelevantFirst,
    ROADMostRelevantFirst,
)
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)
from torch import nn

from xaibench.metrics import entry_spec, get_metric, metric_direction
from xaibench.metrics.road import (
    noisy_linear_imputation,
    numpy_percentile,
    removal_masks,
    road,
    road_noise,
    solve_imputation,
)

PS = (10, 30, 50, 70, 90)
TOL_PIXELS = 1e-4  # float32 solve at rtol=1e-5 vs SciPy's float64 spsolve; measured ~2e-5
TOL_SCORES = 1e-4  # softmax probabilities; measured ~1e-7


def tiny_net() -> nn.Module:
    """A small random conv net whose softmax is far from flat (its last layer scaled up)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5),
    ).eval()  # fmt: skip
    with torch.no_grad():
        net[-1].weight.mul_(40)
    return net


def smooth_heatmaps(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    """``(n, 1, h, w)`` in [0, 1]; sample 1 has 30% zeros (MoRF at 10 and 30 impute every
    pixel, SciPy's system is then singular), sample 2 has 8 levels only (ties at thresholds)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 5, 5, generator=g)
    heat = nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    lo, hi = heat.amin((2, 3), keepdim=True), heat.amax((2, 3), keepdim=True)
    heat = (heat - lo) / (hi - lo)
    if n > 1:
        heat[1] = (heat[1] - heat[1].quantile(0.3)).clamp_min(0) / (1 - heat[1].quantile(0.3))
    if n > 2:
        heat[2] = torch.round(heat[2] * 7) / 7
    return heat


@pytest.fixture(scope="module")
def batch():
    model = tiny_net()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    heatmaps = smooth_heatmaps(4, 32, 32)
    with torch.no_grad():
        targets = model(images).argmax(1)
    return model, images, heatmaps, targets


def test_numpy_percentile_is_numpy_bit_for_bit():
    rows = torch.rand(6, 257, generator=torch.Generator().manual_seed(0))
    rows[3] = torch.round(rows[3] * 4) / 4  # ties
    rows[4, :100] = 0.0
    for dtype in (torch.float32, torch.float64):
        srt = rows.to(dtype).sort(dim=1).values
        for p in (0, 10, 12.5, 33.3, 50, 66.7, 90, 99.9, 100):
            ours = numpy_percentile(srt, p).numpy()
            ref = np.array([np.percentile(r, p) for r in rows.to(dtype).numpy()])
            assert ours.dtype == ref.dtype and np.array_equal(ours, ref), (dtype, p)


@pytest.mark.parametrize(("order", "remove"), [("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst)])  # fmt: skip
def test_removal_masks_are_gradcams(order, remove):
    heat = smooth_heatmaps(4, 16, 20)
    ours = removal_masks(heat, PS, order)
    for i in range(4):
        for j, p in enumerate(PS):
            # grad-cam hands its imputer the binary mask of kept pixels
            kept = remove(p, lambda img, mask: mask)(None, torch.from_numpy(heat[i, 0].numpy()))
            assert torch.equal(ours[i, j], kept == 0), (i, p)
    assert ours[1, 0].all() == (order == "morf")  # sample 1's 30% zeros: MoRF at 10 imputes all


@pytest.mark.parametrize("size", [(32, 32), (13, 18)])
def test_imputation_matches_gradcam(size):
    h, w = size
    images = torch.rand(4, 3, h, w, generator=torch.Generator().manual_seed(3))
    removed = removal_masks(smooth_heatmaps(4, h, w), PS, "morf").flatten(0, 1)  # (4K, H, W)
    images = images.repeat_interleave(len(PS), 0)
    ref = torch.stack(
        [
            NoisyLinearImputer(noise=0.0)(x, (~m).float())
            for x, m in zip(images, removed, strict=True)
        ]
    )
    ours, iterations = solve_imputation(images, removed)
    assert (ours - ref).abs().max() < TOL_PIXELS
    assert iterations <= 30
    kept = ~removed[:, None].expand_as(ours)
    assert torch.equal(ours[kept], images[kept])
    k = len(PS)
    assert removed[k].all() and (ours[k] == 0).all()  # sample 1 at p=10: every pixel, zeros
    # the same linear system as SciPy's: float64 solve to 1e-10 agrees to 1e-7
    exact, _ = solve_imputation(images.double(), removed, rtol=1e-10, max_iter=200)
    assert (exact - ref.double()).abs().max() < 1e-6


def test_all_pixels_removed_gives_zeros_like_scipy():
    images = torch.rand(2, 3, 9, 12, generator=torch.Generator().manual_seed(4))
    removed = torch.ones(2, 9, 12, dtype=torch.bool)
    ours, iterations = solve_imputation(images, removed)
    ref = NoisyLinearImputer(noise=0.0)(images[0], torch.zeros(9, 12))
    assert iterations == 0 and (ours == 0).all() and (ref == 0).all()


def _gradcam_curves(batch, target_cls, percentiles=PS):
    model, images, heatmaps, targets = batch
    cams = heatmaps[:, 0].numpy()
    tg = [target_cls(int(t)) for t in targets]
    curves = []
    for cls in (ROADMostRelevantFirst, ROADLeastRelevantFirst):
        rows = []
        for p in percentiles:
            metric = cls(percentile=p)
            metric.perturbation.imputer.noise = 0.0
            rows.append(metric(images, cams, tg, model))
        curves.append(np.stack(rows, axis=1))
    return curves


@pytest.mark.parametrize(
    ("score", "target_cls"),
    [("probability", ClassifierOutputSoftmaxTarget), ("logit", ClassifierOutputTarget)],
)
def test_road_matches_gradcam(batch, score, target_cls):
    model, images, heatmaps, targets = batch
    morf, lerf = _gradcam_curves(batch, target_cls)
    out = road(model, images, heatmaps, targets, percentiles=PS, noise=0.0, score=score)
    tol = TOL_SCORES if score == "probability" else 1e-3
    np.testing.assert_allclose(out["road_morf_curve"].numpy(), morf, rtol=0, atol=tol)
    np.testing.assert_allclose(out["road_lerf_curve"].numpy(), lerf, rtol=0, atol=tol)
    # the means and the combination of grad-cam's *Average classes and ROADCombined
    morf_avg, lerf_avg = np.mean(np.float32(morf), axis=1), np.mean(np.float32(lerf), axis=1)
    np.testing.assert_allclose(out["road_morf"].numpy(), morf_avg, rtol=0, atol=tol)
    np.testing.assert_allclose(out["road"].numpy(), (lerf_avg - morf_avg) / 2, rtol=0, atol=tol)
    assert np.abs(morf).max() > 1e-3  # the comparison is not between zeros


def test_noise_is_per_sample_and_batch_order_free(batch):
    model, images, heatmaps, targets = batch
    idx = torch.tensor([7, 3, 11, 0])
    perm = torch.tensor([2, 0, 3, 1])
    kw = {"percentiles": PS, "seed": 5}
    a = road(model, images, heatmaps, targets, indices=idx, **kw)
    b = road(model, images[perm], heatmaps[perm], targets[perm], indices=idx[perm], **kw)
    c = road(model, images, heatmaps, targets, indices=idx, solve_batch=3, batch_size=2, **kw)
    for key in ("road", "road_morf_curve", "road_lerf_curve"):
        torch.testing.assert_close(b[key], a[key][perm], rtol=0, atol=1e-6)
        torch.testing.assert_close(c[key], a[key], rtol=0, atol=1e-6)
    # the draws are exactly a function of (seed, index, stream)
    stream = torch.tensor([1, 2, 3, 4])
    draws = road_noise(5, idx, stream, (3, 8, 8))
    torch.testing.assert_close(
        road_noise(5, idx[perm], stream[perm], (3, 8, 8)), draws[perm], rtol=0, atol=0
    )
    other = road(model, images, heatmaps, targets, indices=idx + 1, **kw)
    assert not torch.allclose(other["road_morf_curve"], a["road_morf_curve"])


def test_noise_has_the_stated_std_on_removed_pixels_only():
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    removed = removal_masks(smooth_heatmaps(6, 32, 32), [50], "morf")[:, 0]
    clean = noisy_linear_imputation(images, removed, noise=0.0)
    noisy = noisy_linear_imputation(images, removed, noise=0.01, seed=1)
    delta = noisy - clean
    on = removed[:, None].expand_as(delta)
    assert (delta[~on] == 0).all()
    assert abs(float(delta[on].std()) - 0.01) < 0.0005 and abs(float(delta[on].mean())) < 0.0005


class QuadrantNet(nn.Module):
    """Class 0 iff the top-left quadrant is bright, else 1; never 2.

    Logits ``(40·(mean(top-left) - 0.15), 0, -10)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        quad = x[:, :, :h, :w].mean((1, 2, 3))
        zero = torch.zeros_like(quad)
        return torch.stack([40 * (quad - 0.15), zero, zero - 10], dim=1)


def test_quantus_333_road_is_not_zero():
    # Quantus#333: "ROAD returns 0 all the time". Quantus scores each percentage by the
    # accuracy of argmax(model(imputed)) against the labels, so a batch whose labels the
    # model does not predict is 0 at every percentage, whatever the explanation, and its
    # tests only check that values lie in [0, 1]. grad-cam's score, our default, moves.
    g = torch.Generator().manual_seed(7)
    images = 0.1 * torch.rand(3, 3, 32, 32, generator=g)
    images[:, :, 4:12, 4:12] = 1.0  # the evidence for class 0
    good = 0.1 * torch.rand(3, 1, 32, 32, generator=g)  # distinct values everywhere
    good[:, :, 2:14, 2:14] += 0.5  # a ring around the square, the square on top
    good[:, :, 4:12, 4:12] += 0.3
    good /= good.amax((2, 3), keepdim=True)
    inverse = 1 - good
    model, labels = QuadrantNet(), torch.zeros(3, dtype=torch.long)
    kw = {"percentiles": PS, "seed": 0}
    out, out_inv = (road(model, images, h, labels, **kw) for h in (good, inverse))
    # removing the most relevant pixels (the square, 6% of the image) kills class 0
    assert (out["road_morf_curve"] < -0.9).all()
    assert (out["road_lerf_curve"][:, -1:] > -0.1).all()  # LeRF at 90 keeps the square
    assert (out["road"] > 0.3).all() and (out["road"] > out_inv["road"] + 0.3).all()
    # Quantus's definition (accuracy against the labels, no difference) with labels the model
    # never predicts: 0 at every percentile for the good and the inverted heatmap alike
    never = torch.full((3,), 2)
    for h in (good, inverse):
        acc = road(model, images, h, never, score="accuracy", difference=False, **kw)
        assert (acc["road_morf_curve"] == 0).all() and (acc["road_lerf_curve"] == 0).all()
    # scored on the model's own prediction, as grad-cam's users do, the explanations separate
    pred = [
        road(model, images, h, never, target="predicted", **kw)["road"] for h in (good, inverse)
    ]
    assert (pred[0] > pred[1] + 0.3).all()


def test_registration_and_errors(batch):
    model, images, heatmaps, targets = batch
    assert get_metric("road") is road
    spec = entry_spec(road)
    assert spec.needs == ("indices",) and spec.keys == ("road", "road_morf", "road_lerf")
    assert metric_direction("road") is True and metric_direction("road", "road_morf") is False
    with pytest.raises(ValueError, match=r"ROAD imputes whole pixels: give images \(N, C, H, W\) "
                       r"and heatmaps \(N, 1, H, W\); got images \(4, 3, 32, 32\) and heatmaps \(4, 3, 32, 32\)"):  # fmt: skip
        road(model, images, heatmaps.expand_as(images), targets)
    with pytest.raises(ValueError, match=r"solve_batch=2.5 must be a positive integer"):
        road(model, images, heatmaps, targets, solve_batch=2.5)
    with pytest.raises(ValueError, match=r"percentiles=\[10, 120\] must be a non-empty list"):
        road(model, images, heatmaps, targets, percentiles=[10, 120])
    with pytest.raises(ValueError, match=r"noise=-0.1 must be a number >= 0"):
        road(model, images, heatmaps, targets, noise=-0.1)
    with pytest.raises(ValueError, match=r"score='auc' is unknown"):
        road(model, images, heatmaps, targets, score="auc")
    with pytest.warns(RuntimeWarning, match=r"ROAD imputation stopped at max_iter=1"):
        road(model, images[:1], heatmaps[:1], targets[:1], percentiles=[50], max_iter=1)


def test_bench_road_runs_and_agrees(monkeypatch):
    path = Path(__file__).parents[1] / "scripts" / "bench_road.py"
    spec = importlib.util.spec_from_file_location("bench_road", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    res = module.bench_road("cpu", n=1, size=16, model="tiny", percentiles=(30, 70))
    assert res["max_abs_diff_scores"] < TOL_SCORES and res["max_abs_diff_images"] < TOL_PIXELS
    assert res["ours_img_s"] > 0 and res["gradcam_img_s"] > 0 and res["quantus_img_s"] > 0
