"""What the data sources share: the splits they return, per-item seeded augmentation, and the checks and
conversions of channels and normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from supportprune.errors import SupportpruneError

# ITU-R BT.601 luma weights, the same ones PIL uses for convert("L").
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class DataSplits:
    train: Dataset
    val: Dataset
    num_classes: int
    channels: int
    class_names: tuple[str, ...]
    description: str


def _check_norm(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[list[float], list[float]]:
    """Broadcast mean/std to ``channels`` entries, rejecting bad lengths and std <= 0."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise SupportpruneError(
                f"{name} has {len(values)} values but the data has {channels} channel(s); give 1 or {channels}"
            )
    if any(not np.isfinite(s) or s <= 0 for s in std) or any(not np.isfinite(m) for m in mean):
        raise SupportpruneError(f"std must be positive and mean/std finite, got mean={mean} std={std}")
    return mean * (channels // len(mean)), std * (channels // len(std))


def _resolve_channels(native: int, requested: int | None) -> int:
    if requested is None or requested == native:
        return native
    if (native, requested) in ((1, 3), (3, 1)):
        return requested
    raise SupportpruneError(f"cannot convert {native}-channel data to {requested} channels; use 1 or 3")


def _convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert float N×C×H×W images between 1 and 3 channels."""
    if images.shape[1] == channels:
        return images
    if channels == 3:  # gray to RGB: the same intensity in every channel
        return images.expand(-1, 3, -1, -1)
    weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


class _Seedable:
    """A dataset whose augmentation of item i draws from a generator seeded by (seed, i).

    Per-item seeding makes an item's augmentation independent of the order items are loaded in,
    of which worker loads it, and of where in the epoch a resumed run starts.
    """

    def __init__(self, augment: bool) -> None:
        self.augment = augment
        self._seed = 0

    def reseed(self, seed: int) -> None:
        self._seed = int(seed)

    def _item_generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed((self._seed * 1_000_003 + int(index)) % 2**63)


def preprocessing_description(input_size: int, resize_to: int, augment: bool) -> str:
    """How evaluation images are prepared, in words for the report."""
    if resize_to == input_size:
        text = f"resized to {input_size}×{input_size}, no crop"
    else:
        text = (f"shorter side resized to {resize_to}, centre-cropped to {input_size}×{input_size} "
                f"(crop fraction {input_size / resize_to:.3f})")
    return text + ("; training images augmented (random crop and flip)" if augment else "")


def normalisation_description(mean: Sequence[float], std: Sequence[float]) -> str:
    return f"normalised with mean {', '.join(f'{m:g}' for m in mean)} and std {', '.join(f'{s:g}' for s in std)}"
