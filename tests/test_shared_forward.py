"""SharedForward: every metric entry's values equal entry-by-entry evaluation, with fewer rows forwarded.

Tolerance of the identity tests: ``atol=1e-5`` (values in logit or probability
units, or fractions of samples). A row's logits depend on the size of the batch
it is forwarded in only through the kernels chosen: on this CPU batches of 6
rows or more give bit-identical logits and smaller ones differ by up to 2.4e-6
(demo classifier), so shared and entry-by-entry values can differ at that level
when one of them forwards a row in a small batch; measured over 200 demo test
images (scripts/bench_shared.py): no value differed.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from xaibench.build import build_metrics
from xaibench.eval.callback import EvaluationCallback
from xaibench.metrics import shared_forward as sf
from xaibench.metrics.model_state import eval_mode
from xaibench.metrics.registry import entry_spec
from xaibench.metrics.shared_forward import SharedForward, row_keys
from xaibench.models import resnet18

ATOL = 1e-5


@pytest.fixture
def small():
    """A random tiny ResNet18 (eval), 6 images 3x32x32, blob heatmaps in [0, 1], targets, indices."""
    torch.manual_seed(0)
    model = resnet18(10, width=0.125, stem="stride2").eval()
    images = torch.rand(6, 3, 32, 32)
    low = torch.rand(6, 1, 8, 8)
    heat = nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    heat = (heat - heat.amin((2, 3), keepdim=True)) / (
        heat.amax((2, 3), keepdim=True) - heat.amin((2, 3), keepdim=True)
    )
    with torch.inference_mode():
        targets = model(images).argmax(1)
    return SimpleNamespace(
        model=model, images=images, heat=heat, targets=targets, index=torch.arange(10, 16)
    )


class Recorder:
    """Forward pre-hook storing every input row the model computes."""

    def __init__(self, model: nn.Module) -> None:
        self.rows: list[Tensor] = []
        self.handle = model.register_forward_pre_hook(lambda _, a: self.rows.append(a[0].clone()))

    def count(self) -> int:
        return sum(r.shape[0] for r in self.rows)


def run_entries(model: nn.Module, metrics: dict, s) -> dict[str, dict[str, Tensor]]:
    """Every entry as the evaluation calls it (``indices`` to the entries that need them)."""
    out = {}
    for entry, fn in metrics.items():
        kw = {"indices": s.index} if "indices" in entry_spec(fn).needs else {}
        out[entry] = fn(model, s.images, s.heat, s.targets, **kw)
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for entry in a:
        assert a[entry].keys() == b[entry].keys(), entry
        for key in a[entry]:
            torch.testing.assert_close(
                b[entry][key], a[entry][key], atol=ATOL, rtol=0, equal_nan=True,
                msg=lambda m, e=entry, k=key: f"{e}/{k}: {m}",
            )  # fmt: skip


def test_paper_qge_faithfulness_equal_and_fewer_rows(cfg_factory, small, one_thread):
    """metric=[paper,qge,faithfulness] of the demo: same values, fewer rows, and exactly the
    distinct rows (plus the one-row class probes) forwarded."""
    cfg = cfg_factory(["experiment=demo", "metric=[paper,qge,faithfulness]"])
    metrics = build_metrics(cfg)
    assert len(metrics) == 13
    rec = Recorder(small.model)
    plain = run_entries(small.model, metrics, small)
    requested = [r.flatten(1) for r in rec.rows]
    rec.rows.clear()
    with SharedForward(small.model) as shared:
        with_sharing = run_entries(shared, metrics, small)
    rec.handle.remove()
    assert_same(plain, with_sharing)
    st = shared.stats
    assert st.rows == sum(r.shape[0] for r in requested) and st.forwarded == rec.count()
    # the one-row class-count probe of each entry call passes through; with 6 images every
    # other call has an even number of rows, so the one-row calls are the probes
    probes = [r for r in requested if r.shape[0] == 1]
    assert st.passthrough == len(probes)
    distinct = torch.unique(torch.cat([r for r in requested if r.shape[0] > 1]), dim=0)
    forwarded = torch.cat([r.flatten(1) for r in rec.rows])
    assert st.forwarded == len(probes) + distinct.shape[0]  # each distinct row once
    assert torch.unique(forwarded, dim=0).shape[0] == distinct.shape[0]
    assert st.forwarded < 0.75 * st.rows, st.as_dict()
    assert st.collisions == 0


def test_identical_layout_is_exact(small):
    """Rows forwarded in the same batch layout: bit-identical; a second call forwards nothing."""
    x = small.images
    with torch.inference_mode():
        direct = small.model(x)
        shared = SharedForward(small.model)
        first, second = shared(x), shared(torch.cat([x[3:], x[:3]]))
    assert torch.equal(first, direct)
    assert torch.equal(second, torch.cat([direct[3:], direct[:3]]))
    assert shared.stats.forwarded == 6 and shared.stats.rows == 12


def test_share_false_forwards_everything(small):
    """``share=False`` (the callback's ``share_forward=False``) forwards every row and counts it."""
    x = small.images
    with torch.inference_mode():
        shared = SharedForward(small.model, share=False)
        assert torch.equal(shared(x), small.model(x)) and torch.equal(shared(x), small.model(x))
    assert shared.stats.as_dict() == {
        "calls": 2, "rows": 12, "forwarded": 12, "passthrough": 2, "collisions": 0,
        "evicted": 0, "peak_bytes": 0, "saved": 0,
    }  # fmt: skip


def test_fingerprint_is_exact_integer_arithmetic():
    """Keys do not depend on the batch and equal a direct modulo-2**32 computation."""
    x = torch.randn(5, 7)
    words = sf.as_words(x)
    keys = row_keys(words)
    assert torch.equal(row_keys(words[[4, 2]]), keys[[4, 2]])
    coeffs = sf.projection(7, words.device).tolist()
    w = [
        (v ^ ((v >> 16) & 0xFFFF)) for v in words[1].tolist()
    ]  # Python's >> on a negative int is arithmetic too
    dots = [sum(a * b for a, b in zip(w, c, strict=True)) % 2**32 for c in coeffs]
    expected = (dots[0] << 32 | dots[1]) - (2**64 if dots[0] >= 2**31 else 0)
    assert int(keys[1]) == expected


def test_fingerprint_collision_gives_correct_outputs(small, monkeypatch):
    """All keys forced equal: every output still equals the model's, collisions are counted."""
    monkeypatch.setattr(sf, "projection", lambda w, d: torch.zeros((2, w), dtype=torch.int32))
    x = small.images
    with torch.inference_mode():
        direct = small.model(x)
        shared = SharedForward(small.model)
        a = shared(x[[0, 0]])  # stores row 0 under key 0
        b = shared(x[[1, 2]])  # two different rows, one key: forwarded as they are
        c = shared(x[[3, 3, 3]])  # key 0 is row 0's: forwarded, not reused
        d = shared(x[[0, 0]])  # row 0 again: reused
    for got, rows in ((a, [0, 0]), (b, [1, 2]), (c, [3, 3, 3]), (d, [0, 0])):
        torch.testing.assert_close(got, direct[rows], atol=ATOL, rtol=0)
    assert shared.stats.collisions == 2
    assert shared.stats.forwarded == 1 + 2 + 1


def test_gradients_pass_through(small):
    """With grad enabled nothing is shared or stored and the input gradient is the model's."""
    x = small.images[:3].clone().requires_grad_(True)
    shared = SharedForward(small.model)
    with torch.inference_mode():
        shared(small.images[:3])  # the same rows are stored
    out = shared(x)
    assert out.requires_grad
    (grad,) = torch.autograd.grad(out[:, 1].sum(), x)
    x2 = small.images[:3].clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(small.model(x2)[:, 1].sum(), x2)
    torch.testing.assert_close(grad, ref, atol=1e-6, rtol=0)
    assert grad.abs().sum() > 0
    with torch.no_grad():  # plain no_grad passes through as well
        shared(small.images[:3])
    assert shared.stats.passthrough == 2


def test_transparent_to_metric_plumbing(small):
    """Parameters, eval_mode, attribute lookups and the model's hooks behave as on the model;
    train mode and in-place parameter changes are never answered from the store."""
    model, x = small.model, small.images[:4]
    shared = SharedForward(model)
    assert list(shared.parameters()) == list(model.parameters())
    assert shared.fc is model.fc
    model.train()
    with eval_mode(shared):
        assert not any(m.training for m in model.modules())
    assert all(m.training for m in model.modules())  # restored
    with torch.inference_mode():
        shared(x)  # train mode: passthrough (BatchNorm would use batch statistics)
        assert shared.stats.passthrough == 1
        model.eval()
        before = shared(x)
        model.fc.bias.add_(1.0)  # a randomisation test changes the model in place
        after = shared(x)
    torch.testing.assert_close(after, before + 1.0, atol=1e-5, rtol=0)
    assert shared.stats.forwarded == 4 * 3


def test_max_bytes_evicts_least_recently_used(small):
    """A cap of three rows' inputs: a new row replaces the least recently used one; values unchanged."""
    x = small.images
    rec = Recorder(small.model)
    calls = ([0, 1], [2, 0], [3, 0], [1, 2, 0], [0, 2, 1])
    with torch.inference_mode():
        direct = small.model(x)
        rec.rows.clear()
        shared = SharedForward(small.model, max_bytes=3 * x[0].numel() * 4)
        for rows in calls:
            torch.testing.assert_close(shared(x[rows]), direct[rows], atol=ATOL, rtol=0)
    rec.handle.remove()
    forwarded = [[int((x == r).flatten(1).all(1).nonzero()) for r in b] for b in rec.rows]
    # [3, 0] evicts 1 (unused since the first call); [1, 2, 0] evicts 3 (2 and 0 were
    # just reused); the last call finds 0, 2 and 1
    assert forwarded == [[0, 1], [2], [3], [1]]
    assert shared.stats.evicted == 2
    assert shared.stats.peak_bytes >= 3 * x[0].numel() * 4
    with pytest.raises(ValueError, match="max_bytes"):
        SharedForward(small.model, max_bytes=-1)


def test_callback_shares_and_keeps_columns(cfg_factory, small, one_thread):
    """EvaluationCallback with share_forward on and off: the same per-sample columns."""
    cfg = cfg_factory(["experiment=demo", "metric=[paper,qge]"])
    metrics = build_metrics(cfg)
    batch = (small.images, small.targets, small.index)
    trainer = SimpleNamespace(is_global_zero=True)
    cols = {}
    for share in (False, True):
        cb = EvaluationCallback(metrics, "unused", "m", share_forward=share)
        cb.on_test_epoch_start(trainer, None)
        module = SimpleNamespace(net=small.model)
        cb.on_test_batch_end(trainer, module, {"heatmaps": small.heat}, batch, 0)
        cols[share] = {k: torch.cat(v) for k, v in cb._cols.items()}
        stats = cb.forward_stats
    for k in cols[False]:
        torch.testing.assert_close(cols[True][k], cols[False][k], atol=ATOL, rtol=0, equal_nan=True)
    assert 0 < stats.forwarded < stats.rows
