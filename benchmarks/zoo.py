"""User-style model factories for the criteria study's starting points (``benchmarks.zoo:NAME`` model specs).

The study (issue #20) needs networks that differ the way users' models differ, small enough that seven of
them train and are pruned many times on two shared CPU cores at 32x32:

- ``plain_cnn``: two 3x3 convolutions with max pooling, no batch norm, a wide fully-connected layer
  3136 -> 128 -> 10 (the held-out model of issue #20; the second convolution is unpadded so that 32x32
  inputs give 64x7x7 = 3136 features, as 28x28 inputs with padding do).
- ``vgg11_plain``: VGG-11's layer pattern without batch norm, a quarter of its widths, a 1x1 feature map
  (32x32 after five poolings) and a small classifier.
- ``vgg11_bn_narrow``: the same with batch norm; stands in for torchvision's vgg11_bn, whose 25088 -> 4096
  classifier costs about 1,000 s an epoch here (the criteria see the same conv/BN pattern).
- ``densenet_small``: torchvision's DenseNet (concatenating blocks) with growth 12, blocks (2, 4, 4, 2) and
  24 initial features, so that a concatenation's consumers are measured without densenet121's cost.
"""

from __future__ import annotations

from torch import nn

VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class PlainCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(inplace=True),
                                        nn.Linear(128, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class NarrowVGG(nn.Module):
    def __init__(self, batch_norm: bool, width: float = 0.25, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG11:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = int(item * width)
            layers.append(nn.Conv2d(channels, out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels, 256), nn.ReLU(inplace=True),
                                        nn.Linear(256, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.classifier(self.features(x))


def plain_cnn(num_classes: int = 10) -> nn.Module:
    return PlainCNN(num_classes)


def vgg11_plain(width: float = 0.25) -> nn.Module:
    return NarrowVGG(batch_norm=False, width=width)


def vgg11_bn_narrow(width: float = 0.25) -> nn.Module:
    return NarrowVGG(batch_norm=True, width=width)


def densenet_small() -> nn.Module:
    from torchvision.models import DenseNet

    return DenseNet(growth_rate=12, block_config=(2, 4, 4, 2), num_init_features=24, bn_size=4, num_classes=10)
