#!/usr/bin/env python3
"""Build supportprune/assets/fashion_mnist_subset.npz from the full Fashion-MNIST.

A class-balanced subset chosen with a fixed seed: 500 images per class from the
train files and 100 per class from the t10k files. Also writes the licence
notice with the subset's provenance next to it.

Usage: python tools/make_embedded_data.py [--source DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from supportprune.inputs.in_memory import FASHION_MNIST_FILES, read_idx  # noqa: E402

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = REPO / "supportprune" / "assets"
SEED = 0
TRAIN_PER_CLASS = 500
TEST_PER_CLASS = 100
NUM_CLASSES = 10

MIT_LICENSE = """\
The MIT License (MIT)

Copyright (c) 2017 Zalando SE

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def find_file(source: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (source / name).is_file():
            return source / name
    sys.exit(f"error: {stem}[.gz] not found in {source}; install dataset-fashion-mnist or pass --source")


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` random indices of every class, returned in file order."""
    chosen = []
    for cls in range(NUM_CLASSES):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            sys.exit(f"error: class {cls} has only {len(members)} images, need {per_class}")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def provenance(source: Path) -> str:
    return (
        "Provenance of fashion_mnist_subset.npz: a class-balanced subset of Fashion-MNIST "
        "(https://github.com/zalandoresearch/fashion-mnist), built by tools/make_embedded_data.py "
        f"from {source}/train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (Debian package dataset-fashion-mnist): "
        f"{TRAIN_PER_CLASS} images per class drawn from the train files and {TEST_PER_CLASS} per class "
        f"from the t10k files with numpy.random.default_rng({SEED}), kept in original file order; "
        "pixels and labels are unchanged.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    arrays = {key: read_idx(find_file(args.source, stem)) for key, stem in FASHION_MNIST_FILES.items()}
    rng = np.random.default_rng(SEED)
    subset = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        index = balanced_indices(arrays[f"{split}_labels"], per_class, rng)
        subset[f"{split}_images"] = arrays[f"{split}_images"][index].astype(np.uint8)
        subset[f"{split}_labels"] = arrays[f"{split}_labels"][index].astype(np.uint8)

    args.out.mkdir(parents=True, exist_ok=True)
    npz = args.out / "fashion_mnist_subset.npz"
    np.savez_compressed(npz, **subset)
    (args.out / "FASHION_MNIST_LICENSE.txt").write_text(MIT_LICENSE + "\n" + provenance(args.source))
    sizes = ", ".join(f"{k} {v.shape}" for k, v in subset.items())
    print(f"wrote {npz} ({npz.stat().st_size / 1e6:.2f} MB): {sizes}")


if __name__ == "__main__":
    main()
