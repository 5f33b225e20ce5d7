"""Datasets for calibration, fine-tuning and evaluation.

``load_data`` turns a source string into train/val datasets whose items are
``(float32 C×H×W tensor, int label)``, already resized and normalised.

Small datasets (the embedded Fashion-MNIST subset, Fashion-MNIST, CIFAR-10) are
decoded once into tensors, which is far faster than per-item PIL transforms.
Image folders (ImageNet and the like) go through torchvision transforms.

Nothing here downloads anything: every source reads local files only.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from supportprune.errors import SupportpruneError

__all__ = ["DataSplits", "load_data", "make_loaders", "read_idx", "FASHION_MNIST_CLASSES"]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
VALID_SOURCES = ("embedded", "fashion-mnist:DIR", "cifar10:DIR", "imagenet:DIR", "folder:DIR")
EMBEDDED_FILE = "fashion_mnist_subset.npz"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
# ITU-R BT.601 luma weights, the same ones PIL uses for convert("L").
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Above this many bytes of float32 pixels, in-memory datasets resize per item
# instead of all at once (e.g. CIFAR-10 at 224×224 would need ~36 GB).
EAGER_RESIZE_BUDGET = 1 << 30
_PREPARE_CHUNK = 1024


@dataclass(frozen=True)
class DataSplits:
    train: Dataset
    val: Dataset
    num_classes: int
    channels: int
    class_names: tuple[str, ...]
    description: str


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


def normalisation_description(mean: Sequence[float], std: Sequence[float]) -> str:
    return f"normalised with mean {', '.join(f'{m:g}' for m in mean)} and std {', '.join(f'{s:g}' for s in std)}"


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


def preprocessing_description(input_size: int, resize_to: int, augment: bool) -> str:
    """How evaluation images are prepared, in words for the report."""
    if resize_to == input_size:
        text = f"resized to {input_size}×{input_size}, no crop"
    else:
        text = (f"shorter side resized to {resize_to}, centre-cropped to {input_size}×{input_size} "
                f"(crop fraction {input_size / resize_to:.3f})")
    return text + ("; training images augmented (random crop and flip)" if augment else "")


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


# ---------------------------------------------------------------------------
# In-memory tensor datasets
# ---------------------------------------------------------------------------


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


def _reseed_all(dataset: Dataset, seed: int) -> None:
    """Reseed every _Seedable inside ``dataset``, looking through Subset/ConcatDataset wrappers."""
    if isinstance(dataset, _Seedable):
        dataset.reseed(seed)
    elif isinstance(dataset, (torch.utils.data.Subset, ExampleIndices)):
        _reseed_all(dataset.dataset, seed)
    elif isinstance(dataset, torch.utils.data.ConcatDataset):
        for offset, part in enumerate(dataset.datasets):
            _reseed_all(part, seed + offset)


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


# ---------------------------------------------------------------------------
# Image folders (ImageNet layout)
# ---------------------------------------------------------------------------


def _open_image(path: str, mode: str):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert(mode)


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
