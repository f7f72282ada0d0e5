"""A context manager that lets an explainer change a model temporarily.

Wrapped libraries leave traces on the model: pytorch-grad-cam calls
``model.eval()`` and never restores it, leaves its hooks when a forward
raises, and AblationCAM swaps a submodule in and out; Captum's LRP and DeepLift
attach ``rule``/hook attributes. :func:`preserve_model` snapshots everything
such code touches and puts it back on exit, on the error path too (the error
still propagates), as zennit's ``CompositeContext`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

# every per-module hook dict in torch.nn.Module (absent ones are skipped)
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


@dataclass
class _ModuleState:
    module: nn.Module
    training: bool
    attrs: set[str]
    children: dict[str, Any]
    params: dict[str, Any]
    buffers: dict[str, Any]
    hooks: dict[str, set[int]]
    full_backward: Any

    @classmethod
    def of(cls, m: nn.Module) -> _ModuleState:
        return cls(
            module=m,
            training=m.training,
            attrs=set(m.__dict__),
            children=dict(m._modules),
            params=dict(m._parameters),
            buffers=dict(m._buffers),
            hooks={k: set(getattr(m, k)) for k in HOOK_DICTS if hasattr(m, k)},
            full_backward=getattr(m, "_is_full_backward_hook", None),
        )

    def restore(self) -> None:
        m = self.module
        for name, keys in self.hooks.items():
            d = getattr(m, name)
            for k in set(d) - keys:
                del d[k]
        for attr in set(m.__dict__) - self.attrs:
            del m.__dict__[attr]
        for name, saved in (
            ("_modules", self.children),
            ("_parameters", self.params),
            ("_buffers", self.buffers),
        ):
            d = getattr(m, name)
            if list(d) != list(saved) or any(d[k] is not v for k, v in saved.items()):
                d.clear()
                d.update(saved)
        if "_is_full_backward_hook" in m.__dict__:
            m._is_full_backward_hook = self.full_backward
        m.training = self.training


@dataclass
class ModelSnapshot:
    """What :func:`preserve_model` restores: per-module state and per-parameter flags."""

    modules: list[_ModuleState] = field(default_factory=list)
    params: list[tuple[nn.Parameter, bool, Tensor | None]] = field(default_factory=list)

    @classmethod
    def take(cls, *models: nn.Module) -> ModelSnapshot:
        snap = cls()
        seen: set[int] = set()
        for model in models:
            for m in model.modules():
                if id(m) not in seen:
                    seen.add(id(m))
                    snap.modules.append(_ModuleState.of(m))
            for p in model.parameters():
                snap.params.append((p, p.requires_grad, p.grad))
        return snap

    def restore(self) -> None:
        for state in self.modules:
            state.restore()
        for p, requires_grad, grad in self.params:
            p.requires_grad_(requires_grad)
            p.grad = grad


@contextmanager
def preserve_model(
    *models: nn.Module, eval_mode: bool = True, freeze: bool = True
) -> Iterator[ModelSnapshot]:
    """Run a block that may change ``models``; restore them afterwards, even on error.

    Restored: every submodule's ``training`` flag, forward/backward/state-dict
    hooks (any added inside are removed), attributes added to a module
    (e.g. Captum's ``rule``), swapped child modules, parameter and buffer
    slots, each parameter's ``requires_grad`` and ``.grad`` (pytorch-grad-cam
    calls ``model.zero_grad()``). Parameter *values* are not copied: code
    inside must not write them (checked by the explainer tests).

    Args:
        *models: modules to protect (a classifier, a learned explainer).
        eval_mode: put the models in eval mode inside (so BatchNorm uses its
            running statistics and no statistic is updated).
        freeze: set ``requires_grad=False`` on all parameters inside, so
            backward passes compute input gradients only and no ``.grad`` is
            written.

    Yields:
        The snapshot taken on entry.
    """
    snap = ModelSnapshot.take(*models)
    try:
        for model in models:
            if eval_mode:
                model.eval()
            if freeze:
                for p in model.parameters():
                    p.requires_grad_(False)
        yield snap
    finally:
        snap.restore()


def count_hooks(model: nn.Module) -> int:
    """Number of hooks registered on ``model`` and its submodules (for tests and checks)."""
    return sum(len(getattr(m, k)) for m in model.modules() for k in HOOK_DICTS if hasattr(m, k))
