"""QGE's inverse, its antisymmetry, and the random gap on several metrics and input shapes."""

from __future__ import annotations

import functools

import pytest
import torch
from metrics_testing import LinearModel

from xaibench.metrics import (
    insertion_deletion,
    inverse,
    msi,
    permute,
    qge,
    quality_gaps,
    random_gap,
)


def test_inverse_example():
    h = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
    torch.testing.assert_close(inverse(h), torch.tensor([[0.9, 0.1, 0.3, 0.5]]))


@pytest.mark.parametrize("shape", [(3, 17), (2, 1, 5, 5), (2, 3, 4, 4)])
def test_inverse_is_involution_and_keeps_values(shape):
    h = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inv = inverse(h)
    assert torch.equal(inverse(inv), h)
    assert torch.equal(inv.flatten(1).sort(1).values, h.flatten(1).sort(1).values)
    # order reversed: the largest value goes where the smallest was
    assert torch.equal(inv.flatten(1).argmax(1), h.flatten(1).argmin(1))


def test_inverse_ties_are_stable():
    # ties rank earlier positions first: [1, 1, 0] -> rank order (0, 1, 2) -> values 0, 1, 1 reversed
    assert torch.equal(inverse(torch.tensor([[1.0, 1.0, 0.0]])), torch.tensor([[0.0, 1.0, 1.0]]))
    const = torch.full((2, 1, 3, 3), 0.4)
    assert torch.equal(inverse(const), const)


def _setup(n=4, shape=(1, 6, 6)):
    torch.manual_seed(3)
    model = LinearModel(int(torch.tensor(shape).prod()))
    images = torch.rand(n, *shape, dtype=torch.float64)
    h = torch.rand(n, 1, *shape[1:], dtype=torch.float64)
    return model, images, h, torch.arange(n) % 3


@pytest.mark.parametrize(
    ("metric", "key", "kw"),
    [
        ("msi", None, {"score": "confidence", "step": 0.1}),
        (msi, "base_score", {"score": "confidence", "step": 0.1}),
        (insertion_deletion, "deletion", {"score": "confidence", "mode": "percent", "step": 0.05}),
        (
            functools.partial(insertion_deletion, mode="value", step=0.1, score="confidence"),
            "insertion",
            {},
        ),
    ],
)
def test_qge_antisymmetric(metric, key, kw):
    model, images, h, targets = _setup()
    g = qge(metric, model, images, h, targets, key=key, **kw)
    g_inv = qge(metric, model, images, inverse(h), targets, key=key, **kw)
    assert g.shape == (4,)
    torch.testing.assert_close(g_inv, -g)


def test_qge_on_tabular_rows():
    # any (N, *S): rows of 12 features, a metric reading percent-mode deletion
    model = LinearModel(12)
    x = torch.rand(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    h = torch.rand(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    kw = {"mode": "percent", "step": 0.25, "score": "logit"}
    g = qge(insertion_deletion, model, x, h, y, key="deletion", **kw)
    torch.testing.assert_close(
        qge(insertion_deletion, model, x, inverse(h), y, key="deletion", **kw), -g
    )


def test_qge_needs_key_for_unregistered():
    model, images, h, targets = _setup()
    with pytest.raises(ValueError, match="key= is needed"):
        qge(lambda *a, **k: {}, model, images, h, targets)
    with pytest.raises(ValueError, match=r"returned no key 'nope'; its keys: \["):
        qge("msi", model, images, h, targets, key="nope", step=0.1)


def test_random_gap_seeded_per_sample():
    model, images, h, targets = _setup(n=6)
    kw = {"score": "confidence", "step": 0.1, "k": 3}
    full = random_gap("msi", model, images, h, targets, indices=torch.arange(6), **kw)
    part = random_gap(
        "msi", model, images[2:5], h[2:5], targets[2:5], indices=torch.arange(2, 5), **kw
    )
    torch.testing.assert_close(full[2:5], part)
    g = torch.Generator().manual_seed(0)
    assert random_gap("msi", model, images, h, targets, generator=g, **kw).shape == (6,)
    with pytest.raises(ValueError, match="k must be a positive int"):
        random_gap("msi", model, images, h, targets, k=0)


def test_permute_keeps_values():
    h = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    p = permute(h, seed=5)
    assert torch.equal(p.flatten(1).sort(1).values, h.flatten(1).sort(1).values)
    assert not torch.equal(p, h)


def test_quality_gaps_keys():
    model, images, h, targets = _setup()
    out = quality_gaps(model, images, h, targets, metric="msi", k=2, step=0.1, score="confidence")
    assert set(out) == {"msi_inverse", "qge_msi", "random_gap_msi"}  # Q(h) = qge + inverse
    q = msi(model, images, h, targets, step=0.1, score="confidence")["msi"]
    torch.testing.assert_close(out["qge_msi"], q - out["msi_inverse"])
    torch.testing.assert_close(out["qge_msi"], qge("msi", model, images, h, targets, step=0.1, score="confidence"))
