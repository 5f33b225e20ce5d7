"""Models as users write them, which torch.fx cannot trace or which stretch the conversion: a shape
check in forward, every functional ReLU spelling, a ReLU module called three times, nested containers,
ReLU6 (MobileNetV2's pattern) and a model without any ReLU."""

import torch
import torch.nn.functional as F
from torch import nn


class ShapeChecked(nn.Module):
    """A data-dependent check in forward (fx: TraceError); three ReLU module call sites."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(5 * 4 * 4, 7)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x):
        if x.shape[-2:] != (8, 8):
            raise ValueError(f"expected 8x8 images, got {tuple(x.shape[-2:])}")
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 4), 1)
        return self.fc2(self.relu3(self.fc1(x)))


class FunctionalBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Functional(nn.Module):
    """Six functional call sites, one per spelling, two of them in-place used as bare statements, behind
    a shape check; FunctionalBlock makes one more in its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.block = FunctionalBlock(1, 4)  # F.relu                                   (site 1)
        self.conv1 = nn.Conv2d(4, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 1)
        self.conv4 = nn.Conv2d(6, 5, 1)
        self.conv5 = nn.Conv2d(5, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError("expected (N, 1, H, W) images")
        x = self.block(x)
        x = torch.relu(self.conv1(x))                 # site 2
        x = self.conv2(x).relu()                      # site 3
        x = F.relu(self.conv3(x), inplace=True)       # site 4 (in-place, value used)
        y = self.conv4(x)
        y.relu_()                                     # site 5 (in-place, bare statement)
        z = self.conv5(y)
        torch.relu_(z)                                # site 6 (in-place, bare statement)
        return self.fc(z.mean(dim=(2, 3)))


class Reused(nn.Module):
    """One ReLU module called three times, with three channel counts; a shape check defeats fx."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 5, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        if x.shape[-1] < 4:
            raise ValueError("image too small")
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.act(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


class Nested(nn.Module):
    """Sequentials inside a ModuleDict inside a ModuleList, a ReLU module shared by two Sequentials,
    and a data-dependent loop over the dict's keys."""

    def __init__(self) -> None:
        super().__init__()
        shared = nn.ReLU()
        self.stages = nn.ModuleList([
            nn.ModuleDict({
                "a": nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
                "b": nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), shared),
            }),
            nn.ModuleDict({"a": nn.Sequential(nn.Conv2d(6, 6, 1), shared)}),
        ])
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        if x.shape[0] == 0:
            raise ValueError("empty batch")
        for stage in self.stages:
            for key in sorted(stage.keys()):
                x = stage[key](x)
        return self.fc(x.mean(dim=(2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1 → ReLU6 → depthwise 3x3 → ReLU6 → project 1x1, residual add."""

    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        hidden = channels * expand
        self.conv = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return x + self.conv(x)


class MobileNetStyle(nn.Module):
    """ReLU6 modules and one functional F.relu6, behind a shape check."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True))
        self.block = InvertedResidual(8, 2)
        self.head = nn.Conv2d(8, 12, 1)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        if x.shape[-2:] != (8, 8):
            raise ValueError("expected 8x8 images")
        x = F.relu6(self.head(self.block(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


class GeluNet(nn.Module):
    """No ReLU anywhere: GELU and SiLU modules and a functional GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.act2 = nn.SiLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.act2(self.conv2(self.act(self.conv(x))))
        return self.fc(F.gelu(x).mean(dim=(2, 3)))


class DataDependentBatch(nn.Module):
    """ReLU calls that depend on the batch size: one more F.relu for batches of 5, one more call of the
    (twice-called) ReLU module for batches of 7."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.act(self.conv2(self.act(self.conv1(x))))
        x = F.relu(x - 0.1)
        if x.shape[0] == 5:
            x = F.relu(x - 0.2)
        if x.shape[0] == 7:
            x = self.act(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


class SiluNet(nn.Module):
    """No ReLU at all, as EfficientNet-style users write it: SiLU modules, a functional F.silu, a residual block and
    a squeeze-excitation gated by a sigmoid."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.head = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        y = F.silu(self.bn(self.conv(x)))
        scale = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(y.mean(dim=(2, 3), keepdim=True)))))
        x = x + y * scale
        x = F.silu(self.head(x))
        return self.fc(x.mean(dim=(2, 3)))
