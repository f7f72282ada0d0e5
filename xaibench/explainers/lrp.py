"""LRP-ε via Captum, made correct on residual networks.

Captum's LRP propagates relevance through *modules* with rules; a tensor
addition written in a ``forward`` (ResNet's ``out + identity``) is invisible
to it, so autograd hands the full relevance to both summands and the map is
wrong (relevance is not conserved; see ``tests/test_explainers_lrp.py``).
Captum's documented fix is to route every such addition through its
``Addition_Module`` (ε-rule: each summand gets relevance in proportion to its
share of the sum). For xaibench's :class:`~xaibench.models.resnet.BasicBlock`
we do that temporarily: each block's forward is swapped for an identical one
that adds through an ``Addition_Module``; the swap, the rules and all hooks are
removed afterwards.

Before attributing, the (patched) model is traced with ``torch.fx``; any tensor
operation outside a module other than reshapes (an addition, concatenation,
functional activation) is a ``ValueError`` — LRP would silently give a wrong
map there. Models that cannot be traced are refused for the same reason.
"""

from __future__ import annotations

import contextlib
import operator
import types
from collections.abc import Iterator
from typing import Any

import torch
from captum.attr import LRP
from captum.attr._utils.custom_modules import Addition_Module
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import Tensor, fx, nn

from xaibench.explainers.base import register_explainer
from xaibench.explainers.captum_methods import CaptumExplainer, quiet_captum
from xaibench.models.resnet import BasicBlock

# leaf modules that get an epsilon rule; ReLU/Dropout/Tanh pass relevance unchanged (Captum)
RULE_LAYERS = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.MaxPool2d,
    nn.Flatten,
    Addition_Module,
)
PASS_LAYERS = (nn.ReLU, nn.Dropout, nn.Tanh)
# modules whose output *is* their input tensor: an ε-rule would hook one tensor
# as both input and output and corrupt the propagation, so they get no hooks
ALIAS_LAYERS = (nn.Identity,)
# functions / tensor methods that only move values around (relevance unchanged)
_SHAPE_FUNCS = {torch.flatten, torch.reshape, getattr, operator.getitem}
_SHAPE_METHODS = {"flatten", "view", "reshape", "size", "contiguous", "squeeze", "unsqueeze"}


def _basic_block_forward(self: BasicBlock, x: Tensor) -> Tensor:
    """``BasicBlock.forward`` with the residual sum through ``self.lrp_add``."""
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu1(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu2(self.lrp_add(out, identity))


@contextlib.contextmanager
def lrp_ready(model: nn.Module) -> Iterator[None]:
    """Temporarily route residual sums through modules, then check the model.

    Undone on exit (the caller's :func:`preserve_model` also restores
    attributes and children as a safety net).
    """
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    try:
        for b in blocks:
            b.add_module("lrp_add", Addition_Module())
            b.forward = types.MethodType(
                _basic_block_forward, b
            )  # instance attribute shadows the class's
        rule_layers(model)
        check_traceable(model)
        yield
    finally:
        for b in blocks:
            b.__dict__.pop("forward", None)
            b._modules.pop("lrp_add", None)


def rule_layers(model: nn.Module) -> list[nn.Module]:
    """Leaf modules that take an ε-rule; ``ValueError`` for a leaf LRP cannot handle."""
    layers = []
    for m in model.modules():
        if next(m.children(), None) is not None:
            continue
        if isinstance(m, RULE_LAYERS + ALIAS_LAYERS):
            layers.append(m)
        elif not isinstance(m, PASS_LAYERS):
            raise ValueError(
                f"lrp has no rule for layer {type(m).__name__} ({m}); supported: "
                f"{[c.__name__ for c in RULE_LAYERS + ALIAS_LAYERS + PASS_LAYERS]}"
            )
    return layers


class PassRule(EpsilonRule):
    """No hooks: relevance passes unchanged (for ``nn.Identity``, whose output is its input)."""

    def forward_hook(self, module: nn.Module, inputs: Any, outputs: Tensor) -> None:
        return None


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return next(m.children(), None) is None


def make_rule(layer: nn.Module, epsilon: float) -> EpsilonRule:
    """The rule for one leaf layer: ε-rule, or no hooks for aliasing layers."""
    return PassRule() if isinstance(layer, ALIAS_LAYERS) else EpsilonRule(epsilon=epsilon)


def check_traceable(model: nn.Module) -> None:
    """Refuse a model whose forward has tensor ops outside modules (LRP would be wrong there)."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception as err:  # fx raises many types on dynamic control flow
        raise ValueError(
            f"lrp cannot verify {type(model).__name__}: torch.fx could not trace it ({err}); "
            "without that check a residual sum or other functional op could silently give a "
            "wrong map. Use another explainer (e.g. deeplift, input_x_gradient)."
        ) from err
    for node in graph.nodes:
        bad = (node.op == "call_function" and node.target not in _SHAPE_FUNCS) or (
            node.op == "call_method" and node.target not in _SHAPE_METHODS
        )
        if bad:
            raise ValueError(
                f"lrp cannot propagate relevance through {node.op} {node.target!r} "
                f"(node {node.name!r}) in {type(model).__name__}.forward: Captum's LRP only "
                "handles modules, so an addition or functional op there gives a wrong map. "
                "Route it through a module (captum's Addition_Module for sums) or use "
                "another explainer."
            )


@register_explainer("lrp")
class LRPExplainer(CaptumExplainer):
    """Layer-wise Relevance Propagation with the ε-rule on every layer (LRP-ε).

    With ε → 0 on a ReLU network this equals Gradient × Input; relevance is
    conserved up to what biases and ε absorb.

    Args:
        epsilon: stabiliser of the ε-rule (larger = sparser, less noisy maps).
        reduction, normalize, percentile, batch_size: see :class:`Explainer`.
    """

    def __init__(self, *, epsilon: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (isinstance(epsilon, (int, float)) and epsilon > 0):
            raise ValueError(f"epsilon={epsilon!r} must be > 0 (e.g. 1e-6)")
        self.epsilon = float(epsilon)

    def explain(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        with torch.no_grad():
            logits = model(images[: self.batch_size])  # reference for the patched forward
        with lrp_ready(model), quiet_captum():
            with torch.no_grad():
                patched = model(images[: self.batch_size])
            if not torch.allclose(patched, logits, rtol=1e-4, atol=1e-5):
                raise RuntimeError(
                    "lrp: the residual-sum patch changed the model's outputs; "
                    "xaibench.models.resnet.BasicBlock.forward and "
                    "xaibench.explainers.lrp._basic_block_forward must match"
                )
            layers = rule_layers(model)
            images.requires_grad_(True)  # our private copy; Captum warns otherwise
            out = []
            for x, t in self.chunks(images, targets):
                for m in layers:  # Captum deletes the rules after each call
                    m.rule = make_rule(m, self.epsilon)
                out.append(LRP(model).attribute(x, target=t))
            return torch.cat(out)
