"""LRP on xaibench's ResNet18: correct through residual sums, refused where it cannot be.

On a ReLU network LRP-0 (ε → 0) equals Gradient × Input exactly, and with all
biases zero the relevance sums to the target logit (conservation). Captum's
LRP alone breaks both on ResNet (the residual ``out + identity`` is not a
module); xaibench's routing through ``Addition_Module`` restores them.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import LRP, InputXGradient
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import Tensor, nn

from xaibench.explainers import count_hooks, get_explainer
from xaibench.explainers.lrp import lrp_ready, make_rule, rule_layers
from xaibench.models import resnet18

pytestmark = pytest.mark.usefixtures("one_thread")


def model64(stem: str, *, zero_bias: bool = False) -> nn.Module:
    torch.manual_seed(0)
    m = resnet18(10, width=0.125, stem=stem).double().eval()
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():  # non-trivial BatchNorm statistics
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) * 0.2 - 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            if not zero_bias:
                mod.bias.data.copy_(torch.rand(mod.num_features, generator=g) * 0.2 - 0.1)
    if zero_bias:  # BN in eval is affine: zero its shift so no relevance is absorbed
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.zero_()
                mod.bias.data.zero_()
        m.fc.bias.data.zero_()
    return m


def lrp_raw(model: nn.Module, x: Tensor, t: Tensor, epsilon: float = 1e-12) -> Tensor:
    """Unnormalised LRP-ε relevance (N, C, H, W) the way LRPExplainer computes it."""
    with lrp_ready(model):
        for layer in rule_layers(model):
            layer.rule = make_rule(layer, epsilon)
        return LRP(model).attribute(x.clone().requires_grad_(), target=t).detach()


@pytest.mark.parametrize("stem", ["stride2", "cifar", "imagenet"])
def test_lrp0_equals_gradient_times_input(stem):
    model = model64(stem)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1, 7])
    ixg = InputXGradient(model).attribute(x.clone().requires_grad_(), target=t).detach()
    rel = lrp_raw(model, x, t)
    torch.testing.assert_close(rel, ixg, rtol=1e-6, atol=1e-8 * float(ixg.abs().max()))
    assert count_hooks(model) == 0


def test_relevance_conserved_with_zero_biases():
    model = model64("stride2", zero_bias=True)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 4, 9])
    logit = model(x).gather(1, t[:, None]).squeeze(1).detach()
    rel = lrp_raw(model, x, t)
    torch.testing.assert_close(rel.sum((1, 2, 3)), logit, rtol=1e-6, atol=1e-9)


def test_plain_captum_lrp_is_wrong_on_residual_sums():
    """Why the routing exists: without it relevance is not conserved at all."""
    model = model64("stride2", zero_bias=True)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 4])
    logit = model(x).gather(1, t[:, None]).squeeze(1).detach()
    for layer in model.modules():  # the rules Captum has no default for
        if isinstance(layer, (nn.Identity, nn.Flatten)):
            layer.rule = (
                EpsilonRule(1e-12) if isinstance(layer, nn.Flatten) else make_rule(layer, 0)
            )
    plain = LRP(model).attribute(x.clone().requires_grad_(), target=t).detach().sum((1, 2, 3))
    assert not torch.allclose(plain, logit, rtol=0.1)


class FunctionalSkip(nn.Module):
    """A residual sum LRP cannot see: must be refused, not explained wrongly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(3, 4)
        self.num_classes = 4

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flat(self.pool(self.conv(x) + x)))


def test_functional_sum_is_refused_and_model_restored():
    model = FunctionalSkip()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(
        ValueError, match=r"lrp cannot propagate relevance through call_function.*add"
    ):
        get_explainer("lrp")(model, x, torch.tensor([0, 1]))
    assert count_hooks(model) == 0 and not any(hasattr(m, "rule") for m in model.modules())


def test_unsupported_layer_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(3))
    model(torch.rand(1, 3, 8, 8))  # materialise the lazy layer
    with pytest.raises(ValueError, match=r"lrp has no rule for layer GELU"):
        get_explainer("lrp")(model, torch.rand(1, 3, 8, 8), torch.tensor([0]))


def test_block_forward_restored_after_lrp():
    model = model64("stride2").float()
    forwards = [vars(b).get("forward") for b in model.modules()]
    x = torch.rand(2, 3, 32, 32)
    before = model(x).detach()
    get_explainer("lrp")(model, x, torch.tensor([0, 1]))
    assert [vars(b).get("forward") for b in model.modules()] == forwards
    assert not any(n.endswith("lrp_add") for n, _ in model.named_modules())
    torch.testing.assert_close(model(x).detach(), before)
