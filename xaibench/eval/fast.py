"""Faster forward passes for the frozen classifier in evaluation, behind flags.

``fast_forward(net, channels_last=..., compile=..., autocast_bf16=...)`` wraps
an eval-mode classifier so that every metric's forward pass runs in the
``channels_last`` memory format, through ``torch.compile``, and/or under CUDA
bf16 autocast. ``compare_predictions`` reports what a flag changes on the
``score=accuracy`` path: the largest logit difference and the samples whose
argmax flips. Measured effect: ``scripts/bench.py`` (section "fast forward").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaibench.errors import ConfigError


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
    compiled = torch.compile(module, dynamic=False)
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
