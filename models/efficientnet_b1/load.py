"""EfficientNet-B1 architecture from torchvision, random weights (no download)."""

import torchvision


def build_model(config):
    return torchvision.models.efficientnet_b1(weights=None)
