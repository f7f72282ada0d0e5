"""LightningDataModules with fixed, recorded splits, one per dataset.

Every module exposes ``num_classes``, ``image_size``, ``in_channels``,
``has_masks``, ``cache_key()`` (what determines its data, for the base
classifier cache) and ``split_info()`` (the recorded split: seeds, sizes and a
hash of each split's sample ids), and yields batches of
``(image, label, index[, mask])`` (see :mod:`xaibench.data.datasets`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from xaibench import errors as _errors  # module import: xaibench.errors imports this package
from xaibench.data import sources
from xaibench.data.cache import cached, config_hash, file_sha256
from xaibench.data.datasets import CubDataset, TensorImageDataset
from xaibench.data.determinism import DeferredDataLoader, EpochSampler
from xaibench.data.synthetic import SyntheticRecipe, compose, split_sources

SPLITS = ("train", "val", "test")


def _ids_hash(ids: Tensor | list) -> str:
    return config_hash([int(i) for i in ids] if isinstance(ids, Tensor) else list(ids), 16)


def _sha256s(paths: Iterable[Path]) -> dict[str, str]:
    """File name -> sha256 of its bytes (the folder they live in is left out)."""
    return {p.name: file_sha256(p) for p in paths}


def _files_key(lister: Callable[[Path, str], Iterable[Path]], root: Path) -> dict[str, str]:
    """:func:`_sha256s` of the files ``lister(root, split)`` names for the train and test splits."""
    return _sha256s(p for split in ("train", "test") for p in lister(root, split))


def _seeded_split(n: int, n_val: int, seed: int) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


class XaiDataModule(pl.LightningDataModule):
    """Shared loaders and bookkeeping; subclasses implement :meth:`_build`.

    Args:
        data_dir: root folder holding the dataset (``paths.data_dir``).
        num_classes: classes the model predicts (checked against the data).
        image_size: model input side in pixels.
        batch_size: training batch size.
        eval_batch_size: val/test batch size (defaults to ``batch_size``).
        num_workers: DataLoader workers.
        seed: split seed (recorded).
        augment: random horizontal flips on the training split.

    The training loader's order and augmentations are a function of
    ``(seed, epoch)`` (:mod:`xaibench.data.determinism`), so a run resumed at
    an epoch boundary sees the same batches as one never stopped.
    """

    name = "base"
    has_masks = False
    in_channels = 3

    def __init__(
        self,
        data_dir: str | Path,
        num_classes: int,
        image_size: int,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"dataset.batch_size={batch_size!r} must be a positive integer")
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"dataset.image_size={image_size!r} must be an integer >= 8")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.num_classes, self.image_size = int(num_classes), int(image_size)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed, self.augment = num_workers, int(seed), augment
        self.splits: dict[str, Dataset] = {}
        self.test_rows: range | None = None  # set by a resumable evaluation (one range)
        self._split_ids: dict[str, Any] = {}

    # -- subclass API ---------------------------------------------------------
    def _build(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def _data_key(self) -> dict[str, Any]:
        """What the data are: sizes, recipes and fingerprints of the files read (never paths)."""
        return {}

    # -- public ---------------------------------------------------------------
    def cache_key(self) -> dict[str, Any]:
        """What determines this module's data (not loader settings)."""
        return {
            "dataset": self.name,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "seed": self.seed,
            "augment": self.augment,
            **self._data_key(),
        }

    def setup(self, stage: str | None = None) -> None:
        """Build the splits once; every split's labels are checked against ``num_classes``."""
        if not self.splits:
            splits = self._build()
            for split in SPLITS:
                self._check_labels(splits[split].labels, f"split {split!r}")  # type: ignore[attr-defined]
            self.splits = splits

    def split_info(self) -> dict[str, Any]:
        """The recorded split: config key plus size and id hash of each split."""
        self.setup()
        return {
            "key": self.cache_key(),
            **{
                s: {"size": len(self.splits[s]), "ids_sha": _ids_hash(self._split_ids[s])}
                for s in SPLITS
            },
        }

    def _loader(self, split: str, shuffle: bool, rows: range | None = None) -> DataLoader:
        self.setup()
        ds = self.splits[split] if rows is None else Subset(self.splits[split], rows)
        sampler = EpochSampler(len(ds), self.seed) if shuffle else None  # type: ignore[arg-type]
        return DeferredDataLoader(
            ds,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        """The test split, or only its samples ``test_rows`` (a ``range``, for one range of
        a resumable evaluation; each sample's ``index`` stays its test-set position)."""
        return self._loader("test", False, self.test_rows)

    def _check_labels(self, labels: Tensor, where: str) -> None:
        """Raise :class:`~xaibench.errors.DataError` unless every label is in ``[0, num_classes)``.

        Args:
            labels: class labels ``(M,)``.
            where: the file or split they came from, for the message.
        """
        if len(labels) == 0:
            return
        lo, hi, n = int(labels.min()), int(labels.max()), self.num_classes
        if lo >= 0 and hi < n:
            return
        fix = (
            f"fix the negative labels in {where}"
            if lo < 0
            else f"fix {where} or set dataset.num_classes={hi + 1}"
        )
        raise _errors.DataError(
            f"{self.name}: {where} has labels in [{lo}, {hi}] but dataset.num_classes={n} "
            f"needs them in [0, {n - 1}]; {fix}"
        )


class SyntheticDigitsDataModule(XaiDataModule):
    """The embedded default: scikit-learn's bundled digits composed by the LAX
    recipe (:mod:`xaibench.data.synthetic`), cached once under
    ``<data_dir>/synthetic_digits/``. Source digits are split 70/10/20 so no
    test image reuses a training digit.
    """

    name = "synthetic_digits"
    has_masks = True

    def __init__(
        self,
        data_dir: str | Path,
        num_classes: int = 10,
        image_size: int = 64,
        *,
        n_train: int = 12000,
        n_val: int = 1000,
        n_test: int = 2000,
        recipe: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(data_dir, num_classes, image_size, **kw)
        for k, v in {"n_train": n_train, "n_val": n_val, "n_test": n_test}.items():
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"dataset.{k}={v!r} must be a positive integer")
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.recipe = SyntheticRecipe(**{"size": image_size, **(recipe or {})})

    def _data_key(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "recipe": asdict(self.recipe)}

    def _sources(self) -> dict[str, tuple[Tensor, Tensor]]:
        digits, labels = sources.sklearn_digits()
        pools = split_sources(len(digits), (0.7, 0.1, 0.2), self.seed)
        return {s: (digits[p], labels[p]) for s, p in pools.items()}

    def _source_name(self, split: str) -> str:
        return f"the {split} pool of scikit-learn's load_digits"

    def _generate(self) -> dict[str, Any]:
        src = self._sources()
        out: dict[str, Any] = {}
        for i, split in enumerate(SPLITS):
            d, lab = src[split]
            self._check_labels(lab, self._source_name(split))
            out[split] = compose(d, lab, self.sizes[split], self.seed * 1000 + i, self.recipe)
        return out

    def _build(self) -> dict[str, Dataset]:
        sources.require_folder(self.name, self.data_dir)
        key = self.cache_key()
        path = self.data_dir / self.name / f"{config_hash(key)}.pt"
        data = cached(path, key, self._generate)
        out = {}
        for split in SPLITS:
            d = data[split]
            self._split_ids[split] = d["source"]
            out[split] = TensorImageDataset(d["images"], d["labels"], d["masks"], augment=False)
        return out


class SyntheticMnistDataModule(SyntheticDigitsDataModule):
    """The same generator over real MNIST IDX files found under ``data_dir``
    (train digits split 90/10 into train/val pools; test from MNIST's test set)."""

    name = "synthetic_mnist"

    def __init__(
        self,
        data_dir: str | Path,
        num_classes: int = 10,
        image_size: int = 64,
        *,
        n_train: int = 50000,
        n_val: int = 5000,
        n_test: int = 10000,
        recipe: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(
            data_dir,
            num_classes,
            image_size,
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            recipe=recipe,
            **kw,
        )

    def _sources(self) -> dict[str, tuple[Tensor, Tensor]]:
        tr_d, tr_l = sources.mnist(self.data_dir, "train")
        te_d, te_l = sources.mnist(self.data_dir, "test")
        n_val = max(1, len(tr_d) // 10)
        tr, va = _seeded_split(len(tr_d), n_val, self.seed)
        return {"train": (tr_d[tr], tr_l[tr]), "val": (tr_d[va], tr_l[va]), "test": (te_d, te_l)}

    def _source_name(self, split: str) -> str:
        return f"{'t10k' if split == 'test' else 'train'}-labels-idx1-ubyte ({split} pool)"

    def _data_key(self) -> dict[str, Any]:
        return {**super()._data_key(), "files": _files_key(sources.mnist_files, self.data_dir)}


class Cifar10DataModule(XaiDataModule):
    """CIFAR-10 from ``<data_dir>/cifar-10-batches-py`` (restricted unpickler);
    ``val_size`` training images held out with the split seed."""

    name = "cifar10"

    def __init__(
        self,
        data_dir: str | Path,
        num_classes: int = 10,
        image_size: int = 32,
        *,
        val_size: int = 5000,
        **kw: Any,
    ) -> None:
        super().__init__(data_dir, num_classes, image_size, **kw)
        self.val_size = int(val_size)

    def _data_key(self) -> dict[str, Any]:
        return {
            "val_size": self.val_size,
            "files": _files_key(sources.cifar10_files, self.data_dir),
        }

    def _build(self) -> dict[str, Dataset]:
        tr_x, tr_y = sources.cifar10(self.data_dir, "train", self._check_labels)
        te_x, te_y = sources.cifar10(self.data_dir, "test", self._check_labels)
        if not 0 < self.val_size < len(tr_y):
            raise ValueError(f"dataset.val_size={self.val_size} must be in (0, {len(tr_y)})")
        tr, va = _seeded_split(len(tr_y), self.val_size, self.seed)
        self._split_ids = {"train": tr, "val": va, "test": torch.arange(len(te_y))}
        size = self.image_size
        return {
            "train": TensorImageDataset(tr_x[tr], tr_y[tr], augment=self.augment, size=size),
            "val": TensorImageDataset(tr_x[va], tr_y[va], size=size),
            "test": TensorImageDataset(te_x, te_y, size=size),
        }


class Cub200DataModule(XaiDataModule):
    """CUB-200-2011 restricted to ``num_classes`` classes drawn with ``class_seed``
    (paper §4.1: 20), images resized to ``image_size``² with boxes as masks;
    ``val_fraction`` of the official training images held out."""

    name = "cub200"
    has_masks = True

    def __init__(
        self,
        data_dir: str | Path,
        num_classes: int = 20,
        image_size: int = 224,
        *,
        class_seed: int = 0,
        val_fraction: float = 0.1,
        **kw: Any,
    ) -> None:
        super().__init__(data_dir, num_classes, image_size, **kw)
        if not 0 < val_fraction < 1:
            raise ValueError(f"dataset.val_fraction={val_fraction!r} must be in (0, 1)")
        self.class_seed, self.val_fraction = int(class_seed), float(val_fraction)
        self.classes: list[int] = []

    def _data_key(self) -> dict[str, Any]:
        meta, mapped = self._select()
        used = [meta["paths"][i] for i in torch.nonzero(mapped >= 0).squeeze(1).tolist()]
        folder = sources.cub_folder(self.data_dir)
        return {
            "class_seed": self.class_seed,
            "val_fraction": self.val_fraction,
            "files": _sha256s(folder / name for name in sources.CUB_TABLES),
            "images": sources.cub_images_fingerprint(meta["root"], used, self.data_dir),
        }

    def split_info(self) -> dict[str, Any]:
        return {**super().split_info(), "classes": self.classes}

    def _select(self) -> tuple[dict[str, Any], Tensor]:
        """The metadata and each image's label among the ``num_classes`` drawn classes
        (``(M,)``, -1 for images of other classes); sets :attr:`classes`."""
        meta = sources.cub_metadata(self.data_dir)
        labels: Tensor = meta["labels"]  # type: ignore[assignment]
        if len(labels) and int(labels.min()) < 0:
            raise _errors.DataError(
                f"cub200: {sources.CUB_DIR}/image_class_labels.txt has class id "
                f"{int(labels.min()) + 1}; CUB class ids start at 1: fix that file"
            )
        present = labels.unique()
        if len(present) < self.num_classes:
            raise _errors.DataError(
                f"cub200: dataset.num_classes={self.num_classes} but only {len(present)} classes were found under {self.data_dir}"
            )
        g = torch.Generator().manual_seed(self.class_seed)
        chosen = (
            present[torch.randperm(len(present), generator=g)[: self.num_classes]].sort().values
        )
        self.classes = [int(c) for c in chosen]
        remap = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
        remap[chosen] = torch.arange(self.num_classes)
        return meta, remap[labels]

    def _build(self) -> dict[str, Dataset]:
        meta, mapped = self._select()
        keep = mapped >= 0
        is_train: Tensor = meta["is_train"]  # type: ignore[assignment]
        tr_all = torch.nonzero(keep & is_train).squeeze(1)
        te = torch.nonzero(keep & ~is_train).squeeze(1)
        n_val = max(1, int(round(self.val_fraction * len(tr_all))))
        if len(tr_all) <= n_val or len(te) == 0:
            raise _errors.DataError(
                f"cub200: too few images for a train/val/test split ({len(tr_all)} train, {len(te)} test)"
            )
        tr_pos, va_pos = _seeded_split(len(tr_all), n_val, self.seed)
        ids = {"train": tr_all[tr_pos], "val": tr_all[va_pos], "test": te}
        self._split_ids = ids

        def ds(idx: Tensor, augment: bool) -> CubDataset:
            return CubDataset(
                meta["root"],
                [meta["paths"][i] for i in idx.tolist()],
                mapped[idx],
                meta["boxes"][idx],
                size=self.image_size,
                augment=augment,
            )  # type: ignore[index]

        return {
            "train": ds(ids["train"], self.augment),
            "val": ds(ids["val"], False),
            "test": ds(ids["test"], False),
        }
