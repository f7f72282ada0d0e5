"""Faster forward passes for the frozen classifier in evaluation, behind flags.

``fast_forward(net, channels_last=..., compile=..., autocast_bf16=...)`` wraps
an eval-mode classifier so that every metric's forward pass runs in the
``channels_last`` memory format, through ``torch.compile``, and/or under CUDA
bf16 autocast. ``compare_predictions`` reports what a flag changes on the
``score=accuracy`` path: the largest logit difference and the samples whose
argmax flips. :class:`FastFlags` reads the flags from a run's ``evaluation``
block (``channels_last``, ``compile``, ``autocast``) and builds the metrics'
fast copy of the classifier (the explainer keeps the original). Measured
effect: ``scripts/bench.py`` (section "fast forward").
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from xaibench.errors import ConfigError

AUTOCAST = (None, "bf16")
"""The values of ``evaluation.autocast``."""


def evaluation_flag(evaluation: Mapping[str, Any] | None, key: str, default: bool) -> bool:
    """``evaluation.<key>`` as a bool (``default`` if absent); ConfigError if it is not one."""
    value = (evaluation or {}).get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"evaluation.{key}={value!r} must be true or false")
    return value


@dataclass(frozen=True)
class FastFlags:
    """The fast-forward flags of a run's ``evaluation`` block (all off: the classifier as it is).

    Attributes:
        channels_last: the metrics' forwards in the ``channels_last`` memory format.
        compile: the metrics' forwards through ``torch.compile``.
        autocast: ``None`` or ``"bf16"`` (CUDA only): the forwards under bf16 autocast.
    """

    channels_last: bool = False
    compile: bool = False
    autocast: str | None = None

    @classmethod
    def from_config(cls, evaluation: Mapping[str, Any] | None) -> FastFlags:
        """The flags of ``evaluation`` (a missing key is off).

        Raises:
            ConfigError: a flag that is not true/false, or ``autocast`` not null/bf16.
        """
        ev = evaluation or {}
        flags = {key: evaluation_flag(ev, key, False) for key in ("channels_last", "compile")}
        autocast = ev.get("autocast")
        if autocast not in AUTOCAST:
            raise ConfigError(
                f"evaluation.autocast={autocast!r} must be null or bf16 (bf16 needs a CUDA device)"
            )
        return cls(**flags, autocast=autocast)

    @property
    def on(self) -> bool:
        """Any flag set."""
        return self.channels_last or self.compile or self.autocast is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_device(self, device: torch.device | str) -> None:
        """Raise ConfigError if ``autocast`` is set and the evaluation runs on a non-CUDA ``device``."""
        kind = torch.device(device).type
        if self.autocast is not None and kind != "cuda":
            raise ConfigError(
                f"evaluation.autocast={self.autocast} needs a CUDA device, and this evaluation "
                f"runs on {kind}; set evaluation.autocast=null (or run with trainer=gpu)"
            )

    def build(self, net: nn.Module, example: Tensor | None = None) -> nn.Module:
        """A fast copy of the frozen classifier ``net`` (eval mode) on its device; ``net`` itself
        with every flag off. ``net`` is never changed (the explainer keeps using it).

        Args:
            net: the classifier, ``(B, C, H, W) -> (B, classes)``.
            example: ``(B, C, H, W)`` inputs ``compile`` is built on (see :func:`fast_forward`).
        """
        if not self.on:
            return net
        self.check_device(_device(net))
        return fast_forward(
            copy.deepcopy(net),
            channels_last=self.channels_last,
            compile=self.compile,
            autocast_bf16=self.autocast == "bf16",
            example=example,
        )


class FastForward(nn.Module):
    """``net`` with its inputs in ``channels_last`` and/or under CUDA bf16 autocast; logits in float32.

    Args:
        net: the classifier, already in ``channels_last`` when ``channels_last`` is set.
        channels_last: convert 4-D inputs to ``torch.channels_last`` before the forward.
        autocast_bf16: run the forward under ``torch.autocast("cuda", torch.bfloat16)``.
    """

    def __init__(self, net: nn.Module, *, channels_last: bool, autocast_bf16: bool) -> None:
        super().__init__()
        self.net = net
        self.channels_last = channels_last
        self.autocast_bf16 = autocast_bf16

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)`` of ``x`` ``(B, C, H, W)``, in ``x``'s dtype."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.autocast_bf16:
            return self.net(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = self.net(x)
        return out.to(x.dtype)


def _device(net: nn.Module) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def fast_forward(
    net: nn.Module,
    *,
    channels_last: bool = False,
    compile: bool = False,
    autocast_bf16: bool = False,
    example: Tensor | None = None,
) -> nn.Module:
    """The frozen classifier ``net`` (eval mode) with the chosen speed-ups; returns a module.

    With every flag off ``net`` itself is returned. ``channels_last`` converts
    ``net``'s parameters in place (values unchanged). ``compile`` builds
    ``torch.compile`` once on ``example`` (``(B, C, H, W)``; a 2-image random
    batch of 3×32×32 if None) so that a compiler failure surfaces here.

    Raises:
        ConfigError: ``autocast_bf16`` on a non-CUDA model, or ``torch.compile``
            failing to build (the message carries the compiler's first line).
    """
    device = _device(net)
    if autocast_bf16 and device.type != "cuda":
        raise ConfigError(
            f"fast_forward: autocast_bf16=true needs a CUDA model (it is on {device}); "
            "set it false on CPU"
        )
    if not (channels_last or compile or autocast_bf16):
        return net
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    out: nn.Module = FastForward(net, channels_last=channels_last, autocast_bf16=autocast_bf16)
    out.eval()
    if compile:
        out = _compiled(out, device, example)
    return out


def _compiled(module: nn.Module, device: torch.device, example: Tensor | None) -> nn.Module:
    """``torch.compile(module)``, built once on ``example`` here; ConfigError if it cannot build."""
    # dynamic=None: the build here is for example's shape; the metrics' other batch sizes
    # (chunk remainders, the rows SharedForward has not seen) recompile once with a dynamic
    # batch dimension instead of once per size (dynamic=False hits the recompile limit)
    compiled = torch.compile(module, dynamic=None)
    x = example if example is not None else torch.rand(2, 3, 32, 32, device=device)
    try:
        with torch.inference_mode():
            compiled(x)
    except Exception as err:  # the compiler raises many types (BackendCompilerFailed, OSError, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"fast_forward: compile=true failed to build torch.compile on {device} "
            f"({type(err).__name__}: {first}); set compile false or install a working compiler "
            "toolchain (a C++ compiler for the CPU backend, Triton for CUDA)"
        ) from err
    return compiled


@torch.inference_mode()
def compare_predictions(
    a: nn.Module, b: nn.Module, images: Tensor, *, batch_size: int = 256
) -> dict[str, float | int]:
    """How far model ``b``'s logits are from ``a``'s on ``images`` ``(N, C, H, W)``.

    Returns:
        ``max_abs_logit_diff`` (logit units, float), ``flipped`` (samples whose
        argmax differs, int), ``n`` (samples compared).
    """
    worst, flipped = 0.0, 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        la, lb = a(x).float(), b(x).float()
        worst = max(worst, float((la - lb).abs().max()))
        flipped += int((la.argmax(1) != lb.argmax(1)).sum())
    return {"max_abs_logit_diff": worst, "flipped": flipped, "n": int(images.shape[0])}
