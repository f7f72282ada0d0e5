"""Input validation shared by every metric: errors that name the problem and the fix.

All checks raise ``ValueError`` (``TypeError`` for a wrong kind of object)
with the offending shapes or values in the message, never ``assert``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

GRID_TOL = 1e-6
"""Heatmap values within this distance of a threshold count as on it (float32 grids)."""


def check_images(images: Tensor, *, name: str = "images") -> None:
    """``images (N, *S)``: a tensor with a non-empty batch, at least one feature, finite values.

    Args:
        images: the tensor to check.
        name: what to call it in messages (``"heatmaps"`` for QGE's inverse).
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() < 2:
        raise ValueError(f"{name} {tuple(images.shape)} must be (N, *S) with a batch dimension")
    if images.shape[0] == 0:
        raise ValueError(f"empty batch: {name} has N = 0 samples; pass at least one")
    if images[0].numel() == 0:
        raise ValueError(f"{name} {tuple(images.shape)} have no features per sample")
    if (images.is_floating_point() or images.is_complex()) and not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).sum())
        raise ValueError(
            f"{name} contain {bad} non-finite values (NaN/inf); clean the data first "
            "(e.g. torch.nan_to_num) or drop those samples"
        )


_CASTS = {
    torch.float64: "double",
    torch.float32: "float",
    torch.float16: "half",
    torch.bfloat16: "bfloat16",
}


def check_model_dtype(model: torch.nn.Module, images: Tensor) -> None:
    """``images`` must have the dtype of the model's floating-point parameters (none: no check).

    Raises:
        ValueError: naming both dtypes and the casts that fix it, e.g. "images
            are float64 but the model's parameters are float32; use
            images.float() or model.double()".
    """
    params = getattr(model, "parameters", None)
    dtype = next((p.dtype for p in params() if p.is_floating_point()), None) if params else None
    if dtype is None or images.dtype == dtype:
        return
    fixes = [f"images.{_CASTS[dtype]}()" if dtype in _CASTS else f"images.to({dtype})"]
    if images.dtype in _CASTS:  # an integer image asks for a cast of the images only
        fixes.append(f"model.{_CASTS[images.dtype]}()")
    raise ValueError(
        f"images are {_dtype_name(images.dtype)} but the model's parameters are "
        f"{_dtype_name(dtype)}; use {' or '.join(fixes)}"
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_heatmaps(heatmaps: Tensor, images: Tensor, *, unit_range: bool = True) -> None:
    """``heatmaps`` must be ``(N, 1, *S[1:])`` (broadcast over channels) or ``images.shape``.

    Args:
        heatmaps: explanations; finite, and in ``[0, 1]`` when ``unit_range``.
        images: ``(N, *S)`` inputs they explain.
        unit_range: require values in ``[0, 1]`` (MSI, thresholds); ``False``
            for metrics on raw attributions.
    """
    if not isinstance(heatmaps, Tensor):
        raise TypeError(f"heatmaps must be a torch.Tensor, got {type(heatmaps).__name__}")
    shape, ishape = tuple(heatmaps.shape), tuple(images.shape)
    allowed = [ishape]
    if images.dim() >= 3 and ishape[1] != 1:
        allowed.insert(0, (ishape[0], 1, *ishape[2:]))
    if shape not in allowed:
        options = " or ".join(str(a) for a in allowed)
        raise ValueError(f"heatmaps {shape} must be {options} to match images {ishape}")
    if not torch.isfinite(heatmaps).all():
        bad = int((~torch.isfinite(heatmaps)).sum())
        raise ValueError(
            f"heatmaps contain {bad} non-finite values (NaN/inf); explain again or nan_to_num them"
        )
    if unit_range:
        lo, hi = float(heatmaps.min()), float(heatmaps.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"heatmaps must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]; normalise them first "
                "(e.g. per-sample min-max)"
            )


def check_targets(targets: Tensor, n: int, num_classes: int | None = None) -> None:
    """``targets (N,)`` integer class indices in ``[0, num_classes)``."""
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if tuple(targets.shape) != (n,):
        raise ValueError(
            f"targets {tuple(targets.shape)} must be ({n},): one class index per image"
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if num_classes is not None and n > 0:
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"targets out of range: got values in [{lo}, {hi}] but the model has "
                f"{num_classes} classes (valid: 0..{num_classes - 1})"
            )


def check_alpha_min(alpha_min: float) -> None:
    """``alpha_min`` strictly inside ``(0, 1)``."""
    if not (isinstance(alpha_min, (int, float)) and 0.0 < float(alpha_min) < 1.0):
        raise ValueError(
            f"alpha_min must be in (0, 1), got {alpha_min!r}; the paper uses 0.4 or 0.5"
        )


def check_step(
    step: float, span: float = 1.0, *, name: str = "step", what: str = "the range"
) -> int:
    """Number of intervals ``span / step``; ``ValueError`` unless it is a positive integer.

    Args:
        step: grid spacing, ``> 0``.
        span: length of the range the grid covers (e.g. ``1 - alpha_min``).
        name: argument name for the message.
        what: description of the range for the message.
    """
    if not (isinstance(step, (int, float)) and 0.0 < float(step) <= span + GRID_TOL):
        raise ValueError(f"{name} must be in (0, {span:g}], got {step!r}")
    count = span / float(step)
    intervals = round(count)
    if intervals < 1 or not math.isclose(count, intervals, rel_tol=0.0, abs_tol=1e-6):
        near = span / max(1, intervals)
        raise ValueError(
            f"{name}={step:g} does not divide {what} ({span:g} / {step:g} = {count:.4g} steps); "
            f"use a divisor such as {near:.6g}"
        )
    return intervals


def check_masks(masks: Tensor, heatmaps: Tensor) -> None:
    """Ground-truth ``masks`` (bool) with the heatmaps' shape ``(N, 1, H, W)``."""
    if not isinstance(masks, Tensor):
        raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    if tuple(masks.shape) != tuple(heatmaps.shape):
        raise ValueError(f"masks {tuple(masks.shape)} must match heatmaps {tuple(heatmaps.shape)}")
    if masks.dtype != torch.bool:
        raise ValueError(f"masks must be bool, got {masks.dtype}; use masks > 0.5")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is unknown; choose one of {list(choices)}")


TARGET_MODES = ("label", "predicted")


def prepare_batch(
    model: torch.nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    target: str = "label",
    unit_range: bool = True,
    batch_size: int = 256,
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate a metric's inputs and move them to the model's device.

    Runs the checks above (images finite and of the model's dtype), then one
    forward pass: on the first image to learn the number of classes
    (``target="label"``), or on every image to use the model's predictions as
    targets (``target="predicted"``).

    Returns:
        ``(images, heatmaps, targets)`` on the model's device; heatmaps in the
        images' dtype, targets int64.
    """
    from xaibench.metrics.engine import forward_chunks, model_device

    check_choice("target", target, TARGET_MODES)
    check_images(images)
    check_heatmaps(heatmaps, images, unit_range=unit_range)
    check_targets(targets, images.shape[0])
    check_model_dtype(model, images)
    device = model_device(model)
    images = images.to(device)
    heatmaps = heatmaps.to(device=device, dtype=images.dtype)
    targets = targets.to(device=device, dtype=torch.int64)
    if target == "predicted":
        logits = forward_chunks(model, lambda sl: images[sl], images.shape[0], batch_size)
        return images, heatmaps, logits.argmax(dim=1)
    with torch.inference_mode():
        num_classes = model(images[:1]).shape[1]
    check_targets(targets, images.shape[0], num_classes)
    return images, heatmaps, targets


def prepare_perturbation(
    model: torch.nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    score: str,
    target: str,
    baseline: float | str | Tensor,
    batch_size: int,
    seed: int,
    indices: Tensor | None,
    unit_range: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A perturbation metric's prologue: check ``score``, :func:`prepare_batch`, build the fill.

    Returns:
        ``(images, heatmaps, targets, fill)`` on the model's device; ``fill``
        is :func:`~xaibench.baselines.make_baseline` of ``baseline`` seeded by
        ``(seed, indices)``.
    """
    from xaibench.baselines import make_baseline
    from xaibench.metrics.engine import SCORES

    check_choice("score", score, SCORES)
    images, heatmaps, targets = prepare_batch(
        model,
        images,
        heatmaps,
        targets,
        target=target,
        unit_range=unit_range,
        batch_size=batch_size,
    )
    return images, heatmaps, targets, make_baseline(images, baseline, seed=seed, indices=indices)
