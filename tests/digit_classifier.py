"""A user's own pretrained-style model, as third-party packages ship them: a factory that needs an argument,
a ``forward`` that checks the input shape (torch.fx cannot trace it) and calls ``F.relu``, a ReLU module
called twice, nested containers."""

import torch
import torch.nn.functional as F
from torch import nn


class DigitNet(nn.Module):
    def __init__(self, input_size: int, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.input_size = input_size
        self.features = nn.ModuleDict({
            "block1": nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width)),
            "block2": nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)),
        })
        self.act = nn.ReLU()  # called twice
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(width * (input_size // 2) ** 2, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"DigitNet expects {self.input_size}x{self.input_size} images, got {tuple(x.shape[-2:])}")
        x = F.relu(self.features["block1"](x))
        x = self.pool(self.act(self.features["block2"](x)))
        x = self.act(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def broken_factory(input_size: int):
    """A factory whose own code fails (a bug in the user's package)."""
    widths = {"small": 8}
    return DigitNet(input_size, width=widths["large"])
