"""LAX (Learnable Adapter eXplanation, LAX paper §3.2): the head and its loss.

The head reads the frozen backbone's last feature map and outputs a
low-resolution mask in [0, 1] (sigmoid *before* upsampling, as the paper does);
:class:`LAX` pairs it with the backbone and upsamples bilinearly to the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class LAXHead(nn.Module):
    """Convs ``C_feat → 256w → 128w → 64w → 1`` (3×3, BN, ReLU; last 1×1) and a sigmoid.

    Args:
        in_channels: channels of the backbone's feature map (``512·width``).
        width: the backbone's width multiplier; hidden channels scale with it.
        feature_upsample: integer factor applied (bilinear) to the feature map
            before the convs, e.g. 2 for CIFAR's 4×4 → 8×8 (paper A.3.1) or the
            ``stride2`` demo backbone; 1 for none.
    """

    def __init__(self, in_channels: int, *, width: float = 1.0, feature_upsample: int = 1) -> None:
        super().__init__()
        if not (isinstance(feature_upsample, int) and feature_upsample >= 1):
            raise ValueError(
                f"explainer.feature_upsample={feature_upsample!r} must be an integer >= 1"
            )
        if not (isinstance(width, (int, float)) and width > 0):
            raise ValueError(f"width={width!r} must be > 0")
        self.feature_upsample = feature_upsample
        chans = [in_channels] + [_scaled(c, width) for c in (256, 128, 64)]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]
        layers.append(nn.Conv2d(chans[-1], 1, 1))
        self.convs = nn.Sequential(*layers)

    def forward(self, feats: Tensor) -> Tensor:
        """Low-resolution mask ``(N, 1, h·u, w·u)`` in [0, 1] from features ``(N, C, h, w)``."""
        if self.feature_upsample > 1:
            feats = F.interpolate(
                feats, scale_factor=self.feature_upsample, mode="bilinear", align_corners=False
            )
        return torch.sigmoid(self.convs(feats))


class LAX(nn.Module):
    """A frozen classifier plus a :class:`LAXHead`; ``explain(images)`` is the explainer.

    Args:
        backbone: classifier with ``features(x)`` and ``head(feats)`` (a
            :class:`~xaibench.models.resnet.ResNet`); kept frozen by the caller.
        head: the explanation head.
    """

    def __init__(self, backbone: nn.Module, head: LAXHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def masks(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(low-res mask (N,1,h,w), full mask (N,1,H,W))``, both in [0, 1]."""
        low = self.head(self.backbone.features(images))
        full = F.interpolate(low, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return low, full

    def explain(self, images: Tensor) -> Tensor:
        """Heatmaps ``(N, 1, H, W)`` in [0, 1] for images ``(N, C, H, W)`` (one forward pass)."""
        return self.masks(images)[1]


def entropy_loss(masks: Tensor, temperature: float, eps: float = 1e-8) -> Tensor:
    """LAX paper eq. 7: mean over samples of ``H(softmax(max(0, M_i) / t))``.

    Args:
        masks: low-resolution masks ``(N, 1, h, w)`` after the sigmoid, in [0, 1].
        temperature: ``t`` > 0; smaller sharpens the softmax.
        eps: the ``ε`` inside the log.

    Returns:
        Scalar entropy in nats, in ``[0, log(h·w)]``.
    """
    p = torch.softmax(masks.clamp_min(0).flatten(1) / temperature, dim=1)
    return -(p * torch.log(p + eps)).sum(1).mean()


def lax_loss(
    logits: Tensor,
    labels: Tensor,
    masks: Tensor,
    *,
    lam: float,
    temperature: float,
    eps: float = 1e-8,
) -> dict[str, Tensor]:
    """LAX paper eq. 9: ``CE(f(X ⊙ M), y) + λ · L_entropy(M)``; returns ``loss``, ``ce``, ``entropy``."""
    ce = F.cross_entropy(logits, labels)
    ent = entropy_loss(masks, temperature, eps)
    return {"loss": ce + lam * ent, "ce": ce, "entropy": ent}
