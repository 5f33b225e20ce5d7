"""The small sources, decoded once into tensors (far faster than per-item PIL transforms): the embedded
Fashion-MNIST subset, Fashion-MNIST's IDX files and CIFAR-10's python pickles, read as uint8 arrays
(``_RawArrays``) and kept as normalised tensors (``_TensorImages``)."""

from __future__ import annotations

import gzip
import importlib.resources
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from supportprune.errors import SupportpruneError
from supportprune.inputs.datasets import (
    DataSplits,
    _check_norm,
    _convert_channels,
    _resolve_channels,
    _Seedable,
    normalisation_description,
    preprocessing_description,
)

__all__ = ["read_idx", "FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES"]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
EMBEDDED_FILE = "fashion_mnist_subset.npz"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
# Above this many bytes of float32 pixels, in-memory datasets resize per item
# instead of all at once (e.g. CIFAR-10 at 224×224 would need ~36 GB).
EAGER_RESIZE_BUDGET = 1 << 30
_PREPARE_CHUNK = 1024


# ---------------------------------------------------------------------------
# Raw in-memory datasets: uint8 arrays plus labels
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _RawArrays:
    train_images: np.ndarray  # uint8, (N, H, W) or (N, C, H, W)
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    class_names: tuple[str, ...]
    name: str


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (the MNIST format), gzipped or not, into a numpy array."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SupportpruneError(f"cannot read idx file {path}: {error.strerror}; check the file exists") from None
    if data[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not file name
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise SupportpruneError(f"idx file {path} is a corrupt gzip ({error}); re-extract or re-download it") from None
    return _parse_idx_bytes(data, path)


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _parse_idx_bytes(data: bytes, path: Path) -> np.ndarray:
    # Header: two zero bytes, a type code, the number of dimensions, then one
    # big-endian uint32 per dimension.
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise SupportpruneError(
            f"idx file {path} has a bad magic number {data[:4].hex() or '(empty)'}; it is not an idx file"
        )
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SupportpruneError(f"idx file {path} is truncated inside its header; re-extract it")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise SupportpruneError(
            f"idx file {path} holds {len(data) - header} data bytes but its header {shape} needs {expected}; "
            "the file is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _load_embedded() -> _RawArrays:
    resource = importlib.resources.files("supportprune") / "assets" / EMBEDDED_FILE
    try:
        with importlib.resources.as_file(resource) as path, np.load(path) as npz:
            arrays = {key: npz[key] for key in ("train_images", "train_labels", "test_images", "test_labels")}
    except FileNotFoundError:
        raise SupportpruneError(
            f"embedded data file {resource} is missing; reinstall supportprune or run tools/make_embedded_data.py"
        ) from None
    except KeyError as error:
        raise SupportpruneError(
            f"embedded data file {resource} lacks array {error}; rebuild it with tools/make_embedded_data.py"
        ) from None
    return _RawArrays(
        arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"],
        FASHION_MNIST_CLASSES, "embedded Fashion-MNIST subset",
    )


def _find_idx_file(directory: Path, stem: str) -> Path:
    # Accept the files directly in DIR or in a torchvision root's FashionMNIST/raw/.
    places = (directory, directory / "FashionMNIST" / "raw")
    for place in places:
        for name in (stem, stem + ".gz"):
            if (place / name).is_file():
                return place / name
    raise SupportpruneError(
        f"Fashion-MNIST file {stem}[.gz] not found in {places[0]} or {places[1]}; "
        "put the four idx files there"
    )


def _load_fashion_mnist(directory: Path) -> _RawArrays:
    paths = {key: _find_idx_file(directory, stem) for key, stem in FASHION_MNIST_FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise SupportpruneError(
                f"idx file {paths[f'{split}_images']} must be 3-D images and {paths[f'{split}_labels']} 1-D labels, "
                f"got shapes {images.shape} and {labels.shape}"
            )
        if len(images) != len(labels):
            raise SupportpruneError(
                f"image/label count mismatch: {paths[f'{split}_images']} has {len(images)} images but "
                f"{paths[f'{split}_labels']} has {len(labels)} labels; use files from the same release"
            )
    return _RawArrays(
        arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"],
        FASHION_MNIST_CLASSES, f"Fashion-MNIST from {directory}",
    )


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays: a CIFAR batch needs nothing
    else, and refusing other globals keeps a hostile pickle from running code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        # Old pickles name numpy.core, which numpy 2 renamed to numpy._core.
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path) -> dict:
    if not path.is_file():
        raise SupportpruneError(
            f"CIFAR-10 file {path.name} not found in {path.parent}; extract cifar-10-python.tar.gz there"
        )
    try:
        obj = _CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as error:  # pickle raises many types on garbage input
        raise SupportpruneError(
            f"CIFAR-10 file {path} is corrupt or not a CIFAR pickle ({type(error).__name__}); re-extract it"
        ) from None
    if not isinstance(obj, dict):
        raise SupportpruneError(f"CIFAR-10 file {path} does not hold a dict; re-extract it")
    return obj


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_cifar_pickle(path)
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, ValueError, TypeError) as error:
        raise SupportpruneError(
            f"CIFAR-10 file {path} lacks valid 'data'/'labels' entries ({error}); re-extract it"
        ) from None
    if len(data) != len(labels):
        raise SupportpruneError(f"CIFAR-10 file {path} has {len(data)} images but {len(labels)} labels; re-extract it")
    return data, labels


def _cifar_class_names(root: Path) -> tuple[str, ...]:
    meta_path = root / "batches.meta"
    if not meta_path.is_file():
        return CIFAR10_CLASSES  # the names are fixed; the meta file only repeats them
    names = _read_cifar_pickle(meta_path).get(b"label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise SupportpruneError(f"CIFAR-10 file {meta_path} lacks a 10-entry 'label_names' list; re-extract it")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _load_cifar10(directory: Path) -> _RawArrays:
    root = directory / "cifar-10-batches-py"
    if not root.is_dir():
        root = directory
    train = [_cifar_batch(root / name) for name in CIFAR10_TRAIN_FILES]
    val_images, val_labels = _cifar_batch(root / CIFAR10_TEST_FILE)
    return _RawArrays(
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        val_images, val_labels, _cifar_class_names(root), f"CIFAR-10 from {directory}",
    )


class _TensorImages(_Seedable, Dataset):
    """Normalised images kept as one tensor (or resized per item when too big)."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, *, input_size: int,
        mean: list[float], std: list[float], channels: int, augment: bool, resize_to: int | None = None,
    ) -> None:
        super().__init__(augment)
        if images.ndim == 3:
            images = images[:, None]
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.input_size = input_size
        self.resize_to = resize_to or input_size
        self.channels = channels
        self._mean = torch.tensor(mean).view(1, -1, 1, 1)
        self._std = torch.tensor(std).view(1, -1, 1, 1)
        # Padding for random crops is black (pixel value 0), as when padding
        # happens before Normalize in the usual torchvision pipeline.
        self._fill = (-self._mean / self._std).view(-1, 1, 1)
        self._pad = max(1, round(4 * input_size / 32))
        source = torch.from_numpy(np.ascontiguousarray(images))
        eager_bytes = len(source) * channels * input_size * input_size * 4
        if eager_bytes <= EAGER_RESIZE_BUDGET:
            chunks = [self._prepare(source[i:i + _PREPARE_CHUNK]) for i in range(0, len(source), _PREPARE_CHUNK)]
            self.images: torch.Tensor | None = torch.cat(chunks) if chunks else source.float()
            self._source: torch.Tensor | None = None
        else:
            self.images, self._source = None, source

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 N×C×H×W → float, channel-converted, resized, normalised."""
        x = _convert_channels(batch.float().div_(255.0), self.channels)
        height, width = x.shape[-2:]
        scale = self.resize_to / min(height, width)  # the shorter side to resize_to, as torchvision's Resize(int)
        size = (max(self.resize_to, round(height * scale)), max(self.resize_to, round(width * scale)))
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if size != (self.input_size, self.input_size):
            top, left = (size[0] - self.input_size) // 2, (size[1] - self.input_size) // 2
            x = x[..., top:top + self.input_size, left:left + self.input_size]
        return ((x - self._mean) / self._std).contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.images is not None:
            image = self.images[index]
        else:
            image = self._prepare(self._source[index:index + 1])[0]
        if self.augment:
            image = self._random_crop_flip(image, self._item_generator(index))
        return image, int(self.labels[index])

    def _random_crop_flip(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        pad, size = self._pad, self.input_size
        canvas = self._fill.expand(image.shape[0], size + 2 * pad, size + 2 * pad).clone()
        canvas[:, pad:pad + size, pad:pad + size] = image
        top, left = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
        crop = canvas[:, top:top + size, left:left + size]
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        return crop.contiguous()


def _check_labels(labels: np.ndarray, num_classes: int, name: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise SupportpruneError(
            f"{name} has labels outside 0..{num_classes - 1} (min {labels.min()}, max {labels.max()}); "
            "the data files are corrupt or mismatched"
        )


def _in_memory_splits(
    raw: _RawArrays, input_size: int, resize_to: int, mean: Sequence[float], std: Sequence[float],
    augment: bool, channels: int | None,
) -> DataSplits:
    native = 1 if raw.train_images.ndim == 3 else raw.train_images.shape[1]
    out_channels = _resolve_channels(native, channels)
    mean_c, std_c = _check_norm(mean, std, out_channels)
    num_classes = len(raw.class_names)
    _check_labels(raw.train_labels, num_classes, f"{raw.name} train split")
    _check_labels(raw.val_labels, num_classes, f"{raw.name} val split")
    common = dict(input_size=input_size, resize_to=resize_to, mean=mean_c, std=std_c, channels=out_channels)
    train = _TensorImages(raw.train_images, raw.train_labels, augment=augment, **common)
    val = _TensorImages(raw.val_images, raw.val_labels, augment=False, **common)
    return DataSplits(
        train=train, val=val, num_classes=num_classes, channels=out_channels,
        class_names=raw.class_names,
        description=(f"{raw.name} ({len(train)} train / {len(val)} val; {preprocessing_description(input_size, resize_to, augment)}; "
                     f"{normalisation_description(mean_c, std_c)})"),
    )
