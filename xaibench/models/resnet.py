"""ResNet18 backbone with a width multiplier and three stems.

Parameter names match ``torchvision.models.resnet18`` so that torchvision's
state dict loads at ``width=1.0, stem="imagenet"``. Every ReLU is its own
module (Captum's DeepLift/LRP need one module per non-linearity).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

STEMS = ("imagenet", "cifar", "stride2")
_BASE_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with an identity (or 1×1 projection) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNet(nn.Module):
    """ResNet18 (BasicBlock, [2, 2, 2, 2]) returning logits ``(N, num_classes)``.

    Args:
        num_classes: number of output classes.
        width: channel multiplier; 1.0 gives the paper's 512-channel features.
        stem: ``"imagenet"`` (7×7/2 conv + max-pool, total stride 32),
            ``"cifar"`` (3×3/1 conv, no pool, total stride 8) or
            ``"stride2"`` (3×3/2 conv, no pool, total stride 16).
        in_channels: input channels (3 for RGB).
    """

    def __init__(
        self, num_classes: int, *, width: float = 1.0, stem: str = "imagenet", in_channels: int = 3
    ) -> None:
        super().__init__()
        _check_args(num_classes, width, stem, in_channels)
        widths = [max(1, int(round(c * width))) for c in _BASE_WIDTHS]
        self.stem, self.width, self.num_classes = stem, float(width), int(num_classes)
        self.feature_channels = widths[-1]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(
                in_channels, widths[0], 3, 1 if stem == "cifar" else 2, 1, bias=False
            )
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        planes = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(planes, w, stride), BasicBlock(w, w, 1))
            self.add_module(f"layer{i + 1}", layer)
            planes = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        """Last feature map ``(N, C_feat, H/s, W/s)`` for an input ``(N, C, H, W)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def head(self, feats: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` from a feature map ``(N, C_feat, h, w)``."""
        return self.fc(self.flatten(self.avgpool(feats)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    @property
    def target_layer(self) -> nn.Module:
        """The module whose output is :meth:`features` (CAM methods hook here)."""
        return self.layer4[-1]


def _check_args(num_classes: int, width: float, stem: str, in_channels: int) -> None:
    if stem not in STEMS:
        raise ValueError(f"model.stem={stem!r} is unknown; choose one of {list(STEMS)}")
    if not (isinstance(width, (int, float)) and width > 0 and width * 64 >= 1):
        raise ValueError(f"model.width={width!r} must be a number > 0 (at least 1/64)")
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2")
    if not (isinstance(in_channels, int) and in_channels >= 1):
        raise ValueError(f"in_channels={in_channels!r} must be an integer >= 1")


def resnet18(
    num_classes: int, *, width: float = 1.0, stem: str = "imagenet", in_channels: int = 3
) -> ResNet:
    """Build a ResNet18; see :class:`ResNet`. Returns logits, not probabilities."""
    return ResNet(num_classes, width=width, stem=stem, in_channels=in_channels)


def total_stride(stem: str) -> int:
    """Input-to-feature-map downsampling factor for a stem."""
    return {"imagenet": 32, "cifar": 8, "stride2": 16}[stem]


@torch.no_grad()
def feature_shape(model: ResNet, image_size: int) -> tuple[int, int, int]:
    """``(C, h, w)`` of :meth:`ResNet.features` for a square input of ``image_size``."""
    s = -(-image_size // total_stride(model.stem))
    return model.feature_channels, s, s
