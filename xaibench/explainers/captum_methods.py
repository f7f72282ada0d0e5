"""Captum attribution methods (DeepFaith's priors) behind the explainer interface.

Captum does the method. xaibench does the batching (images in chunks of
``batch_size``; Captum's ``internal_batch_size`` / ``perturbations_per_eval``
bound the expanded batches inside), baselines, feature masks, seeds, channel
reduction and normalisation. Methods that draw random numbers (LIME,
KernelSHAP, GradientSHAP, DeepLiftSHAP) take ``seed`` and are deterministic for
a given ``seed`` and ``batch_size``: they run under a forked RNG, so the
caller's global random state is untouched.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from captum.attr import (
    DeepLift,
    DeepLiftShap,
    GradientShap,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    Lime,
    Occlusion,
    Saliency,
)
from torch import Tensor, nn

from xaibench.baselines import make_baseline
from xaibench.explainers.base import Explainer, register_explainer
from xaibench.explainers.features import baseline_distribution, feature_mask

# Captum warns on every call about things this package handles or intends:
# hooks it sets (removed by Captum, and by preserve_model as a safety net) and
# LIME/SHAP fitting one surrogate per image when given a batch.
_CAPTUM_NOISE = (
    r"Setting forward, backward hooks and attributes on non-linear",
    r"Setting backward hooks on ReLU activations",
    r"You are providing multiple inputs for Lime / Kernel SHAP",
    r"Minimum element in feature mask is not 0",
)


@contextlib.contextmanager
def quiet_captum() -> Iterator[None]:
    """Silence Captum's per-call notices listed in ``_CAPTUM_NOISE`` (nothing else)."""
    with warnings.catch_warnings():
        for msg in _CAPTUM_NOISE:
            warnings.filterwarnings("ignore", message=msg, category=UserWarning)
        yield


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run with torch's and numpy's global RNGs seeded to ``seed``, restoring both after.

    Captum draws from both (GradientShap samples path points with ``np.random``).
    """
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            np.random.seed(int(seed) % 2**32)
            yield
    finally:
        np.random.set_state(np_state)


class CaptumExplainer(Explainer):
    """Base for Captum methods: chunk, call :meth:`attribute`, concatenate.

    Args:
        reduction: channel reduction of the ``(N, C, H, W)`` attributions.
        normalize: per-sample normalisation into [0, 1].
        percentile: clipping percentile for ``normalize="percentile"``.
        batch_size: images per chunk.
        seed: seed of the method's random draws (random methods only).
    """

    random_method = False

    def __init__(self, *, seed: int | None = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = seed if self.random_method else None

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """Captum attributions ``(n, C, H, W)`` for one chunk."""
        raise NotImplementedError

    def explain(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        if self.needs_grad:
            images.requires_grad_(True)  # our private copy; Captum warns otherwise
        with quiet_captum(), seeded(self.seed, images.device):
            return torch.cat([self.attribute(model, x, t) for x, t in self.chunks(images, targets)])


@register_explainer("saliency")
class SaliencyExplainer(CaptumExplainer):
    """Saliency (Simonyan et al. 2014): the input gradient ∂y_t/∂x."""

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return Saliency(model).attribute(images, target=targets, abs=False)


@register_explainer("input_x_gradient")
class InputXGradientExplainer(CaptumExplainer):
    """Input × Gradient: x ⊙ ∂y_t/∂x."""

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return InputXGradient(model).attribute(images, target=targets)


@register_explainer("guided_backprop")
class GuidedBackpropExplainer(CaptumExplainer):
    """Guided Backpropagation (Springenberg et al. 2015); needs ReLU modules."""

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return GuidedBackprop(model).attribute(images, target=targets)


class _BaselineMixin:
    """Shared ``baseline`` argument: a number, ``"mean"`` or ``"blur"``."""

    baseline: float | str

    def baselines(self, images: Tensor) -> Tensor:
        return make_baseline(images, self.baseline)


@register_explainer("integrated_gradients")
class IntegratedGradientsExplainer(_BaselineMixin, CaptumExplainer):
    """Integrated Gradients (Sundararajan et al. 2017).

    Args:
        n_steps: points on the path from the baseline to the image.
        baseline: reference image (number, ``"mean"`` or ``"blur"``).
        internal_batch_size: path points × images per forward/backward pass.
    """

    def __init__(
        self,
        *,
        n_steps: int = 32,
        baseline: float | str = 0.0,
        internal_batch_size: int = 256,
        method: str = "gausslegendre",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.n_steps, self.baseline, self.method = n_steps, baseline, method
        self.internal_batch_size = internal_batch_size

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return IntegratedGradients(model).attribute(
            images,
            baselines=self.baselines(images),
            target=targets,
            n_steps=self.n_steps,
            method=self.method,
            internal_batch_size=self.internal_batch_size,
        )


@register_explainer("deeplift")
class DeepLiftExplainer(_BaselineMixin, CaptumExplainer):
    """DeepLIFT, Rescale rule (Shrikumar et al. 2017); needs one module per non-linearity.

    Args:
        baseline: reference image (number, ``"mean"`` or ``"blur"``).
    """

    def __init__(self, *, baseline: float | str = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.baseline = baseline

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return DeepLift(model).attribute(images, baselines=self.baselines(images), target=targets)


class _ShapBase(CaptumExplainer):
    random_method = True

    def __init__(
        self, *, n_baselines: int = 8, baseline_dist: str | float = "uniform", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.n_baselines, self.baseline_dist = n_baselines, baseline_dist

    def reference(self, images: Tensor) -> Tensor:
        seed = 0 if self.seed is None else self.seed
        return baseline_distribution(images, self.n_baselines, self.baseline_dist, seed=seed)


@register_explainer("gradient_shap")
class GradientShapExplainer(_ShapBase):
    """GradientSHAP (Lundberg & Lee 2017): expected gradients on noisy paths to references.

    Args:
        n_samples: random (reference, path point) draws per image.
        stdevs: std of Gaussian noise added to the image per draw.
        n_baselines: size of the reference set.
        baseline_dist: ``"uniform"`` noise references or a constant.
    """

    def __init__(self, *, n_samples: int = 16, stdevs: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_samples, self.stdevs = n_samples, stdevs

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return GradientShap(model).attribute(
            images,
            baselines=self.reference(images),
            target=targets,
            n_samples=self.n_samples,
            stdevs=self.stdevs,
        )


@register_explainer("deeplift_shap")
class DeepLiftShapExplainer(_ShapBase):
    """DeepLIFT-SHAP: DeepLIFT averaged over a reference set (memory: chunk × n_baselines).

    Args:
        n_baselines: size of the reference set (>= 2).
        baseline_dist: ``"uniform"`` noise references or a constant.
    """

    def __init__(self, *, n_baselines: int = 8, **kwargs: Any) -> None:
        if not (isinstance(n_baselines, int) and n_baselines >= 2):
            raise ValueError(
                f"deeplift_shap needs n_baselines >= 2 references, got {n_baselines!r}"
            )
        super().__init__(n_baselines=n_baselines, **kwargs)

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return DeepLiftShap(model).attribute(
            images, baselines=self.reference(images), target=targets
        )


class _FeatureMaskMixin:
    """Shared feature-mask arguments (``mask``, ``patch``, ``n_segments``)."""

    mask: str
    patch: int
    n_segments: int

    def feature_mask(self, images: Tensor) -> Tensor:
        return feature_mask(images, self.mask, patch=self.patch, n_segments=self.n_segments)


@register_explainer("occlusion")
class OcclusionExplainer(_BaselineMixin, CaptumExplainer):
    """Occlusion (Zeiler & Fergus 2014): score drop when a sliding window is set to the baseline.

    Args:
        window: side of the square window in pixels (all channels at once).
        stride: window step in pixels.
        baseline: fill value (number, ``"mean"`` or ``"blur"``).
        perturbations_per_eval: occluded copies per forward pass.
    """

    needs_grad = False

    def __init__(
        self,
        *,
        window: int = 8,
        stride: int = 4,
        baseline: float | str = 0.0,
        perturbations_per_eval: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for key, val in (("window", window), ("stride", stride)):
            if not (isinstance(val, int) and val >= 1):
                raise ValueError(f"occlusion {key}={val!r} must be an integer >= 1 (pixels)")
        self.window, self.stride, self.baseline = window, stride, baseline
        self.perturbations_per_eval = perturbations_per_eval

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        c = images.shape[1]
        return Occlusion(model).attribute(
            images,
            sliding_window_shapes=(c, self.window, self.window),
            strides=(c, self.stride, self.stride),
            baselines=self.baselines(images),
            target=targets,
            perturbations_per_eval=self.perturbations_per_eval,
        )


class _SurrogateBase(_FeatureMaskMixin, _BaselineMixin, CaptumExplainer):
    """LIME / KernelSHAP: a surrogate fitted on ``n_samples`` feature-subset perturbations."""

    random_method = True
    needs_grad = False

    def __init__(
        self,
        *,
        n_samples: int = 200,
        mask: str = "grid",
        patch: int = 8,
        n_segments: int = 64,
        baseline: float | str = 0.0,
        perturbations_per_eval: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.n_samples, self.mask, self.patch, self.n_segments = n_samples, mask, patch, n_segments
        self.baseline, self.perturbations_per_eval = baseline, perturbations_per_eval

    def captum_method(self, model: nn.Module) -> Any:
        raise NotImplementedError

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return self.captum_method(model).attribute(
            images,
            baselines=self.baselines(images),
            target=targets,
            feature_mask=self.feature_mask(images),
            n_samples=self.n_samples,
            perturbations_per_eval=self.perturbations_per_eval,
        )


@register_explainer("lime")
class LimeExplainer(_SurrogateBase):
    """LIME (Ribeiro et al. 2016) over patch-grid or superpixel features (Captum's Lasso surrogate).

    Args:
        n_samples: perturbed copies per image.
        mask: ``"grid"`` (``patch``×``patch`` cells) or ``"slic"`` (``n_segments`` superpixels).
        baseline: fill value of removed features.
        perturbations_per_eval: perturbed copies per forward pass.
    """

    def captum_method(self, model: nn.Module) -> Any:
        return Lime(model)


@register_explainer("kernel_shap")
class KernelShapExplainer(_SurrogateBase):
    """Kernel SHAP (Lundberg & Lee 2017) over patch-grid or superpixel features.

    Args: as :class:`LimeExplainer`.
    """

    def captum_method(self, model: nn.Module) -> Any:
        return KernelShap(model)
