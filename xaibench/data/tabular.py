"""Small tabular datasets for the QGE study: standardized features, integer labels, names.

- ``diabetes``: scikit-learn's bundled ``load_diabetes`` (442 rows, 10 features), the
  disease-progression target binarised at its median (``y > median`` → 1); offline.
- ``iris``: scikit-learn's bundled ``load_iris`` (150 rows, 4 features, 3 classes).
- ``glass``: the UCI Glass Identification file ``<data_dir>/glass/glass.data``
  (``Id, RI, Na, Mg, Al, Si, K, Ca, Ba, Fe, Type`` per line, 9 features).
- ``avila``: the UCI Avila files ``<data_dir>/avila/avila-tr.txt`` and ``avila-ts.txt``
  (10 features and a class letter per line; their own train/test split).

Features are standardized with the training split's mean and standard deviation,
so the training mean is 0 in model-input space. Nothing here downloads: a missing or
malformed file raises :class:`~xaibench.data.errors.DatasetNotFoundError` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from xaibench.data.errors import DatasetNotFoundError
from xaibench.errors import ConfigError

GLASS_FEATURES = ("RI", "Na", "Mg", "Al", "Si", "K", "Ca", "Ba", "Fe")
GLASS_HOW = (
    "get glass.data from the UCI Machine Learning Repository (Glass Identification, "
    "DOI 10.24432/C5WW2P) and put it in <data_dir>/glass/"
)
AVILA_FEATURES = tuple(f"F{i}" for i in range(1, 11))
AVILA_HOW = (
    "get avila.zip from the UCI Machine Learning Repository (Avila, DOI 10.24432/C5K02X) "
    "and put avila-tr.txt and avila-ts.txt in <data_dir>/avila/"
)


@dataclass(frozen=True)
class TabularData:
    """A train/test split: ``x_* (n, F)`` float32 standardized, ``y_* (n,)`` int64 in ``[0, C)``."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    feature_names: tuple[str, ...]
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


# a raw loader returns (x (n, F), y (n,) int, feature names, n_train or None); with
# n_train the first n_train rows are the dataset's own training split
Raw = tuple[np.ndarray, np.ndarray, tuple[str, ...], int | None]


def _diabetes(data_dir: Path) -> Raw:
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    y = (d.target > np.median(d.target)).astype(np.int64)
    return d.data, y, tuple(d.feature_names), None


def _iris(data_dir: Path) -> Raw:
    from sklearn.datasets import load_iris

    d = load_iris()
    return d.data, d.target.astype(np.int64), tuple(d.feature_names), None


def _read_csv(name: str, path: Path, folder: Path, expected: list[str], how: str) -> np.ndarray:
    """Comma-separated text as a 2-D array of strings; the dataset's error when unreadable."""
    if not path.is_file():
        raise DatasetNotFoundError(name, folder, expected, how, problem=f"{path} does not exist")
    try:
        rows = [ln.split(",") for ln in path.read_text().splitlines() if ln.strip()]
        table = np.array(rows, dtype=str)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # ragged rows: ValueError
        raise DatasetNotFoundError(
            name, folder, expected, how, problem=f"{path} cannot be read as CSV: {e}"
        ) from e
    if table.ndim != 2 or len(table) == 0:
        raise DatasetNotFoundError(
            name, folder, expected, how, problem=f"{path} has no rows of equal length"
        )
    return np.char.strip(table)


def _floats(
    name: str, path: Path, cells: np.ndarray, folder: Path, expected: list[str], how: str
) -> np.ndarray:
    """``cells`` as float64; the dataset's error when one is not a finite number."""
    try:
        out = cells.astype(np.float64)
    except ValueError as e:
        raise DatasetNotFoundError(
            name, folder, expected, how, problem=f"{path} has a non-numeric feature: {e}"
        ) from e
    if not np.isfinite(out).all():
        raise DatasetNotFoundError(name, folder, expected, how, problem=f"{path} has NaN/inf")
    return out


def _glass(data_dir: Path) -> Raw:
    folder, expected = data_dir / "glass", ["glass.data"]
    path = folder / expected[0]
    table = _read_csv("glass", path, folder, expected, GLASS_HOW)
    if table.shape[1] != 11:
        raise DatasetNotFoundError(
            "glass", folder, expected, GLASS_HOW,
            problem=f"{path} has {table.shape[1]} columns per line; glass.data has 11 "
            "(Id, 9 features, Type)",
        )  # fmt: skip
    values = _floats("glass", path, table, folder, expected, GLASS_HOW)
    _, y = np.unique(values[:, 10], return_inverse=True)
    return values[:, 1:10], y.astype(np.int64), GLASS_FEATURES, None


def _avila(data_dir: Path) -> Raw:
    folder, expected = data_dir / "avila", ["avila-tr.txt", "avila-ts.txt"]
    parts = []
    for f in expected:
        path = folder / f
        table = _read_csv("avila", path, folder, expected, AVILA_HOW)
        if table.shape[1] != 11:
            raise DatasetNotFoundError(
                "avila", folder, expected, AVILA_HOW,
                problem=f"{path} has {table.shape[1]} columns per line; Avila has 11 "
                "(10 features, class letter)",
            )  # fmt: skip
        parts.append(
            (_floats("avila", path, table[:, :10], folder, expected, AVILA_HOW), table[:, 10])
        )
    (x_tr, c_tr), (x_ts, c_ts) = parts
    _, y = np.unique(np.concatenate([c_tr, c_ts]), return_inverse=True)
    return np.concatenate([x_tr, x_ts]), y.astype(np.int64), AVILA_FEATURES, len(x_tr)


LOADERS: dict[str, Callable[[Path], Raw]] = {
    "diabetes": _diabetes,
    "iris": _iris,
    "glass": _glass,
    "avila": _avila,
}


def _split(y: np.ndarray, n_train: int | None, test_fraction: float, seed: int):
    """Train and test row indices: the dataset's own split, else a seeded stratified one."""
    if n_train is not None:
        return np.arange(n_train), np.arange(n_train, len(y))
    from sklearn.model_selection import train_test_split

    return train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y
    )


def load_tabular(
    name: str, data_dir: str | Path, *, seed: int = 0, test_fraction: float = 0.3
) -> TabularData:
    """Dataset ``name`` split, standardized with its training statistics.

    Args:
        name: one of :data:`LOADERS` (``diabetes``, ``iris``, ``glass``, ``avila``).
        data_dir: ``paths.data_dir``; ``glass``/``avila`` files are read under it.
        seed: seed of the stratified split (``avila`` keeps its own split).
        test_fraction: share of rows in the test split, in ``(0, 1)``.

    Raises:
        ConfigError: unknown ``name`` or a bad ``test_fraction``.
        DatasetNotFoundError: a ``glass``/``avila`` file is missing or malformed.
    """
    if name not in LOADERS:
        raise ConfigError(
            f"study.dataset={name!r} is not a tabular dataset; choose one of {list(LOADERS)}"
        )
    if not 0.0 < float(test_fraction) < 1.0:
        raise ConfigError(f"study.test_fraction={test_fraction!r} must be in (0, 1)")
    x, y, names, n_train = LOADERS[name](Path(data_dir))
    tr, ts = _split(y, n_train, float(test_fraction), seed)
    mean, std = x[tr].mean(axis=0), x[tr].std(axis=0)
    x = (x - mean) / np.where(std > 0, std, 1.0)

    def t(a: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    return TabularData(
        name=name,
        x_train=t(x[tr], torch.float32),
        y_train=t(y[tr], torch.int64),
        x_test=t(x[ts], torch.float32),
        y_test=t(y[ts], torch.int64),
        feature_names=tuple(names),
        num_classes=int(y.max()) + 1,
    )
