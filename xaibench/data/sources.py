"""Readers for the official on-disk formats (nothing here downloads).

- scikit-learn's bundled ``load_digits`` (8×8 strokes, shipped with the package)
- MNIST IDX files (``train-images-idx3-ubyte`` …, gzipped or not)
- CIFAR-10 python batches via a restricted unpickler that admits only the
  plain types those files hold
- CUB-200-2011's metadata text files
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from xaibench.data.errors import DatasetNotFoundError

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_HOW = "download the four MNIST IDX files (e.g. from the MNIST page or a torchvision cache) into <data_dir>/MNIST/raw/ or <data_dir>/mnist/"
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR_HOW = "download the CIFAR-10 python version (cifar-10-python.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html and extract it into <data_dir>"
CUB_DIR = "CUB_200_2011"
CUB_FILES = [
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
    "images/",
]
CUB_HOW = "download CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ and extract it into <data_dir>"


def sklearn_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 bundled 8×8 digits: strokes ``(1797, 8, 8)`` in [0, 1], labels ``(1797,)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(d.images / 16.0).float(), torch.from_numpy(d.target).long()


# --------------------------------------------------------------------------- MNIST


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root / "MNIST" / "raw", root / "mnist", root / "MNIST", root):
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
            if (folder / name).is_file():
                return folder / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path} holds {body.size} bytes of data, header says {dims}")
    return body.reshape(dims)


def mnist(root: Path | str, split: str) -> tuple[Tensor, Tensor]:
    """MNIST ``split`` (``train``/``test``): strokes ``(M, 28, 28)`` in [0, 1], labels ``(M,)``."""
    root = Path(root)
    paths = [_find_idx(root, stem) for stem in MNIST_FILES[split]]
    expected = [f"MNIST/raw/{s}[.gz]" for pair in MNIST_FILES.values() for s in pair]
    if any(p is None for p in paths):
        raise DatasetNotFoundError("synthetic_mnist", root, expected, MNIST_HOW)
    try:
        images, labels = (_read_idx(p) for p in paths)  # type: ignore[arg-type]
    except (OSError, ValueError) as e:
        raise DatasetNotFoundError(
            "synthetic_mnist", root, expected, MNIST_HOW, problem=str(e)
        ) from e
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetNotFoundError(
            "synthetic_mnist",
            root,
            expected,
            MNIST_HOW,
            problem=f"images {images.shape} and labels {labels.shape} do not match",
        )
    return torch.from_numpy(images.copy()).float() / 255.0, torch.from_numpy(
        labels.astype(np.int64)
    )


# --------------------------------------------------------------------------- CIFAR-10


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what the official CIFAR batches hold: dicts, lists, bytes,
    numbers and numpy arrays. Any other global (``os.system``, ``eval`` …) is
    refused before it can be called."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused to load global '{module}.{name}': not a plain CIFAR type"
        )


def load_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One CIFAR-10 batch file: images ``(M, 3, 32, 32)`` uint8, labels ``(M,)``.

    Raises:
        DatasetNotFoundError: the file is missing, malformed, or asks the
            unpickler for anything but plain types (nothing is executed).
    """
    root = path.parent.parent
    expected = [f"{CIFAR_DIR}/{f}" for f in CIFAR_FILES]
    if not path.is_file():
        raise DatasetNotFoundError(
            "cifar10", root, expected, CIFAR_HOW, problem=f"{path.name} missing"
        )
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DatasetNotFoundError(
            "cifar10", root, expected, CIFAR_HOW, problem=f"{path}: {e}"
        ) from e
    except Exception as e:  # truncated or not a pickle at all
        raise DatasetNotFoundError(
            "cifar10",
            root,
            expected,
            CIFAR_HOW,
            problem=f"{path} is not a CIFAR batch ({type(e).__name__}: {e})",
        ) from e
    if not isinstance(obj, dict):
        raise DatasetNotFoundError(
            "cifar10",
            root,
            expected,
            CIFAR_HOW,
            problem=f"{path} holds {type(obj).__name__}, not a dict",
        )
    data, labels = obj.get(b"data", obj.get("data")), obj.get(b"labels", obj.get("labels"))
    if (
        not isinstance(data, np.ndarray)
        or labels is None
        or data.ndim != 2
        or data.shape[1] != 3072
        or len(labels) != len(data)
    ):
        raise DatasetNotFoundError(
            "cifar10",
            root,
            expected,
            CIFAR_HOW,
            problem=f"{path} lacks data (M,3072) uint8 and matching labels",
        )
    images = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8)).view(-1, 3, 32, 32)
    return images, torch.as_tensor(list(labels), dtype=torch.long)


def cifar10(root: Path | str, split: str) -> tuple[Tensor, Tensor]:
    """CIFAR-10 ``train`` (50k) or ``test`` (10k) from ``<root>/cifar-10-batches-py``."""
    folder = Path(root) / CIFAR_DIR
    if not folder.is_dir():
        raise DatasetNotFoundError(
            "cifar10",
            Path(root),
            [f"{CIFAR_DIR}/{f}" for f in CIFAR_FILES],
            CIFAR_HOW,
            problem=f"folder {CIFAR_DIR}/ missing",
        )
    names = CIFAR_FILES[:5] if split == "train" else ["test_batch"]
    parts = [load_cifar_batch(folder / n) for n in names]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# --------------------------------------------------------------------------- CUB-200-2011


def _read_table(path: Path, ncols: int, root: Path) -> list[list[str]]:
    if not path.is_file():
        raise DatasetNotFoundError(
            "cub200",
            root,
            [f"{CUB_DIR}/{f}" for f in CUB_FILES],
            CUB_HOW,
            problem=f"{path.name} missing",
        )
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) != ncols), None)
    if bad is not None:
        raise DatasetNotFoundError(
            "cub200",
            root,
            [f"{CUB_DIR}/{f}" for f in CUB_FILES],
            CUB_HOW,
            problem=f"{path.name} line {bad + 1} has {len(rows[bad])} fields, expected {ncols}",
        )
    return rows


def cub_metadata(root: Path | str) -> dict[str, Tensor | list[str] | Path]:
    """CUB metadata: ``paths`` (relative to images/), ``labels`` (0-based), ``is_train``, ``boxes`` (x, y, w, h)."""
    root = Path(root)
    folder = root / CUB_DIR
    if not folder.is_dir() or not (folder / "images").is_dir():
        raise DatasetNotFoundError(
            "cub200",
            root,
            [f"{CUB_DIR}/{f}" for f in CUB_FILES],
            CUB_HOW,
            problem=f"folder {CUB_DIR}/ or {CUB_DIR}/images/ missing",
        )
    images = _read_table(folder / "images.txt", 2, root)
    labels = dict(_read_table(folder / "image_class_labels.txt", 2, root))
    split = dict(_read_table(folder / "train_test_split.txt", 2, root))
    boxes = {
        r[0]: [float(v) for v in r[1:]] for r in _read_table(folder / "bounding_boxes.txt", 5, root)
    }
    ids = [r[0] for r in images]
    missing = [i for i in ids if i not in labels or i not in split or i not in boxes]
    if missing:
        raise DatasetNotFoundError(
            "cub200",
            root,
            [f"{CUB_DIR}/{f}" for f in CUB_FILES],
            CUB_HOW,
            problem=f"image ids {missing[:5]} lack a label, split or box",
        )
    return {
        "root": folder / "images",
        "paths": [r[1] for r in images],
        "labels": torch.tensor([int(labels[i]) - 1 for i in ids]),
        "is_train": torch.tensor([split[i] == "1" for i in ids]),
        "boxes": torch.tensor([boxes[i] for i in ids]),
    }
