"""Tests for supportprune.inputs.data: sources, conversions, errors and loaders."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from supportprune.inputs.datasets import DataSplits
from supportprune.inputs.in_memory import read_idx
from supportprune.inputs.data import load_data, make_loaders
from supportprune.errors import SupportpruneError

GRAY = dict(mean=[0.5], std=[0.25])
RGB = dict(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
IDENTITY = dict(mean=[0.0], std=[1.0])


# ---------------------------------------------------------------------------
# Helpers writing tiny datasets
# ---------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the idx format by hand."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_dir(root: Path, n_train: int = 20, n_test: int = 10, gz: bool = True) -> dict:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (root / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return arrays


def write_cifar_dir(root: Path, per_batch: int = 4) -> Path:
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": [i % 10 for i in range(per_batch)],
        }
        (batches / name).write_bytes(pickle.dumps(batch))
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer",
                                  "dog", "frog", "horse", "ship", "truck")]
    (batches / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return batches


def write_folder(root: Path, classes=("cat", "dog"), per_class: int = 2, splits=("train", "val")) -> None:
    from PIL import Image

    for split in splits:
        for index, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                colour = (200, 100, 50) if index == 0 else (10, 20, 250)
                Image.new("RGB", (40, 30), colour).save(root / split / cls / f"{i}.png")


# ---------------------------------------------------------------------------
# Embedded subset
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [28, 32])
def test_embedded_shapes(size: int) -> None:
    splits = load_data("embedded", input_size=size, **GRAY)
    assert isinstance(splits, DataSplits)
    assert (len(splits.train), len(splits.val)) == (5000, 1000)
    assert splits.num_classes == 10 and splits.channels == 1
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    assert "5000 train / 1000 val" in splits.description
    image, label = splits.train[0]
    assert image.shape == (1, size, size) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10


def test_embedded_is_balanced_and_normalised() -> None:
    splits = load_data("embedded", input_size=28, **IDENTITY)
    counts = torch.bincount(splits.train.labels, minlength=10)
    assert counts.tolist() == [500] * 10
    raw_mean = float(splits.train.images.mean())
    # Normalising with that very mean and a std gives mean ~0.
    centred = load_data("embedded", input_size=28, mean=[raw_mean], std=[0.3])
    assert abs(float(centred.train.images.mean())) < 1e-3
    assert 0.0 <= float(splits.train.images.min()) and float(splits.train.images.max()) <= 1.0


def test_embedded_augment_keeps_shape() -> None:
    splits = load_data("embedded", input_size=32, augment=True, channels=3, **RGB)
    image, _ = splits.train[3]
    assert image.shape == (3, 32, 32)
    assert splits.val.augment is False


# ---------------------------------------------------------------------------
# idx / Fashion-MNIST
# ---------------------------------------------------------------------------


def test_read_idx_hand_written(tmp_path: Path) -> None:
    # magic 0x00000803 (uint8, 3 dims), dims 2×2×3, then 12 bytes of pixels.
    data = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    path = tmp_path / "tiny-idx3-ubyte"
    path.write_bytes(data)
    expected = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    np.testing.assert_array_equal(read_idx(path), expected)
    gz = tmp_path / "tiny-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(data))
    np.testing.assert_array_equal(read_idx(gz), expected)


def test_read_idx_labels_1d(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 4, 3, 1, 4, 1]))
    np.testing.assert_array_equal(read_idx(path), np.array([3, 1, 4, 1], dtype=np.uint8))


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_dir(tmp_path: Path, gz: bool) -> None:
    arrays = write_fashion_dir(tmp_path, gz=gz)
    splits = load_data(f"fashion-mnist:{tmp_path}", input_size=28, **IDENTITY)
    assert (len(splits.train), len(splits.val)) == (20, 10)
    image, label = splits.train[5]
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"][5]).float() / 255
    torch.testing.assert_close(image[0], expected)
    assert label == 5


def test_fashion_mnist_torchvision_root(tmp_path: Path) -> None:
    write_fashion_dir(tmp_path / "FashionMNIST" / "raw")
    splits = load_data(f"fashion-mnist:{tmp_path}", input_size=32, **GRAY)
    assert splits.train[0][0].shape == (1, 32, 32)


def test_fashion_mnist_missing_file(tmp_path: Path) -> None:
    write_fashion_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SupportpruneError, match="t10k-labels-idx1-ubyte") as info:
        load_data(f"fashion-mnist:{tmp_path}", input_size=28, **GRAY)
    assert str(tmp_path) in str(info.value)


def test_idx_bad_magic(tmp_path: Path) -> None:
    write_fashion_dir(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34" + bad.read_bytes()[2:])
    with pytest.raises(SupportpruneError, match="magic") as info:
        load_data(f"fashion-mnist:{tmp_path}", input_size=28, **GRAY)
    assert str(bad) in str(info.value)


def test_idx_truncated(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(idx_bytes(np.zeros((2, 3, 3), np.uint8))[:-1])
    with pytest.raises(SupportpruneError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    write_fashion_dir(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(7, np.uint8))))
    with pytest.raises(SupportpruneError, match="mismatch") as info:
        load_data(f"fashion-mnist:{tmp_path}", input_size=28, **GRAY)
    assert str(labels) in str(info.value)


# ---------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------


def test_cifar10(tmp_path: Path) -> None:
    batches = write_cifar_dir(tmp_path)
    splits = load_data(f"cifar10:{tmp_path}", input_size=32, **IDENTITY)
    assert (len(splits.train), len(splits.val)) == (20, 4)
    assert splits.channels == 3 and splits.class_names[0] == "airplane"
    first = pickle.loads((batches / "data_batch_1").read_bytes())[b"data"][1]
    expected = torch.from_numpy(first.reshape(3, 32, 32)).float() / 255
    image, label = splits.train[1]
    torch.testing.assert_close(image, expected)
    assert label == 1
    # DIR may also be the batches directory itself.
    assert len(load_data(f"cifar10:{batches}", input_size=16, **RGB).train) == 20


def test_cifar10_missing_batch(tmp_path: Path) -> None:
    batches = write_cifar_dir(tmp_path)
    (batches / "data_batch_3").unlink()
    with pytest.raises(SupportpruneError, match="data_batch_3") as info:
        load_data(f"cifar10:{tmp_path}", input_size=32, **RGB)
    assert str(batches) in str(info.value)


def test_cifar10_corrupt_pickle(tmp_path: Path) -> None:
    batches = write_cifar_dir(tmp_path)
    (batches / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(SupportpruneError, match="corrupt") as info:
        load_data(f"cifar10:{tmp_path}", input_size=32, **RGB)
    assert str(batches / "test_batch") in str(info.value)


def test_cifar10_refuses_foreign_globals(tmp_path: Path) -> None:
    batches = write_cifar_dir(tmp_path)
    (batches / "test_batch").write_bytes(pickle.dumps({b"data": Path("x"), b"labels": []}))
    with pytest.raises(SupportpruneError, match="test_batch"):
        load_data(f"cifar10:{tmp_path}", input_size=32, **RGB)


# ---------------------------------------------------------------------------
# Channel conversion
# ---------------------------------------------------------------------------


def test_gray_to_rgb_repeats(tmp_path: Path) -> None:
    arrays = write_fashion_dir(tmp_path)
    splits = load_data(f"fashion-mnist:{tmp_path}", input_size=28, channels=3, **IDENTITY)
    image, _ = splits.train[2]
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"][2]).float() / 255
    assert image.shape == (3, 28, 28)
    for c in range(3):
        torch.testing.assert_close(image[c], expected)


def test_rgb_to_gray_luma(tmp_path: Path) -> None:
    batches = write_cifar_dir(tmp_path)
    splits = load_data(f"cifar10:{tmp_path}", input_size=32, channels=1, **IDENTITY)
    rgb = pickle.loads((batches / "data_batch_1").read_bytes())[b"data"][0].reshape(3, 32, 32) / 255.0
    expected = torch.from_numpy(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).float()
    image, _ = splits.train[0]
    assert image.shape == (1, 32, 32) and splits.channels == 1
    torch.testing.assert_close(image[0], expected, atol=1e-5, rtol=1e-5)


def test_bad_channels() -> None:
    with pytest.raises(SupportpruneError, match="channels"):
        load_data("embedded", input_size=28, channels=2, **GRAY)


@pytest.mark.parametrize("norm, word", [
    (dict(mean=[0.5, 0.5], std=[0.2]), "mean"),
    (dict(mean=[0.5], std=[0.2, 0.2]), "std"),
    (dict(mean=[0.5], std=[0.0]), "std"),
])
def test_bad_mean_std(norm: dict, word: str) -> None:
    with pytest.raises(SupportpruneError, match=word):
        load_data("embedded", input_size=28, **norm)


# ---------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["folder", "imagenet"])
def test_folder(tmp_path: Path, scheme: str) -> None:
    write_folder(tmp_path)
    splits = load_data(f"{scheme}:{tmp_path}", input_size=16, **RGB)
    assert (len(splits.train), len(splits.val)) == (4, 4)
    assert splits.class_names == ("cat", "dog") and splits.num_classes == 2
    image, label = splits.val[0]
    assert image.shape == (3, 16, 16) and label == 0
    # A solid image stays solid: (200/255 - 0.5) / 0.25 in the red channel.
    torch.testing.assert_close(image[0], torch.full((16, 16), (200 / 255 - 0.5) / 0.25))


def test_folder_gray_and_augment(tmp_path: Path) -> None:
    write_folder(tmp_path)
    splits = load_data(f"folder:{tmp_path}", input_size=16, channels=1, augment=True, **IDENTITY)
    image, _ = splits.val[0]
    luma = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255  # PIL's convert("L")
    torch.testing.assert_close(image, torch.full((1, 16, 16), luma), atol=2 / 255, rtol=0)
    assert splits.train[0][0].shape == (1, 16, 16)


def test_folder_missing_val(tmp_path: Path) -> None:
    write_folder(tmp_path, splits=("train",))
    with pytest.raises(SupportpruneError, match="does not exist") as info:
        load_data(f"folder:{tmp_path}", input_size=16, **RGB)
    assert str(tmp_path / "val") in str(info.value)


def test_folder_without_images(tmp_path: Path) -> None:
    write_folder(tmp_path)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(SupportpruneError, match="no usable images") as info:
        load_data(f"folder:{tmp_path}", input_size=16, **RGB)
    assert str(tmp_path / "train") in str(info.value)


def test_folder_class_mismatch(tmp_path: Path) -> None:
    write_folder(tmp_path)
    for f in (tmp_path / "val" / "dog").iterdir():
        f.rename(tmp_path / "val" / "cat" / ("d" + f.name))
    (tmp_path / "val" / "dog").rmdir()
    with pytest.raises(SupportpruneError, match="class folders differ") as info:
        load_data(f"folder:{tmp_path}", input_size=16, **RGB)
    assert str(tmp_path / "train") in str(info.value)


# ---------------------------------------------------------------------------
# Source grammar and loaders
# ---------------------------------------------------------------------------


def test_unknown_scheme_lists_valid() -> None:
    with pytest.raises(SupportpruneError, match="embedded.*fashion-mnist:DIR.*cifar10:DIR"):
        load_data("mnist:/tmp", input_size=28, **GRAY)


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for scheme in ("fashion-mnist", "cifar10", "imagenet", "folder"):
        with pytest.raises(SupportpruneError, match="does not exist") as info:
            load_data(f"{scheme}:{missing}", input_size=28, **GRAY)
        assert str(missing) in str(info.value)


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(SupportpruneError) as info:
        load_data(f"cifar10:{tmp_path}", input_size=32, **RGB)
    assert "\n" not in str(info.value)


def _epoch(loader) -> list[torch.Tensor]:
    return [torch.cat([x.flatten(), y.float()]) for x, y in loader]


def test_make_loaders_deterministic() -> None:
    splits = load_data("embedded", input_size=28, augment=True, **GRAY)
    small = DataSplits(
        train=torch.utils.data.Subset(splits.train, range(64)), val=splits.val,
        num_classes=10, channels=1, class_names=splits.class_names, description="small",
    )
    # Augmentation must repeat too, also through a Subset wrapper.
    for data in (small, splits):
        runs = []
        for _ in range(2):
            train, _ = make_loaders(data, batch_size=16, seed=7)
            runs.append(next(iter(train)))
        torch.testing.assert_close(runs[0][0], runs[1][0])
        assert torch.equal(runs[0][1], runs[1][1])
    train_a, val = make_loaders(splits, batch_size=16, seed=7)
    train_b, _ = make_loaders(splits, batch_size=16, seed=8)
    assert not torch.equal(next(iter(train_a))[1], next(iter(train_b))[1])
    assert train_a.batch_sampler.drop_last and not val.drop_last
    assert torch.equal(next(iter(val))[1], splits.val.labels[:16])


def test_make_loaders_small_train_keeps_last_batch(tmp_path: Path) -> None:
    write_fashion_dir(tmp_path, n_train=5)
    splits = load_data(f"fashion-mnist:{tmp_path}", input_size=28, **GRAY)
    train, _ = make_loaders(splits, batch_size=8)
    assert not train.drop_last and sum(len(y) for _, y in train) == 5


def test_make_loaders_bad_batch_size() -> None:
    splits = load_data("embedded", input_size=28, **GRAY)
    with pytest.raises(SupportpruneError, match="batch_size"):
        make_loaders(splits, batch_size=0)


def test_make_loaders_deterministic_with_workers(tmp_path: Path) -> None:
    write_fashion_dir(tmp_path, n_train=40)
    splits = load_data(f"fashion-mnist:{tmp_path}", input_size=32, augment=True, **GRAY)
    runs = []
    for _ in range(2):
        train, _ = make_loaders(splits, batch_size=8, workers=2, seed=3)
        runs.append(torch.cat([x for x, _ in train]))
    assert torch.equal(runs[0], runs[1])


def test_lazy_resize_matches_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import supportprune.inputs.in_memory as data

    write_fashion_dir(tmp_path)
    eager = load_data(f"fashion-mnist:{tmp_path}", input_size=40, **GRAY)
    monkeypatch.setattr(data, "EAGER_RESIZE_BUDGET", 0)  # force per-item resizing
    lazy = load_data(f"fashion-mnist:{tmp_path}", input_size=40, **GRAY)
    assert lazy.train.images is None
    torch.testing.assert_close(lazy.train[3][0], eager.train[3][0])


def test_global_batches_split_over_ranks_and_resume_mid_epoch():
    from supportprune.inputs.data import GlobalBatchSampler

    single = GlobalBatchSampler(50, 8, seed=4)
    ranks = [GlobalBatchSampler(50, 8, seed=4, rank=r, world_size=2) for r in range(2)]
    for sampler in [single, *ranks]:
        sampler.set_epoch(3)
    assert len(single) == 6 and all(len(batch) == 8 for batch in single)
    for global_batch, *shares in zip(single, *ranks):
        assert [i for share in shares for i in share] == global_batch  # rank slices concatenate to the batch
    resumed = GlobalBatchSampler(50, 8, seed=4)
    resumed.set_epoch(3, start_step=4)
    assert list(resumed) == list(single)[4:]
    other_epoch = GlobalBatchSampler(50, 8, seed=4)
    other_epoch.set_epoch(4)
    assert list(other_epoch) != list(single)


def test_augmentation_of_an_item_does_not_depend_on_loading_order():
    splits = load_data("embedded", input_size=16, mean=[0.286], std=[0.353], augment=True)
    splits.train.reseed(11)
    forward = [splits.train[i][0] for i in (3, 7, 9)]
    backward = [splits.train[i][0] for i in (9, 7, 3)][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    splits.train.reseed(12)
    assert not all(torch.equal(a, splits.train[i][0]) for a, i in zip(forward, (3, 7, 9)))
