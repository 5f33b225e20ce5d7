#!/usr/bin/env python3
"""A transfer-learning case without internet: a torchvision model trained here on some classes, and an image folder
of other classes, as a user brings them to ``supportprune compress --weights FILE --data folder:DIR``.

No ImageNet-pretrained weights are cached on the machines this was measured on, so the "pretrained" model is
torchvision's resnet18 trained from scratch on Fashion-MNIST's first five classes (T-shirt/top, Trouser, Pullover,
Dress, Coat; grayscale, 32×32, a 5-class head), and the user's folder holds four others (Sandal, Shirt, Sneaker,
Bag) as PNG files, 28×28: the head does not fit the folder's classes, and the features come from other clothes.

    python tools/make_transfer_case.py --out transfer-case      # ~10 minutes on 2 CPU cores
    supportprune compress resnet18 --weights transfer-case/resnet18-fmnist-0-4.pt \\
        --data folder:transfer-case/folder --input-size 32 --mean 0.286 --std 0.353 --out runs/transfer

Writes OUT/resnet18-fmnist-0-4.pt (a state dict: 5 classes, 1 input channel) and OUT/folder/{train,val}/<class>/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supportprune.inputs.in_memory import FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, read_idx  # noqa: E402
from supportprune.inputs.data import _find_idx_file  # noqa: E402
from supportprune.inputs.models import ModelSpec, build_model  # noqa: E402

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8)
MEAN, STD = 0.286, 0.353


def _images(raw: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(raw).float().div(255).unsqueeze(1)
    return (F.interpolate(x, size=32, mode="bilinear", align_corners=False, antialias=True) - MEAN) / STD


def pretrain(source: Path, out: Path, per_class: int, epochs: int, seed: int) -> float:
    images, labels = read_idx(_find_idx_file(source, FASHION_MNIST_FILES["train_images"])), read_idx(_find_idx_file(source, FASHION_MNIST_FILES["train_labels"]))
    test_images, test_labels = read_idx(_find_idx_file(source, FASHION_MNIST_FILES["test_images"])), read_idx(_find_idx_file(source, FASHION_MNIST_FILES["test_labels"]))
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in SOURCE_CLASSES])
    x, y = _images(images[chosen]), torch.from_numpy(labels[chosen].astype(np.int64))
    test = np.isin(test_labels, SOURCE_CLASSES)
    tx, ty = _images(test_images[test]), torch.from_numpy(test_labels[test].astype(np.int64))
    torch.manual_seed(seed)
    model = build_model(ModelSpec("resnet18", len(SOURCE_CLASSES), 1, 32))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = epochs * (len(x) // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for step in range(len(x) // 128):
            batch = order[step * 128:(step + 1) * 128]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"pretrain epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}", flush=True)
    model.eval()
    with torch.no_grad():
        top1 = float((model(tx).argmax(1) == ty).float().mean()) * 100
    torch.save(model.state_dict(), out / "resnet18-fmnist-0-4.pt")
    print(f"pretrained resnet18 on classes {SOURCE_CLASSES}: test top-1 {top1:.2f}% ({len(ty)} images)", flush=True)
    return top1


def write_folder(source: Path, out: Path, train_per_class: int, val_per_class: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed + 1)
    for split, stem, count in (("train", "train", train_per_class), ("val", "test", val_per_class)):
        images = read_idx(_find_idx_file(source, FASHION_MNIST_FILES[f"{stem}_images"]))
        labels = read_idx(_find_idx_file(source, FASHION_MNIST_FILES[f"{stem}_labels"]))
        for c in TARGET_CLASSES:
            folder = out / "folder" / split / FASHION_MNIST_CLASSES[c].replace("/", "-").replace(" ", "-").lower()
            folder.mkdir(parents=True, exist_ok=True)
            for k, index in enumerate(rng.choice(np.flatnonzero(labels == c), count, replace=False)):
                Image.fromarray(images[index], mode="L").save(folder / f"{k:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=Path("transfer-case"))
    parser.add_argument("--pretrain-per-class", type=int, default=2000)
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write_folder(args.source, args.out, args.train_per_class, args.val_per_class, args.seed)
    pretrain(args.source, args.out, args.pretrain_per_class, args.pretrain_epochs, args.seed)


if __name__ == "__main__":
    main()
