"""A metric never changes the model: eval mode inside, every flag and buffer as found after."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from xaibench.metrics import (
    METRICS,
    entry_spec,
    eval_mode,
    get_metric,
    list_metrics,
    msi,
    qge,
    random_gap,
)
from xaibench.models import resnet18


def _half_training_model() -> nn.Module:
    """A ResNet with BatchNorm in train mode, except one block left in eval mode."""
    torch.manual_seed(0)
    model = resnet18(3, width=0.125, stem="stride2")
    # non-trivial running statistics, so eval and train mode normalise differently
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.train()
    model.layer2.eval()
    return model


def _flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 16, 16, generator=g)
    heatmaps = torch.rand(3, 1, 16, 16, generator=g)
    return images, heatmaps, torch.tensor([0, 1, 2]), heatmaps > 0.7


def _assert_untouched(model: nn.Module, flags: dict[str, bool], buffers: dict[str, torch.Tensor]):
    assert _flags(model) == flags
    after = dict(model.named_buffers())
    for name, value in buffers.items():
        assert torch.equal(after[name], value), f"buffer {name} changed"


@pytest.mark.parametrize("name", list_metrics())
def test_metric_in_train_mode_scores_as_in_eval_mode_and_restores(name, batch):
    images, heatmaps, targets, masks = batch
    entry = functools.partial(get_metric(name), **METRICS.meta(name)["smoke"])
    kw = {"masks": masks, "indices": torch.tensor([3, 1, 4])}
    kw = {need: kw[need] for need in entry_spec(entry).needs}
    model = _half_training_model()
    reference = copy.deepcopy(model).eval()
    flags, buffers = _flags(model), _buffers(model)
    out = entry(model, images, heatmaps, targets, **kw)
    expected = entry(reference, images, heatmaps, targets, **kw)
    _assert_untouched(model, flags, buffers)
    assert flags["layer1"] and not flags["layer2"]  # the mix survived, not a blanket train()
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(out[key], value, rtol=0, atol=0, equal_nan=True, msg=key)


def test_train_mode_would_change_the_score(batch):
    # the reason for eval_mode: without it the BatchNorm batch statistics change MSI
    images, heatmaps, targets, _ = batch
    model = _half_training_model()
    with torch.no_grad():
        train_logits = model(images)
        eval_logits = copy.deepcopy(model).eval()(images)
    assert not torch.allclose(train_logits, eval_logits)


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x, h, y: msi(m, x, h * 2, y, step=0.1),  # heatmap out of [0, 1]
        lambda m, x, h, y: get_metric("faithfulness_estimate")(m, x, h + 1, y, variant="deepfaith"),
        lambda m, x, h, y: qge("msi", m, x, h * 2, y, step=0.1),
        lambda m, x, h, y: random_gap("msi", m, x, h * 2, y, k=1, step=0.1),
    ],
    ids=["msi", "faithfulness_estimate", "qge", "random_gap"],
)
def test_flags_restored_when_the_metric_raises(call, batch):
    images, heatmaps, targets, _ = batch
    model = _half_training_model()
    flags, buffers = _flags(model), _buffers(model)
    with pytest.raises(ValueError, match=r"heatmaps must lie in \[0, 1\], got \["):
        call(model, images, heatmaps, targets)
    _assert_untouched(model, flags, buffers)


class _Fails(nn.Module):
    """Wraps a model and raises inside its ``calls``-th forward, from eval mode."""

    def __init__(self, net: nn.Module, calls: int) -> None:
        super().__init__()
        self.net, self.calls = net, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not any(m.training for m in self.modules()), "forward ran in train mode"
        self.calls -= 1
        if self.calls == 0:
            raise RuntimeError("boom inside forward")
        return self.net(x)


def test_flags_restored_when_a_forward_raises(batch):
    images, heatmaps, targets, _ = batch
    model = _Fails(_half_training_model(), calls=3).train()
    flags = _flags(model)
    with pytest.raises(RuntimeError, match="boom inside forward"):
        msi(model, images, heatmaps, targets, step=0.1, batch_size=4)
    assert _flags(model) == flags and model.calls == 0


def test_qge_and_random_gap_in_train_mode_match_eval_mode(batch):
    images, heatmaps, targets, _ = batch
    model = _half_training_model()
    reference = copy.deepcopy(model).eval()
    flags, buffers = _flags(model), _buffers(model)
    kw = {"score": "confidence", "step": 0.1}
    got = qge(msi, model, images, heatmaps, targets, **kw)
    torch.testing.assert_close(
        got, qge(msi, reference, images, heatmaps, targets, **kw), rtol=0, atol=0
    )
    # an unregistered metric callable is run under qge's own eval_mode
    plain = functools.partial(msi.__wrapped__, **kw)
    got = random_gap(plain, model, images, heatmaps, targets, k=2, key="msi")
    expected = random_gap(plain, reference, images, heatmaps, targets, k=2, key="msi")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    _assert_untouched(model, flags, buffers)


def test_eval_mode_leaves_non_modules_alone():
    with eval_mode(None) as m:
        assert m is None
    fn = lambda x: x  # noqa: E731
    with eval_mode(fn) as m:
        assert m is fn
