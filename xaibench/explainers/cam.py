"""The CAM family, wrapping pytorch-grad-cam (the library does the method).

xaibench adds what the library lacks: per-sample targets in a batch, chunking,
gradients on inside a ``no_grad`` test loop, a model that is unchanged
afterwards (pytorch-grad-cam calls ``model.eval()`` for good and leaves hooks
when a forward raises; :func:`~xaibench.explainers.guard.preserve_model`
undoes both) and the [0, 1] contract. The library returns per-sample min-max
scaled maps upsampled to the input (numpy, bilinear); we bring them back to
torch on the images' device.

Target layer: ``model.target_layer`` (xaibench ResNets: ``layer4[-1]``) unless
``target_layer`` names a dotted module path such as ``"layer3.1"``.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, ClassVar

import torch
from pytorch_grad_cam import (
    KPCA_CAM,
    AblationCAM,
    EigenCAM,
    FinerCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget
from torch import Tensor, nn

from xaibench.explainers.base import Explainer, register_explainer


def resolve_target_layer(model: nn.Module, target_layer: str | None) -> nn.Module:
    """The module a CAM hooks: ``model.target_layer`` or the dotted path ``target_layer``."""
    if target_layer is None:
        layer = getattr(model, "target_layer", None)
        if not isinstance(layer, nn.Module):
            raise ValueError(
                f"{type(model).__name__} has no `target_layer` attribute; pass "
                "target_layer='<dotted module path>' (e.g. 'layer4.1')"
            )
        return layer
    try:
        return model.get_submodule(target_layer)
    except AttributeError as err:
        names = [n for n, _ in model.named_modules() if n][-8:]
        raise ValueError(
            f"target_layer={target_layer!r} is not a submodule of {type(model).__name__}; "
            f"e.g. one of {names}"
        ) from err


class CAMExplainer(Explainer):
    """Base for pytorch-grad-cam methods.

    Args:
        target_layer: dotted module path; ``None`` uses ``model.target_layer``.
        batch_size: images per chunk.
        normalize: see :class:`~xaibench.explainers.base.Explainer` (the library
            already min-max scales each map, so ``"minmax"`` is a no-op guard).
        **cam_kwargs: keyword arguments of the pytorch-grad-cam class.
    """

    cam_class: ClassVar[type]
    #: methods that run extra forward passes with tqdm progress bars (silenced)
    quiet: ClassVar[bool] = False

    def __init__(
        self,
        *,
        target_layer: str | None = None,
        batch_size: int = 32,
        normalize: str = "minmax",
        percentile: float = 99.0,
        **cam_kwargs: Any,
    ) -> None:
        super().__init__(normalize=normalize, percentile=percentile, batch_size=batch_size)
        self.target_layer = target_layer
        self.cam_kwargs = cam_kwargs

    def build(self, model: nn.Module, layer: nn.Module) -> Any:
        """The library object (registers its hooks on ``layer``)."""
        return self.cam_class(model, [layer], **self.cam_kwargs)

    def make_targets(self, model: nn.Module, images: Tensor, targets: Tensor) -> list[Any]:
        """One pytorch-grad-cam target object per sample."""
        return [ClassifierOutputTarget(int(t)) for t in targets.tolist()]

    def run(self, cam: Any, images: Tensor, cam_targets: list[Any]) -> Any:
        """Call the library; returns numpy ``(n, H, W)`` in [0, 1]."""
        return cam(input_tensor=images, targets=cam_targets)

    @staticmethod
    def release(cam: Any) -> None:
        cam.activations_and_grads.release()

    def explain(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        layer = resolve_target_layer(model, self.target_layer)
        maps = []
        for x, t in self.chunks(images, targets):
            cam_targets = self.make_targets(model, x, t)
            cam = self.build(model, layer)
            try:
                if getattr(cam, "uses_gradients", True):
                    x = x.requires_grad_(
                        True
                    )  # parameters are frozen: gradients flow via the input
                quiet = (
                    contextlib.redirect_stderr(io.StringIO())
                    if self.quiet
                    else contextlib.nullcontext()
                )
                with quiet:
                    out = self.run(cam, x, cam_targets)
            finally:
                self.release(cam)
            maps.append(torch.from_numpy(out).to(images.device).unsqueeze(1))  # (n, 1, H, W)
        return torch.cat(maps)


@register_explainer("gradcam")
class GradCAMExplainer(CAMExplainer):
    """Grad-CAM (Selvaraju et al. 2017): ReLU(Σ_k mean(∂y/∂A_k) A_k)."""

    cam_class = GradCAM


@register_explainer("gradcampp")
class GradCAMPlusPlusExplainer(CAMExplainer):
    """Grad-CAM++ (Chattopadhay et al. 2018): higher-order gradient weights."""

    cam_class = GradCAMPlusPlus


@register_explainer("layercam")
class LayerCAMExplainer(CAMExplainer):
    """LayerCAM (Jiang et al. 2021): ReLU(∂y/∂A) ⊙ A per position."""

    cam_class = LayerCAM


@register_explainer("kpcacam")
class KPCACAMExplainer(CAMExplainer):
    """KPCA-CAM: first kernel-PCA component of the activations (class-agnostic).

    Args:
        kernel: scikit-learn ``KernelPCA`` kernel (``"sigmoid"``, ``"rbf"``, ...).
        gamma: kernel coefficient; ``None`` is scikit-learn's default.
    """

    cam_class = KPCA_CAM
    uses_targets = False

    def __init__(
        self, *, kernel: str = "sigmoid", gamma: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(kernel=kernel, gamma=gamma, **kwargs)


@register_explainer("eigencam")
class EigenCAMExplainer(CAMExplainer):
    """Eigen-CAM: first principal component of the activations (class-agnostic)."""

    cam_class = EigenCAM
    uses_targets = False


@register_explainer("scorecam")
class ScoreCAMExplainer(CAMExplainer):
    """Score-CAM (Wang et al. 2020): each channel weighted by the score of the image it masks.

    Args:
        forward_batch_size: masked images per forward pass inside the library.
    """

    cam_class = ScoreCAM
    quiet = True

    def __init__(self, *, forward_batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.forward_batch_size = forward_batch_size

    def build(self, model: nn.Module, layer: nn.Module) -> Any:
        cam = ScoreCAM(model, [layer], **self.cam_kwargs)
        cam.batch_size = self.forward_batch_size  # read by ScoreCAM.get_cam_weights
        return cam


@register_explainer("ablationcam")
class AblationCAMExplainer(CAMExplainer):
    """Ablation-CAM (Desai & Ramaswamy 2020): score drop when each channel is zeroed.

    Args:
        forward_batch_size: ablated copies per forward pass inside the library.
        ratio_channels_to_ablate: fraction of channels ablated (1.0 = all).
    """

    cam_class = AblationCAM
    quiet = True

    def __init__(
        self, *, forward_batch_size: int = 64, ratio_channels_to_ablate: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(
            batch_size=kwargs.pop("batch_size", 32),
            **{"ratio_channels_to_ablate": ratio_channels_to_ablate, **kwargs},
        )
        self.cam_kwargs["batch_size"] = forward_batch_size


@register_explainer("finercam")
class FinerCAMExplainer(CAMExplainer):
    """Finer-CAM (Zhang et al. 2025): Grad-CAM of the target's logit minus its most similar classes'.

    For each sample the comparison classes are those whose logits are closest
    to the target's (ranks ``comparison_categories`` of ``|z_k - z_target|``,
    rank 0 being the target itself), weighted by their softmax probability, as
    the library's own target selection does for the predicted class.

    Args:
        alpha: comparison strength (0 gives Grad-CAM).
        comparison_categories: similarity ranks compared against (1 = closest).
    """

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        comparison_categories: tuple[int, ...] = (1, 2, 3),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        ranks = [int(c) for c in comparison_categories]
        if not ranks or min(ranks) < 1:
            raise ValueError(
                f"comparison_categories={comparison_categories!r} must be similarity ranks >= 1 "
                "(rank 0 is the target itself), e.g. [1, 2, 3]"
            )
        self.alpha = float(alpha)
        self.comparison_categories = tuple(ranks)

    def build(self, model: nn.Module, layer: nn.Module) -> Any:
        return FinerCAM(model, [layer], base_method=GradCAM, **self.cam_kwargs)

    @staticmethod
    def release(cam: Any) -> None:
        cam.base_cam.activations_and_grads.release()

    def make_targets(self, model: nn.Module, images: Tensor, targets: Tensor) -> list[Any]:
        with torch.no_grad():
            logits = model(images)  # (n, K)
        ranks = [r for r in self.comparison_categories if r < logits.shape[1]]
        dist = (logits - logits.gather(1, targets[:, None])).abs()
        dist.scatter_(1, targets[:, None], -1.0)  # the target itself is rank 0
        order = dist.argsort(dim=1, stable=True)[:, ranks].tolist()  # (n, len(ranks))
        return [
            FinerWeightedTarget(int(t), [int(c) for c in cmp], self.alpha)
            for t, cmp in zip(targets.tolist(), order, strict=True)
        ]
