"""DeepFaith's prior explanations: dedup and filter rules by hand, the cached pipeline end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xaibench.data import SyntheticDigitsDataModule
from xaibench.data.datasets import TensorImageDataset
from xaibench.explainers import get_explainer, priors
from xaibench.explainers.priors import (
    build_priors,
    dedup_mask,
    default_filter_metrics,
    filter_mask,
)
from xaibench.metrics.faithfulness import DEEPFAITH_METRICS
from xaibench.metrics.registry import metric_direction
from xaibench.models import resnet18

METHODS = ["saliency", "gradcam", "input_x_gradient", "random"]
GRID = (4, 4)
NAN = float("nan")

# -- dedup_mask ---------------------------------------------------------------


def test_dedup_identical_near_identical_orthogonal():
    a = torch.tensor([1.0, 0.0, 0.0])
    near = torch.tensor([0.99, math.sqrt(1 - 0.99**2), 0.0])  # cos(a, near) = 0.99
    ortho = torch.tensor([0.0, 0.0, 2.0])
    maps = torch.stack(
        [
            torch.stack([a, a, 3 * a]),  # identical (scale does not matter): first only
            torch.stack([a, near, ortho]),  # near-identical dropped, orthogonal kept
            torch.stack([a, ortho, torch.zeros(3)]),  # a zero map has similarity 0: kept
        ]
    )
    keep = dedup_mask(maps, 0.6, centered=False)  # the greedy rule on the plain cosine
    assert keep.tolist() == [[True, False, False], [True, False, True], [True, True, True]]


def test_dedup_is_greedy_against_kept_maps_only():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    b = (e1 + e2) / math.sqrt(2)  # cos(e1, b) = cos(b, e2) = 0.707; cos(e1, e2) = 0
    # A, B~A, C~B: B goes (similar to kept A); C stays (its only similar map, B, was dropped)
    assert dedup_mask(torch.stack([e1, b, e2])[None], 0.6, centered=False).tolist() == [[True, False, True]]
    # B first: B kept, then A and C are both duplicates of the kept B
    assert dedup_mask(torch.stack([b, e1, e2])[None], 0.6, centered=False).tolist() == [[True, False, False]]
    # above the similarity nothing is a duplicate
    assert dedup_mask(torch.stack([e1, b, e2])[None], 0.8, centered=False).tolist() == [[True, True, True]]


def test_dedup_threshold_is_inclusive():
    a, b = torch.tensor([5.0, 0.0]), torch.tensor([3.0, 4.0])  # cos = 3/5 = 0.6 exactly
    assert dedup_mask(torch.stack([a, b])[None], 0.6, centered=False).tolist() == [[True, False]]
    assert dedup_mask(torch.stack([a, b])[None], 0.61, centered=False).tolist() == [[True, True]]


def test_dedup_default_is_centred_cosine():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 1024, generator=g)  # two independent [0, 1] noise maps
    pair = torch.stack([x, y])[None]
    # plain cosine of independent [0, 1] maps is ~0.75: a "duplicate" at 0.6
    assert dedup_mask(pair, 0.6, centered=False).tolist() == [[True, False]]
    assert dedup_mask(pair, 0.6).tolist() == [[True, True]]  # centred: ~0, both kept
    # a map and the same map shifted and scaled are duplicates either way
    assert dedup_mask(torch.stack([x, 0.5 * x + 0.2])[None], 0.6).tolist() == [[True, False]]


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_dedup_threshold_out_of_range(bad):
    with pytest.raises(ValueError, match=r"explainer\.dedup_threshold=.* must lie in \(0, 1\]"):
        dedup_mask(torch.ones(1, 2, 3), bad)


# -- filter_mask --------------------------------------------------------------


def test_filter_by_hand_both_directions():
    # R = 2 metrics: 0 higher-is-better, 1 lower-is-better; p = 0.25
    scores = torch.tensor(
        [
            # 5 candidates: metric 0 sorted [1,2,3,4,5], q.25 = 2 -> pass >= 2: m1 fails;
            # metric 1 sorted [10..50], q.75 = 40 -> pass <= 40: m4 fails
            [[5, 10], [1, 20], [3, 30], [2, 40], [4, 50]],
            # candidates m0, m1, m2, m4 (m3 is not one: its extremes must not move thresholds)
            # metric 0 non-NaN [1, 3, 2]: q.25 = 1.5 -> m0 fails, m1 NaN fails
            # metric 1 [5, 5, 6, 9]: q.75 = 6.75 -> m4 fails; only m2 passes both
            [[1, 5], [NAN, 5], [3, 6], [-100, 0], [2, 9]],
            # all candidates NaN in metric 1: no threshold, none kept
            [[1, NAN], [2, NAN], [3, NAN], [4, NAN], [5, NAN]],
            # a single candidate is its own quantile: kept
            [[0, 0], [7, 7], [0, 0], [0, 0], [0, 0]],
        ],
        dtype=torch.float32,
    )
    candidates = torch.tensor(
        [
            [True, True, True, True, True],
            [True, True, True, False, True],
            [True, True, True, True, True],
            [False, True, False, False, False],
        ]
    )
    keep = filter_mask(scores, [True, False], candidates, quantile=0.25)
    assert keep.tolist() == [
        [True, False, True, True, False],
        [False, False, True, False, False],
        [False, False, False, False, False],
        [False, True, False, False, False],
    ]


def test_filter_direction_flips_the_pass_side():
    scores = torch.tensor([[[1.0], [2.0], [3.0], [4.0], [5.0]]])  # q.2 = 1.8, q.8 = 4.2
    cand = torch.ones(1, 5, dtype=torch.bool)
    assert filter_mask(scores, [True], cand).tolist() == [[False, True, True, True, True]]
    assert filter_mask(scores, [False], cand).tolist() == [[True, True, True, True, False]]


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.2])
def test_filter_quantile_out_of_range(bad):
    with pytest.raises(ValueError, match=r"explainer\.filter_quantile=.* must lie in \(0, 1\)"):
        filter_mask(torch.zeros(1, 2, 1), [True], torch.ones(1, 2, dtype=torch.bool), bad)


def test_default_filter_metrics_are_the_ten_sized_to_the_image():
    conf = default_filter_metrics((3, 64, 64))
    assert list(conf) == list(DEEPFAITH_METRICS)
    assert all(kw["variant"] == "deepfaith" and kw["seed"] == 0 for kw in conf.values())
    assert conf["faithfulness_estimate"]["features_in_step"] == 256  # 3*64*64 / 48
    assert conf["faithfulness_correlation"] == {
        "variant": "deepfaith", "seed": 0, "nr_runs": 10, "subset_size": 256,
    }  # fmt: skip
    assert conf["region_perturbation"]["regions_evaluation"] == 256


# -- build_priors -------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    model = resnet18(10, width=0.125, stem="stride2").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    dm = SyntheticDigitsDataModule(
        tmp_path_factory.mktemp("data"), image_size=32, recipe={"digit_size": (12, 24)},
        n_train=16, n_val=8, n_test=8, batch_size=8, seed=0,
    )  # fmt: skip
    dm.setup()
    return dm


def cheap_metrics() -> dict[str, dict]:
    """The ten metrics with 4 chunks per image (3*32*32 / 4 elements) and 3 random runs."""
    step = 3 * 32 * 32 // 4
    conf = default_filter_metrics((3, 32, 32), nr_runs=3)
    for kw in conf.values():
        for k in ("features_in_step", "subset_size", "regions_evaluation"):
            if k in kw:
                kw[k] = step
    return conf


class Counting:
    """Wraps ``get_explainer``: counts calls per method; ``fail`` methods raise once."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: dict[str, int] = {}
        self.fail = set(fail)

    def __call__(self, name, **kw):
        inner = get_explainer(name, **kw)

        def explain(model, images, targets):
            if name in self.fail:
                self.fail.discard(name)
                raise RuntimeError(f"interrupted in {name}")
            self.calls[name] = self.calls.get(name, 0) + 1
            return inner(model, images, targets)

        return explain


def run(classifier, datamodule, cache_dir, **kw):
    args = dict(
        methods=METHODS, settings=None, grid=GRID, cache_dir=cache_dir, max_samples=None,
        filter_metrics=cheap_metrics(), batch_size=8, progress=False,
    )  # fmt: skip
    return build_priors(classifier, datamodule, **{**args, **kw})


def test_build_priors_end_to_end(classifier, datamodule, tmp_path):
    ps = run(classifier, datamodule, tmp_path, max_samples=8)  # the first 8 of 16
    m, k = 8, len(METHODS)
    assert ps.methods == METHODS
    assert ps.index.dtype == torch.int64 and ps.index.tolist() == list(range(m))
    assert ps.maps.shape == (m, k, 1, *GRID) and ps.maps.dtype == torch.float32
    assert ps.kept.shape == (m, k) and ps.kept.dtype == torch.bool
    # each grid map is rescaled to exactly [0, 1] (or all zero)
    lo, hi = ps.maps.flatten(2).amin(2), ps.maps.flatten(2).amax(2)
    assert torch.all(lo == 0) and torch.all((hi == 1) | (hi == 0))
    # the maps are the explainers' maps, average-pooled and rescaled
    images = torch.stack([datamodule.splits["train"][i][0] for i in range(m)])
    labels = datamodule.splits["train"].labels[:m]
    raw = get_explainer("gradcam")(classifier, images, labels).half().float()
    pooled = F.adaptive_avg_pool2d(raw, GRID).flatten(1)
    lo, hi = pooled.amin(1, keepdim=True), pooled.amax(1, keepdim=True)
    expect = torch.where(hi > lo, (pooled - lo) / (hi - lo), 0.0).view(m, 1, *GRID)  # constant: 0
    torch.testing.assert_close(ps.maps[:, 1], expect, atol=1e-5, rtol=0)
    # kept = filter(dedup) with the cached scores; only dedup survivors were scored
    constant = ps.maps.flatten(2).amax(2) == 0  # never a prior
    dedup = dedup_mask(ps.maps.flatten(2), 0.6) & ~constant
    assert not torch.any(ps.kept & ~dedup)
    folder = next(tmp_path.iterdir())
    scores = []
    for j, name in enumerate(METHODS):
        paths = list(folder.glob(f"{name}-*-scores-*.pt"))
        if not dedup[:, j].any():  # nothing to score, no file
            assert paths == []
            scores.append(torch.full((m, len(DEEPFAITH_METRICS)), NAN))
            continue
        obj = torch.load(paths[0], weights_only=True)
        assert obj["scored"].tolist() == dedup[:, j].tolist()
        scores.append(obj["scores"])
    directions = [metric_direction(n) for n in DEEPFAITH_METRICS]
    expect_kept = filter_mask(torch.stack(scores, dim=1), directions, dedup, 0.2)
    assert ps.kept.tolist() == expect_kept.tolist()
    s = ps.stats
    assert (s["n_samples"], s["n_methods"]) == (m, k)
    assert s["n_after_dedup"] == int(dedup.sum()) and s["n_constant"] == int(constant.sum())
    assert s["n_after_filter"] == int(ps.kept.sum()) == sum(s["kept_per_method"].values())
    assert s["kept_per_method"] == {n: int(ps.kept[:, i].sum()) for i, n in enumerate(METHODS)}
    assert s["samples_without_prior"] == int((~ps.kept.any(1)).sum())
    assert ps.has_prior.tolist() == ps.kept.any(1).tolist()
    assert s["computed"]["maps"] == METHODS
    assert set(s["seconds"]) == {"maps", "dedup", "scores", "filter", "total"}
    assert ps.rows(torch.tensor([3, 0, 99])).tolist() == [3, 0, -1]


def test_build_priors_cache_resume_and_invalidation(classifier, datamodule, tmp_path, monkeypatch):
    first = run(classifier, datamodule, tmp_path, use_filter=False)
    constant = first.maps.flatten(2).amax(2) == 0
    assert first.kept.tolist() == (dedup_mask(first.maps.flatten(2), 0.6) & ~constant).tolist()
    assert first.stats["n_after_filter"] == first.stats["n_after_dedup"]
    folder = next(tmp_path.iterdir())
    # second run: everything loaded, nothing explained, identical tensors
    counting = Counting()
    monkeypatch.setattr(priors, "get_explainer", counting)
    again = run(classifier, datamodule, tmp_path, use_filter=False)
    assert counting.calls == {} and again.stats["computed"]["maps"] == []
    for a, b in [(first.maps, again.maps), (first.kept, again.kept), (first.index, again.index)]:
        assert torch.equal(a, b)
    # a corrupt file: warned about and recomputed, alone, to the same maps
    (path,) = folder.glob("saliency-*.pt")
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable"):
        repaired = run(classifier, datamodule, tmp_path, use_filter=False)
    assert counting.calls == {"saliency": 2}  # 16 samples in batches of 8
    assert torch.equal(repaired.maps, first.maps)
    # a changed setting recomputes that method only
    counting.calls.clear()
    changed = run(
        classifier, datamodule, tmp_path, use_filter=False, settings={"random": {"seed": 1}}
    )
    assert set(counting.calls) == {"random"} and changed.stats["computed"]["maps"] == ["random"]
    assert not torch.equal(changed.maps[:, 3], first.maps[:, 3])
    assert torch.equal(changed.maps[:, :3], first.maps[:, :3])


def test_build_priors_resumes_after_interruption(classifier, datamodule, tmp_path, monkeypatch):
    counting = Counting(fail={"gradcam"})
    monkeypatch.setattr(priors, "get_explainer", counting)
    with pytest.raises(RuntimeError, match="interrupted in gradcam"):
        run(classifier, datamodule, tmp_path, use_filter=False)
    assert counting.calls == {"saliency": 2}
    folder = next(tmp_path.iterdir())
    assert [p.name.split("-")[0] for p in folder.glob("*.pt")] == ["saliency"]  # no half file
    assert not list(folder.glob(".*tmp"))
    counting.calls.clear()
    ps = run(classifier, datamodule, tmp_path, use_filter=False)
    assert counting.calls == {"gradcam": 2, "input_x_gradient": 2, "random": 2}
    assert ps.stats["computed"]["maps"] == METHODS[1:]


def test_build_priors_scores_are_cached(classifier, datamodule, tmp_path):
    kw = {"methods": ["saliency", "random"], "dedup_threshold": 1.0, "max_samples": 8}
    first = run(classifier, datamodule, tmp_path, **kw)
    assert first.stats["computed"]["scores"] == ["saliency", "random"]
    folder = next(tmp_path.iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")}
    again = run(classifier, datamodule, tmp_path, **kw)
    assert again.stats["computed"] == {"maps": [], "scores": []}
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")} == mtimes
    assert torch.equal(again.kept, first.kept) and len(mtimes) == 4  # 2 maps + 2 score files


def test_a_changed_classifier_gets_its_own_cache(classifier, datamodule, tmp_path):
    run(classifier, datamodule, tmp_path, methods=["saliency"], use_filter=False)
    other = resnet18(10, width=0.125, stem="stride2").eval()
    other.load_state_dict(classifier.state_dict())
    with torch.no_grad():
        other.fc.bias[0] += 1.0
    ps = run(other, datamodule, tmp_path, methods=["saliency"], use_filter=False)
    assert ps.stats["computed"]["maps"] == ["saliency"]
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"methods": []}, r"explainer\.prior_methods is empty"),
        ({"methods": ["salency"]}, r"'salency'.*Did you mean 'saliency'"),
        ({"methods": ["saliency", "saliency"]}, r"lists \['saliency'\] more than once"),
        ({"settings": {"lime": {}}}, r"settings for \['lime'\], which are not in"),
        ({"dedup_threshold": 0.0}, r"explainer\.dedup_threshold=0\.0"),
        ({"filter_quantile": 1.0}, r"explainer\.filter_quantile=1\.0"),
        ({"max_samples": 0}, r"explainer\.prior_samples=0"),
        ({"filter_metrics": {"irofff": {}}}, r"explainer\.filter_metrics: .*Did you mean 'irof'"),
    ],
)
def test_build_priors_errors_name_the_config_key(kw, message, classifier, datamodule, tmp_path):
    with pytest.raises(ValueError, match=message):
        run(classifier, datamodule, tmp_path, **kw)
    assert not list(tmp_path.iterdir())  # failed before computing anything


def test_priors_explain_the_stored_images_without_augmentation(classifier, tmp_path):
    class Stub:  # the datamodule surface build_priors reads
        def __init__(self, dataset):
            self.splits = {"train": dataset}

        def setup(self):
            pass

        def cache_key(self):
            return {"stub": True}

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(8) % 10
    flipping = TensorImageDataset(images, labels, augment=True)
    kw = {"methods": ["saliency"], "use_filter": False}
    plain = run(classifier, Stub(TensorImageDataset(images, labels)), tmp_path / "a", **kw)
    for i in range(3):  # each read would flip about half the images
        ps = run(classifier, Stub(flipping), tmp_path / f"b{i}", **kw)
        assert torch.equal(ps.maps, plain.maps)
    assert flipping.augment  # the caller's dataset is unchanged


def _score_files(folder):
    return {
        p.name.split("-")[0]: torch.load(p, weights_only=True) for p in folder.glob("*-scores-*.pt")
    }


def test_scores_grow_incrementally_and_equal_a_fresh_run(classifier, datamodule, tmp_path):
    kw = {"methods": ["saliency", "input_x_gradient"], "max_samples": 8}
    few = run(classifier, datamodule, tmp_path / "inc", dedup_threshold=0.6, **kw)
    folder = next((tmp_path / "inc").iterdir())
    before = _score_files(folder)
    allc = run(classifier, datamodule, tmp_path / "inc", dedup_threshold=1.0, **kw)
    after = _score_files(folder)
    fresh = run(classifier, datamodule, tmp_path / "fresh", dedup_threshold=1.0, **kw)
    assert allc.stats["computed"]["maps"] == []
    assert torch.equal(allc.kept, fresh.kept)
    for name, obj in _score_files(next((tmp_path / "fresh").iterdir())).items():
        assert after[name]["scored"].all() and obj["scored"].all()
        torch.testing.assert_close(after[name]["scores"], obj["scores"], equal_nan=True)
        if name in before:  # rows scored first are kept as they were
            rows = before[name]["scored"]
            assert torch.equal(
                after[name]["scores"][rows].isnan(), before[name]["scores"][rows].isnan()
            )
            torch.testing.assert_close(
                after[name]["scores"][rows], before[name]["scores"][rows], equal_nan=True
            )
    assert few.stats["n_after_dedup"] < allc.stats["n_after_dedup"]
