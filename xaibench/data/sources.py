"""Readers for the official on-disk formats (nothing here downloads).

- scikit-learn's bundled ``load_digits`` (8×8 strokes, shipped with the package)
- MNIST IDX files (``train-images-idx3-ubyte`` …, gzipped or not)
- CIFAR-10 python batches via a restricted unpickler that admits only the
  plain types those files hold
- CUB-200-2011's metadata text files
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from collections.abc import Callable
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
DIGITS_HOW = "nothing to get: it is generated from scikit-learn's digits into <data_dir>/synthetic_digits/ on first use; point paths.data_dir at a writable folder"
LAYOUT = {
    "synthetic_mnist": (
        [f"MNIST/raw/{s}[.gz]" for pair in MNIST_FILES.values() for s in pair],
        MNIST_HOW,
    ),
    "cifar10": ([f"{CIFAR_DIR}/{f}" for f in CIFAR_FILES], CIFAR_HOW),
    "cub200": ([f"{CUB_DIR}/{f}" for f in CUB_FILES], CUB_HOW),
    "synthetic_digits": (["synthetic_digits/<key hash>.pt (written on first use)"], DIGITS_HOW),
}
"""Dataset name -> (files expected under ``paths.data_dir``, how to get them)."""


def not_found(name: str, root: Path, problem: str = "") -> DatasetNotFoundError:
    """The :class:`DatasetNotFoundError` for dataset ``name`` looked for under ``root``."""
    expected, how = LAYOUT[name]
    return DatasetNotFoundError(name, root, expected, how, problem=problem)


def require_folder(name: str, root: Path) -> None:
    """Raise :class:`DatasetNotFoundError` when ``root`` (``paths.data_dir``) or the nearest
    of its parents that exists is a file."""
    blocker = next((p for p in (root, *root.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = f"paths.data_dir={root}" if blocker == root else f"{blocker} (in paths.data_dir)"
        raise not_found(name, root, f"{where} is a file, not a folder")


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


def mnist_files(root: Path | str, split: str) -> tuple[Path, Path]:
    """The (images, labels) IDX files of MNIST ``split`` under ``root``, as :func:`mnist` reads them.

    Raises:
        DatasetNotFoundError: ``root`` is a file, or either file is missing.
    """
    root = Path(root)
    require_folder("synthetic_mnist", root)
    images, labels = (_find_idx(root, stem) for stem in MNIST_FILES[split])
    if images is None or labels is None:
        raise not_found("synthetic_mnist", root)
    return images, labels


def mnist(root: Path | str, split: str) -> tuple[Tensor, Tensor]:
    """MNIST ``split`` (``train``/``test``): strokes ``(M, 28, 28)`` in [0, 1], labels ``(M,)``."""
    root = Path(root)
    paths = mnist_files(root, split)
    try:
        images, labels = (_read_idx(p) for p in paths)
    except (OSError, ValueError) as e:
        raise not_found("synthetic_mnist", root, problem=str(e)) from e
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise not_found(
            "synthetic_mnist",
            root,
            f"images {images.shape} and labels {labels.shape} do not match",
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
    if not path.is_file():
        raise not_found("cifar10", root, f"{path.name} missing")
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise not_found("cifar10", root, f"{path}: {e}") from e
    except Exception as e:  # truncated or not a pickle at all
        raise not_found(
            "cifar10", root, f"{path} is not a CIFAR batch ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(obj, dict):
        raise not_found("cifar10", root, f"{path} holds {type(obj).__name__}, not a dict")
    data, labels = obj.get(b"data", obj.get("data")), obj.get(b"labels", obj.get("labels"))
    if (
        not isinstance(data, np.ndarray)
        or labels is None
        or data.ndim != 2
        or data.shape[1] != 3072
        or len(labels) != len(data)
    ):
        raise not_found("cifar10", root, f"{path} lacks data (M,3072) uint8 and matching labels")
    images = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8)).view(-1, 3, 32, 32)
    return images, torch.as_tensor(list(labels), dtype=torch.long)


def cifar10_files(root: Path | str, split: str) -> list[Path]:
    """The batch files of CIFAR-10 ``split`` (``train``: 5, ``test``: 1) under ``root``.

    Raises:
        DatasetNotFoundError: ``root`` is a file, or the folder or a batch is missing.
    """
    root = Path(root)
    require_folder("cifar10", root)
    folder = root / CIFAR_DIR
    if not folder.is_dir():
        raise not_found("cifar10", root, f"folder {CIFAR_DIR}/ missing")
    paths = [folder / n for n in (CIFAR_FILES[:5] if split == "train" else ["test_batch"])]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise not_found("cifar10", root, f"{missing.name} missing")
    return paths


def cifar10(
    root: Path | str, split: str, check_labels: Callable[[Tensor, str], None] | None = None
) -> tuple[Tensor, Tensor]:
    """CIFAR-10 ``train`` (50k) or ``test`` (10k) from ``<root>/cifar-10-batches-py``.

    Args:
        root: ``paths.data_dir``.
        split: ``train`` or ``test``.
        check_labels: called with each batch's labels ``(M,)`` and its name
            (``cifar-10-batches-py/data_batch_1``); raises on bad labels.

    Returns:
        Images ``(M, 3, 32, 32)`` uint8 and labels ``(M,)`` int64.
    """
    paths = cifar10_files(root, split)
    parts = [load_cifar_batch(p) for p in paths]
    for path, (_, labels) in zip(paths, parts, strict=True):
        if check_labels is not None:
            check_labels(labels, f"{CIFAR_DIR}/{path.name}")
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# --------------------------------------------------------------------------- CUB-200-2011

CUB_TABLES = {
    "images.txt": 2,
    "image_class_labels.txt": 2,
    "train_test_split.txt": 2,
    "bounding_boxes.txt": 5,
}
"""The metadata files :func:`cub_metadata` reads, with their number of fields."""


def _read_table(path: Path, ncols: int, root: Path) -> list[list[str]]:
    if not path.is_file():
        raise not_found("cub200", root, f"{path.name} missing")
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) != ncols), None)
    if bad is not None:
        raise not_found(
            "cub200",
            root,
            f"{path.name} line {bad + 1} has {len(rows[bad])} fields, expected {ncols}",
        )
    return rows


def cub_folder(root: Path | str) -> Path:
    """``<root>/CUB_200_2011``, checked to hold ``images/``.

    Raises:
        DatasetNotFoundError: ``root`` is a file, or the folders are missing.
    """
    root = Path(root)
    require_folder("cub200", root)
    folder = root / CUB_DIR
    if not folder.is_dir() or not (folder / "images").is_dir():
        raise not_found("cub200", root, f"folder {CUB_DIR}/ or {CUB_DIR}/images/ missing")
    return folder


def cub_metadata(root: Path | str) -> dict[str, Tensor | list[str] | Path]:
    """CUB metadata: ``paths`` (relative to images/), ``labels`` (0-based), ``is_train``, ``boxes`` (x, y, w, h)."""
    root = Path(root)
    folder = cub_folder(root)
    images, labels, split, boxes = (
        _read_table(folder / name, ncols, root) for name, ncols in CUB_TABLES.items()
    )
    labels, split = dict(labels), dict(split)
    boxes = {r[0]: [float(v) for v in r[1:]] for r in boxes}
    ids = [r[0] for r in images]
    missing = [i for i in ids if i not in labels or i not in split or i not in boxes]
    if missing:
        raise not_found("cub200", root, f"image ids {missing[:5]} lack a label, split or box")
    return {
        "root": folder / "images",
        "paths": [r[1] for r in images],
        "labels": torch.tensor([int(labels[i]) - 1 for i in ids]),
        "is_train": torch.tensor([split[i] == "1" for i in ids]),
        "boxes": torch.tensor([boxes[i] for i in ids]),
    }


def cub_images_fingerprint(images_root: Path, paths: list[str], root: Path) -> str:
    """sha256 over the sorted ``(relative path, size in bytes)`` of the CUB images ``paths``.

    Cheap (one ``stat`` per image, no pixel reads) and independent of where the
    folder lives.

    Raises:
        DatasetNotFoundError: an image listed in images.txt is missing.
    """
    listing = []
    for rel in sorted(paths):
        try:
            listing.append(f"{rel}\t{(images_root / rel).stat().st_size}")
        except OSError as e:
            raise not_found("cub200", root, f"image {rel} listed in images.txt is missing") from e
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()
