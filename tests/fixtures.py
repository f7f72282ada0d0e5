"""Tiny copies of the official dataset formats, built in a temp dir (no downloads)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def make_cifar(root: Path, n_per_batch: int = 20, seed: int = 0) -> Path:
    """``<root>/cifar-10-batches-py`` with 5 train batches and a test batch of ``n_per_batch`` images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        obj = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(n_per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return root


def make_cub(
    root: Path, n_classes: int = 25, per_class: int = 4, size: int = 40, seed: int = 0
) -> Path:
    """``<root>/CUB_200_2011`` with ``n_classes`` × ``per_class`` small JPEGs (half train, half test)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "CUB_200_2011"
    lines: dict[str, list[str]] = {"images": [], "labels": [], "split": [], "boxes": []}
    i = 0
    for c in range(1, n_classes + 1):
        cdir = folder / "images" / f"{c:03d}.Bird_{c}"
        cdir.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            i += 1
            rel = f"{cdir.name}/img_{i}.jpg"
            arr = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / "images" / rel)
            lines["images"].append(f"{i} {rel}")
            lines["labels"].append(f"{i} {c}")
            lines["split"].append(f"{i} {int(k % 2 == 0)}")
            lines["boxes"].append(f"{i} 5.0 6.0 20.0 15.0")
    for key, fname in [
        ("images", "images.txt"),
        ("labels", "image_class_labels.txt"),
        ("split", "train_test_split.txt"),
        ("boxes", "bounding_boxes.txt"),
    ]:
        (folder / fname).write_text("\n".join(lines[key]) + "\n")
    return root


def _idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    blob = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def make_mnist(
    root: Path, n_train: int = 60, n_test: int = 30, gz: bool = True, seed: int = 0
) -> Path:
    """``<root>/MNIST/raw`` with the four IDX files (random strokes)."""
    rng = np.random.default_rng(seed)
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in [("train", n_train), ("t10k", n_test)]:
        imgs = (rng.random((n, 28, 28)) > 0.7).astype(np.uint8) * 255
        _idx(folder / f"{prefix}-images-idx3-ubyte", imgs, gz)
        _idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8), gz)
    return root


class _Evil:
    """Unpickling this calls ``os.system`` — the restricted unpickler must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def make_malicious_cifar(root: Path, marker: Path) -> Path:
    """A CIFAR folder whose ``data_batch_1`` runs ``touch marker`` when naively unpickled."""
    make_cifar(root)
    with open(root / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f, protocol=2)
    return root


def set_cifar_label(root: Path, batch: str, index: int, label: int) -> Path:
    """Rewrite label ``index`` of ``<root>/cifar-10-batches-py/<batch>`` to ``label``."""
    path = root / "cifar-10-batches-py" / batch
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="bytes")
    obj[b"labels"][index] = label
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return path


def flip_byte(path: Path, offset: int | None = None) -> Path:
    """XOR one byte of ``path`` (default: the middle one, pixel data in a CIFAR batch) with 0xFF;
    the size stays the same."""
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(blob))
    return path
