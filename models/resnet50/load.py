"""ResNet-50 architecture from torchvision, random weights (no download)."""

import torchvision


def build_model(config):
    return torchvision.models.resnet50(weights=None)
