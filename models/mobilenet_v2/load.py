"""MobileNetV2 architecture from torchvision, random weights (no download)."""

import torchvision


def build_model(config):
    return torchvision.models.mobilenet_v2(weights=None)
