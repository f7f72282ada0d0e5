"""Registry-driven contract: every registered metric, what its entries declare, every config."""

from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf

from xaibench.metrics import (
    METRICS,
    EntrySpec,
    entry_spec,
    get_metric,
    list_metrics,
    localization,
    metric_direction,
    metric_keys,
    msi,
    quality_gaps,
)
from xaibench.metrics.faithfulness import faithfulness_correlation
from xaibench.models import resnet18

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs", "metric").glob("*.yaml"))
# configs cheap enough to call here (faithfulness/fidelity are paper-scale; their metrics run above)
FAST_CONFIGS = [
    p for p in CONFIGS if p.stem in {"msi", "insertion_deletion", "paper", "localization", "qge"}
]
N = 3


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    model = resnet18(3, width=0.125, stem="stride2").eval()
    images = torch.rand(N, 3, 16, 16)
    heatmaps = torch.rand(N, 1, 16, 16)
    masks = heatmaps > 0.7
    return model, images, heatmaps, torch.tensor([0, 1, 2]), masks


def _needs(spec: EntrySpec, batch) -> dict[str, torch.Tensor]:
    """Exactly the extra inputs ``spec`` declares, nothing else."""
    available = {"masks": batch[4], "indices": torch.tensor([4, 9, 2])}
    return {need: available[need] for need in spec.needs}


def _per_sample_keys(out: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in out.items() if tuple(v.shape) == (N,)]


def _smoke_entry(name: str) -> functools.partial:
    """The entry a config with the metric's registered ``smoke`` kwargs would build."""
    return functools.partial(get_metric(name), **METRICS.meta(name)["smoke"])


@pytest.mark.parametrize("name", list_metrics())
def test_metric_contract(name, batch):
    entry = _smoke_entry(name)
    spec = entry_spec(entry)
    out = entry(*batch[:4], **_needs(spec, batch))
    assert spec.name == name
    # the declared per-sample keys are exactly the (N,) values returned, in order
    assert _per_sample_keys(out) == list(spec.keys)
    assert list(spec.directions) == list(spec.keys)
    for key in spec.keys:
        if METRICS.meta(name)["nan_when"] is None:
            assert torch.isfinite(out[key]).all(), (
                f"{name}.{key} is not finite and declares no nan_when"
            )
        else:
            assert not torch.isinf(out[key]).any(), f"{name}.{key} is infinite"
        assert spec.directions[key] in (True, False, None)
    for key, value in out.items():
        assert value.dim() in (1, 2) and (value.dim() == 1 or value.shape[0] == N), key
    if METRICS.meta(name)["wraps"] is None:
        assert metric_keys(name) == list(spec.keys)


def test_entry_spec_of_plain_metrics():
    nested = functools.partial(functools.partial(msi, step=0.1), score="confidence")
    assert entry_spec(nested) == EntrySpec(
        name="msi",
        needs=(),
        keys=("msi", "base_score", "mask_penalty"),
        directions={"msi": True, "base_score": True, "mask_penalty": False},
    )
    assert entry_spec(localization).needs == ("masks",)
    assert entry_spec(faithfulness_correlation).needs == ("indices",)  # random=True
    neg = entry_spec(get_metric("negative_perturbation"))
    assert neg.keys == ("negative_perturbation", "flip_step")
    assert neg.directions == {"negative_perturbation": True, "flip_step": True}


def test_entry_spec_refuses_unregistered():
    def my_metric(model, images, heatmaps, targets):
        return {}

    with pytest.raises(
        ValueError,
        match=r"'test_metrics_registry\.test_entry_spec_refuses_unregistered\.<locals>\.my_metric' "
        r"is not a registered metric; decorate its function with "
        r"@register_metric\('<name>', higher_is_better=\.\.\.\) .*configure a registered one: "
        r"faithfulness_correlation, ",
    ):
        entry_spec(functools.partial(my_metric))


@pytest.mark.parametrize(
    ("kw", "needs", "keys", "direction"),
    [
        ({"metric": "msi"}, (), ("msi_inverse", "qge_msi"), True),
        (
            {"metric": msi, "key": "mask_penalty", "k": 2},
            ("indices",),  # the permutations of the random gap are seeded per sample
            ("mask_penalty_inverse", "qge_mask_penalty", "random_gap_mask_penalty"),
            False,
        ),
        (
            {"metric": "localization", "key": "relevance_mass"},
            ("masks",),
            ("relevance_mass_inverse", "qge_relevance_mass"),
            True,
        ),
        (
            {"metric": functools.partial(faithfulness_correlation, nr_runs=10)},
            ("indices",),
            ("faithfulness_correlation_inverse", "qge_faithfulness_correlation"),
            True,
        ),
        (
            {"metric": "insertion_deletion", "key": "deletion", "mode": "percent"},
            (),
            ("deletion_inverse", "qge_deletion"),
            False,
        ),
    ],
)
def test_entry_spec_of_quality_gaps(kw, needs, keys, direction):
    spec = entry_spec(functools.partial(quality_gaps, **kw))
    assert (spec.name, spec.needs, spec.keys) == ("quality_gaps", needs, keys)
    # QGE and the random gap keep the key's direction; the inverse's quality has the opposite
    assert spec.directions == {
        k: (not direction) if k.endswith("_inverse") else direction for k in keys
    }


def test_entry_spec_of_quality_gaps_errors():
    with pytest.raises(ValueError, match=r"metric 'quality_gaps' evaluates another metric: give"):
        entry_spec(functools.partial(quality_gaps, key="msi"))
    with pytest.raises(
        ValueError,
        match=r"key='show_curve' is not a per-sample key of metric 'msi'; give key= one of \['msi'",
    ):
        entry_spec(functools.partial(quality_gaps, metric="msi", key="show_curve"))


def test_quality_gaps_calls_with_what_its_spec_declares(batch):
    # localization needs masks, the random gap and faithfulness_correlation need indices
    model, images, heatmaps, targets, masks = batch
    idx = torch.tensor([4, 9, 2])
    loc = functools.partial(quality_gaps, metric="localization", key="iou", k=1)
    out = loc(model, images, heatmaps, targets, **_needs(entry_spec(loc), batch))
    iou = localization(None, images, heatmaps, targets, masks=masks)["iou"]  # Q = qge + inverse
    torch.testing.assert_close(out["qge_iou"] + out["iou_inverse"], iou)
    fc = functools.partial(faithfulness_correlation, nr_runs=10, subset_size=64)
    gaps = quality_gaps(model, images, heatmaps, targets, metric=fc, indices=idx)
    direct = fc(model, images, heatmaps, targets, indices=idx)["faithfulness_correlation"]
    q = gaps["qge_faithfulness_correlation"] + gaps["faithfulness_correlation_inverse"]
    torch.testing.assert_close(q, direct, rtol=0, atol=1e-12)
    # the indices reach the metric: other indices draw other subsets
    other = fc(model, images, heatmaps, targets)["faithfulness_correlation"]
    assert not torch.equal(direct, other)


def test_registered_metrics_keep_name_doc_and_signature():
    assert get_metric("msi") is msi and msi.__name__ == "msi"
    assert msi.__doc__.startswith("MSI of each heatmap, per sample.")
    assert list(inspect.signature(msi).parameters)[:5] == [
        "model", "images", "heatmaps", "targets", "alpha_min",
    ]  # fmt: skip
    pos = get_metric("positive_perturbation")
    assert pos.__name__ == "positive_perturbation" and "POS:" in pos.__doc__
    assert "features_in_step" in inspect.signature(pos).parameters


def test_direction_table():
    assert metric_direction("msi") is True
    assert metric_direction("insertion_deletion", "deletion") is False
    assert metric_direction("paper", "mask_penalty") is False
    with pytest.raises(ValueError, match=r"metric 'msi' has no per-sample key 'show_curve'"):
        metric_direction("msi", "show_curve")


def _entries(path: Path) -> dict[str, object]:
    cfg = OmegaConf.load(path)
    return {path.stem: cfg} if "_target_" in cfg else dict(cfg.items())  # one metric or a mapping


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_entries_are_partials_of_registered_metrics(path):
    for entry, node in _entries(path).items():
        fn = hydra.utils.instantiate(node)
        expected = OmegaConf.to_container(node, resolve=True)
        target = expected.pop("_target_")
        assert expected.pop("_partial_") is True, entry
        assert isinstance(fn, functools.partial) and fn.args == (), entry
        # the partial is the registered function with exactly the YAML's keywords
        assert fn.func is hydra.utils.get_method(target), entry
        assert fn.func is get_metric(entry_spec(fn).name), entry
        assert fn.keywords == expected, entry
        inspect.signature(fn.func).bind_partial(None, None, None, None, **fn.keywords)


@pytest.mark.parametrize("path", FAST_CONFIGS, ids=lambda p: p.stem)
def test_config_entries_return_their_declared_keys(path, batch):
    for entry, node in _entries(path).items():
        fn = hydra.utils.instantiate(node)
        spec = entry_spec(fn)
        out = fn(*batch[:4], **_needs(spec, batch))
        assert _per_sample_keys(out) == list(spec.keys), entry
        assert all(not math.isinf(float(out[k].abs().max())) for k in spec.keys), entry
