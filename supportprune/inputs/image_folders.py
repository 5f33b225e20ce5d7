"""Image folders (the ImageNet layout: train/ and val/ with one folder per class), read through torchvision
transforms."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from supportprune.errors import SupportpruneError
from supportprune.inputs.datasets import (
    DataSplits, _check_norm, _resolve_channels, _Seedable, normalisation_description, preprocessing_description,
)


# ---------------------------------------------------------------------------
# Image folders (ImageNet layout)
# ---------------------------------------------------------------------------


class DataFileError(SupportpruneError):
    """An image file of the user's data that cannot be read. Raised in a DataLoader worker, it comes back as
    ``DataFileError("Caught DataFileError in DataLoader worker process N. Original Traceback ...")``: the message
    is then taken from the traceback's last line, so the user still reads one line naming the file."""

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            message = message.strip().splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


def _open_image(path: str, mode: str):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except Exception as error:  # PIL raises several types for damaged files; any of them is the file's
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataFileError(f"image {path} cannot be read ({type(error).__name__}: {detail[:200]}): the data is at "
                            "fault, not supportprune; replace or remove the file and run the same command again") from None


class _FolderImages(_Seedable, Dataset):
    """An ImageFolder whose random transforms draw from this dataset's generator."""

    def __init__(self, folder, transform: Callable, augment: bool) -> None:
        super().__init__(augment)
        self.folder = folder
        self.transform = transform

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.folder[index]
        if not self.augment:
            return self.transform(image), int(label)
        # torchvision transforms use the global RNG; run them under a forked
        # RNG seeded from our generator so results depend only on our seed.
        seed = int(torch.randint(0, 2**62, (1,), generator=self._item_generator(index)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), int(label)


def _image_folder(root: Path, mode: str):
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise SupportpruneError(
            f"image folder {root} does not exist; the data directory needs train/<class>/ and val/<class>/ subfolders"
        )
    try:
        return ImageFolder(str(root), loader=functools.partial(_open_image, mode=mode))
    except FileNotFoundError as error:
        raise SupportpruneError(
            f"image folder {root} has no usable images ({str(error).splitlines()[0]}); "
            f"put images in {root}/<class>/"
        ) from None


def _folder_transforms(input_size: int, resize_to: int, mean: list[float], std: list[float], augment: bool) -> tuple[Callable, Callable]:
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize(mean, std)]
    evaluate = T.Compose([T.Resize(resize_to), T.CenterCrop(input_size), *tail])
    if not augment:
        return evaluate, evaluate
    train = T.Compose([T.RandomResizedCrop(input_size), T.RandomHorizontalFlip(), *tail])
    return train, evaluate


def _load_folder(
    directory: Path, scheme: str, input_size: int, resize_to: int, mean: Sequence[float], std: Sequence[float],
    augment: bool, channels: int | None,
) -> DataSplits:
    out_channels = _resolve_channels(_folder_native_channels(directory / "train"), channels)
    mean_c, std_c = _check_norm(mean, std, out_channels)
    mode = "RGB" if out_channels == 3 else "L"
    train_folder = _image_folder(directory / "train", mode)
    val_folder = _image_folder(directory / "val", mode)
    if train_folder.classes != val_folder.classes:
        only_train = sorted(set(train_folder.classes) - set(val_folder.classes))
        only_val = sorted(set(val_folder.classes) - set(train_folder.classes))
        raise SupportpruneError(
            f"class folders differ between {directory / 'train'} and {directory / 'val'} "
            f"(only in train: {only_train[:5]}, only in val: {only_val[:5]}); make both hold the same classes"
        )
    train_tf, val_tf = _folder_transforms(input_size, resize_to, mean_c, std_c, augment)
    train = _FolderImages(train_folder, train_tf, augment)
    val = _FolderImages(val_folder, val_tf, False)
    kind = "ImageNet" if scheme == "imagenet" else "image folder"
    num_classes = len(train_folder.classes)
    return DataSplits(
        train=train, val=val, num_classes=num_classes, channels=out_channels,
        class_names=tuple(train_folder.classes),
        description=(f"{kind} {directory} ({len(train)} train / {len(val)} val, {num_classes} classes; "
                     f"{preprocessing_description(input_size, resize_to, augment)}; {normalisation_description(mean_c, std_c)})"),
    )


def _folder_native_channels(train_dir: Path) -> int:
    """1 when the folder's images are grayscale (judged by the first image found), else 3."""
    from PIL import Image

    for path in sorted(p for p in train_dir.rglob("*") if p.is_file()):
        try:
            with Image.open(path) as image:
                return 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
        except OSError:
            continue
    return 3
