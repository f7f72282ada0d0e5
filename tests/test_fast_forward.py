"""``xaibench.eval.fast``: channels_last/compile keep the classifier's outputs; bf16 needs CUDA."""

from __future__ import annotations

import copy

import pytest
import torch

from xaibench.errors import ConfigError
from xaibench.eval.fast import compare_predictions, fast_forward
from xaibench.models import resnet18


@pytest.fixture
def net_and_images():
    torch.manual_seed(0)
    net = resnet18(10, width=0.25, stem="stride2").eval()
    return net, torch.rand(6, 3, 32, 32)


def test_all_flags_off_returns_the_model(net_and_images):
    net, _ = net_and_images
    assert fast_forward(net, channels_last=False, compile=False, autocast_bf16=False) is net


def test_channels_last_same_logits_and_argmax(net_and_images):
    net, x = net_and_images
    ref = copy.deepcopy(net)
    fast = fast_forward(net, channels_last=True, compile=False, autocast_bf16=False)
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        direct = (ref(x) - fast(x)).abs().max().item()
    report = compare_predictions(ref, fast, x, batch_size=4)  # two chunks
    assert report["flipped"] == 0 and report["n"] == 6
    assert report["max_abs_logit_diff"] == pytest.approx(direct, abs=1e-6)
    assert report["max_abs_logit_diff"] < 1e-5


def test_compare_predictions_counts_flips(net_and_images):
    net, x = net_and_images
    with torch.inference_mode():
        logits = net(x)
    swapped = torch.nn.Sequential(net, torch.nn.Identity())
    negated = lambda images: -swapped(images)  # noqa: E731  (argmax flips unless all logits tie)
    report = compare_predictions(net, negated, x)
    assert report["flipped"] == int((logits.argmax(1) != (-logits).argmax(1)).sum()) > 0
    assert report["max_abs_logit_diff"] == pytest.approx(float((2 * logits).abs().max()), rel=1e-6)


@pytest.mark.slow  # inductor's first build takes ~1-2 min on a busy 2-core CPU
def test_compile_same_outputs_or_clear_error(net_and_images):
    net, x = net_and_images
    ref = copy.deepcopy(net)
    try:
        fast = fast_forward(net, channels_last=False, compile=True, autocast_bf16=False, example=x)
    except ConfigError as err:
        assert "compile" in str(err)
        pytest.skip(f"torch.compile does not build on this machine: {err}")
    report = compare_predictions(ref, fast, x)
    assert report["flipped"] == 0 and report["max_abs_logit_diff"] < 1e-4


def test_bf16_on_cpu_is_a_config_error(net_and_images):
    net, _ = net_and_images
    with pytest.raises(ConfigError, match="autocast_bf16.*CUDA"):
        fast_forward(net, channels_last=False, compile=False, autocast_bf16=True)
