"""Backbone contract: shapes per stem, torchvision weights, bad arguments, module structure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xaibench.models import ClassifierModule, resnet18


@pytest.mark.parametrize(
    ("stem", "size", "feat"),
    [("cifar", 32, 4), ("cifar", 64, 8), ("stride2", 64, 4), ("imagenet", 224, 7)],
)
def test_feature_map_sizes(stem, size, feat):
    net = resnet18(7, width=0.25, stem=stem).eval()
    x = torch.rand(2, 3, size, size)
    f = net.features(x)
    assert f.shape == (2, 128, feat, feat)
    logits = net(x)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(net.head(f), logits)


def test_width_scales_channels():
    assert resnet18(10).feature_channels == 512
    assert resnet18(10, width=0.5).fc.in_features == 256


def test_torchvision_state_dict_loads_and_matches_outputs():
    from torchvision.models import resnet18 as tv_resnet18

    tv = tv_resnet18(num_classes=10).eval()
    ours = resnet18(10).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    assert set(ours.state_dict()) == set(tv.state_dict())
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), tv(x))


def test_every_relu_is_its_own_module():
    net = resnet18(10, width=0.125)
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == len({id(m) for m in relus}) == 1 + 8 * 2


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"width": 0}, "model.width=0"),
        ({"width": -1.0}, "model.width=-1.0"),
        ({"stem": "vit"}, "model.stem='vit' is unknown"),
        ({"in_channels": 0}, "in_channels=0"),
    ],
)
def test_bad_arguments_are_clear(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        resnet18(10, **kwargs)


def test_in_channels():
    assert resnet18(3, width=0.125, stem="cifar", in_channels=1)(
        torch.rand(1, 1, 32, 32)
    ).shape == (1, 3)


def test_classifier_module_rejects_bad_epochs():
    with pytest.raises(ValueError, match="max_epochs"):
        ClassifierModule(resnet18(3, width=0.125), optimizer=torch.optim.SGD, max_epochs=0)
