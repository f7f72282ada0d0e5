"""Backbone, classifier and learned-explainer modules (see DESIGN §4)."""

from xaibench.models.classifier import ClassifierModule
from xaibench.models.resnet import STEMS, ResNet, resnet18

__all__ = ["STEMS", "ClassifierModule", "ResNet", "resnet18"]
