"""Datasets for calibration, fine-tuning and evaluation.

``load_data`` turns a source string into train/val datasets whose items are
``(float32 C×H×W tensor, int label)``, already resized and normalised.

Small datasets (the embedded Fashion-MNIST subset, Fashion-MNIST, CIFAR-10) are
decoded once into tensors, which is far faster than per-item PIL transforms.
Image folders (ImageNet and the like) go through torchvision transforms.

Nothing here downloads anything: every source reads local files only. The sources live in ``in_memory``
(embedded, Fashion-MNIST, CIFAR-10) and ``image_folders`` (ImageNet layout); what they share in ``datasets``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from supportprune.errors import SupportpruneError
from supportprune.inputs.datasets import DataSplits, _Seedable
from supportprune.inputs.image_folders import _folder_native_channels, _load_folder
from supportprune.inputs.in_memory import _in_memory_splits, _load_cifar10, _load_embedded, _load_fashion_mnist

__all__ = ["DataSplits", "load_data", "make_loaders", "recipe_loaders"]

VALID_SOURCES = ("embedded", "fashion-mnist:DIR", "cifar10:DIR", "imagenet:DIR", "folder:DIR")


# ---------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------


def load_data(
    source: str,
    *,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool = False,
    channels: int | None = None,
    resize_to: int | None = None,
) -> DataSplits:
    """Load the train and val splits named by ``source`` (see VALID_SOURCES). Evaluation images are resized
    (shorter side) to ``resize_to`` and centre-cropped to ``input_size``; ``resize_to`` None: the source's
    custom (``resolve_resize``)."""
    if not isinstance(input_size, int) or input_size < 1:
        raise SupportpruneError(f"input_size must be a positive integer, got {input_size!r}")
    resize_to = resize_to if resize_to is not None else resolve_resize(source, input_size, None, None)
    if resize_to < input_size:
        raise SupportpruneError(f"resize_to {resize_to} is smaller than input_size {input_size}; set data.resize_to >= it")
    if channels is not None and channels not in (1, 3):
        raise SupportpruneError(f"channels must be 1 or 3 (or unset), got {channels!r}")
    scheme, directory = _parse_source(source)
    if scheme == "embedded":
        raw = _load_embedded()
    elif scheme == "fashion-mnist":
        raw = _load_fashion_mnist(directory)
    elif scheme == "cifar10":
        raw = _load_cifar10(directory)
    else:
        return _at_least_two_classes(_load_folder(directory, scheme, input_size, resize_to, mean, std, augment, channels),
                                     directory / "train")
    return _at_least_two_classes(_in_memory_splits(raw, input_size, resize_to, mean, std, augment, channels), source)


def _at_least_two_classes(splits: DataSplits, where) -> DataSplits:
    if splits.num_classes < 2:
        raise SupportpruneError(f"{where} holds {splits.num_classes} class ({', '.join(splits.class_names)}); a classifier "
                                "needs at least two: add a folder per class")
    return splits


def native_channels(source: str) -> int:
    """The channel count of ``source``'s images as stored: 1 for Fashion-MNIST and the embedded subset, 3 for
    CIFAR-10 and ImageNet, a folder's by its first image (3 when it has none yet: loading it says what is wrong)."""
    scheme, _, rest = source.partition(":")
    if scheme in ("embedded", "fashion-mnist"):
        return 1
    if scheme == "folder" and rest:
        train = Path(rest).expanduser() / "train"
        return _folder_native_channels(train) if train.is_dir() else 3
    return 3


IMAGENET_CROP_FRACTION = 0.875  # the usual ImageNet evaluation: resize to 256, centre-crop 224


def resolve_resize(source: str, input_size: int, resize_to: int | None, crop_fraction: float | None) -> int:
    """The side the shorter image side is resized to before the centre crop of ``input_size``: given, or
    ``input_size / crop_fraction``, where ``crop_fraction`` defaults to 0.875 for imagenet: and to 1 (no
    crop: images of the input size are used as they are) for every other source."""
    if resize_to is not None and crop_fraction is not None and resize_to != round(input_size / crop_fraction):
        raise SupportpruneError(
            f"data.resize_to {resize_to} and data.crop_fraction {crop_fraction} disagree for input_size {input_size} "
            f"(resize_to = input_size / crop_fraction = {round(input_size / crop_fraction)}); set only one of them")
    if resize_to is not None:
        return resize_to
    if crop_fraction is None:
        crop_fraction = IMAGENET_CROP_FRACTION if source.partition(":")[0] == "imagenet" else 1.0
    return round(input_size / crop_fraction)


class ExampleIndices(Dataset):
    """Items (image, label, index): the loop can look up what it stores per example (I-alternation's
    supports) whatever order the sampler draws them in."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.dataset[index]
        return image, label, index


def make_loaders(
    splits: DataSplits, *, batch_size: int, workers: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
    with_indices: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """Build (train, val) loaders; the same seed gives the same batches and augmentations.

    ``batch_size`` is the global batch. With ``world_size`` processes each rank loads its share of
    every global batch (see GlobalBatchSampler) and of the validation set. ``with_indices``: training
    batches are (images, labels, example indices).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise SupportpruneError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(workers, int) or workers < 0:
        raise SupportpruneError(f"workers must be a non-negative integer, got {workers!r}")
    if batch_size % world_size:
        raise SupportpruneError(
            f"data.batch_size {batch_size} is the global batch and must divide evenly over {world_size} processes"
        )
    for offset, dataset in enumerate((splits.train, splits.val)):
        _reseed_all(dataset, seed + offset)
    common = dict(num_workers=workers, pin_memory=torch.cuda.is_available())
    train_batches = GlobalBatchSampler(
        len(splits.train), batch_size, seed=seed, rank=rank, world_size=world_size,
        drop_last=len(splits.train) >= batch_size,
    )
    train_set = ExampleIndices(splits.train) if with_indices else splits.train
    train = DataLoader(train_set, batch_sampler=train_batches, **common)
    val_indices = list(range(rank, len(splits.val), world_size))
    val = DataLoader(splits.val, batch_size=max(1, batch_size // world_size), sampler=val_indices, **common)
    return train, val


class GlobalBatchSampler(torch.utils.data.Sampler):
    """The batches of one epoch, as a function of (seed, epoch) alone.

    One process takes global batch s = order[s·B : (s+1)·B]. With W processes, rank r takes the
    r-th contiguous B/W slice of it, so the ranks' batches together are exactly the batch a single
    process would take (what makes B-alternation's global masks comparable). ``set_epoch(e, k)``
    starts epoch e at its k-th batch, for runs resumed mid-epoch.
    """

    def __init__(self, length: int, global_batch: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        self.length, self.global_batch = length, global_batch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.local_batch = global_batch // world_size
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def steps_per_epoch(self) -> int:
        full = self.length // self.global_batch
        return full if self.drop_last or self.length % self.global_batch == 0 else full + 1

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch() - self.start_step)

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        for step in range(self.start_step, self.steps_per_epoch()):
            batch = order[step * self.global_batch:(step + 1) * self.global_batch]
            share = -(-len(batch) // self.world_size)  # a short last batch is split as evenly as possible
            yield batch[self.rank * share:(self.rank + 1) * share]


def reseed_epoch(loader: DataLoader, seed: int, epoch: int, start_step: int = 0) -> None:
    """Make one epoch's order and augmentations a function of (seed, epoch) alone; start at ``start_step``."""
    loader.batch_sampler.set_epoch(epoch, start_step)
    _reseed_all(loader.dataset, seed * 1_000_003 + epoch)


# ---------------------------------------------------------------------------
# Source parsing
# ---------------------------------------------------------------------------


def _parse_source(source: str) -> tuple[str, Path]:
    valid = ", ".join(VALID_SOURCES)
    if source == "embedded":
        return "embedded", Path()
    scheme, sep, rest = source.partition(":")
    if not sep or scheme not in ("fashion-mnist", "cifar10", "imagenet", "folder"):
        raise SupportpruneError(f"unknown data source {source!r}; use one of: {valid}")
    if not rest:
        raise SupportpruneError(f"data source {source!r} names no directory; write it as {scheme}:DIR")
    directory = Path(rest).expanduser()
    if not directory.is_dir():
        raise SupportpruneError(
            f"data directory {directory} does not exist or is not a directory; check the path in {source!r}"
        )
    return scheme, directory


def _reseed_all(dataset: Dataset, seed: int) -> None:
    """Reseed every _Seedable inside ``dataset``, looking through Subset/ConcatDataset wrappers."""
    if isinstance(dataset, _Seedable):
        dataset.reseed(seed)
    elif isinstance(dataset, (torch.utils.data.Subset, ExampleIndices)):
        _reseed_all(dataset.dataset, seed)
    elif isinstance(dataset, torch.utils.data.ConcatDataset):
        for offset, part in enumerate(dataset.datasets):
            _reseed_all(part, seed + offset)


def recipe_loaders(
    data: Any, seed: int, splits: DataSplits | None = None, *, augment: bool | None = None, rank: int = 0,
    world_size: int = 1, with_indices: bool = False,
) -> tuple[DataSplits, DataLoader, DataLoader]:
    """(splits, train loader, val loader) as a recipe's data section (``Recipe.data``) and seed say: the one place
    a recipe becomes loaders. ``splits``: already loaded (new loaders only); ``augment``: the section's unless given."""
    if splits is None:
        splits = load_data(data.source, input_size=data.input_size, mean=data.mean, std=data.std,
                           augment=data.augment if augment is None else augment, channels=data.channels,
                           resize_to=data.resize_to)
    train_loader, val_loader = make_loaders(splits, batch_size=data.batch_size, workers=data.workers, seed=seed,
                                            rank=rank, world_size=world_size, with_indices=with_indices)
    return splits, train_loader, val_loader
