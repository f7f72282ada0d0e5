"""Backbone, classifier and learned-explainer modules (see DESIGN §4)."""

from xaibench.models.classifier import ClassifierModule
from xaibench.models.deepfaith import AlphaSchedule, DeepFaithModule, PatchTransformer
from xaibench.models.lax import LAX, LAXHead, entropy_loss, lax_loss
from xaibench.models.lax_module import LAXModule
from xaibench.models.resnet import STEMS, ResNet, resnet18

__all__ = [
    "LAX",
    "STEMS",
    "AlphaSchedule",
    "ClassifierModule",
    "DeepFaithModule",
    "LAXHead",
    "LAXModule",
    "PatchTransformer",
    "ResNet",
    "entropy_loss",
    "lax_loss",
    "resnet18",
]
