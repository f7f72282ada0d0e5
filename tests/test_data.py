"""Datasets: embedded generator, official-format readers, splits, clear errors, pickle safety."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil

import pytest
import torch
from fixtures import (
    flip_byte,
    make_cifar,
    make_cub,
    make_malicious_cifar,
    make_mnist,
    set_cifar_label,
)

from xaibench.data import (
    Cifar10DataModule,
    Cub200DataModule,
    DatasetNotFoundError,
    SyntheticDigitsDataModule,
    SyntheticMnistDataModule,
    compose,
    unpack_batch,
)
from xaibench.data import cache as data_cache
from xaibench.data.sources import load_cifar_batch, sklearn_digits
from xaibench.errors import DataError


def test_generator_is_deterministic_and_masks_cover_digits():
    d, lab = sklearn_digits()
    a, b = compose(d, lab, 16, seed=3), compose(d, lab, 16, seed=3)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["images"], compose(d, lab, 16, seed=4)["images"])
    assert a["images"].shape == (16, 3, 64, 64) and a["images"].dtype == torch.uint8
    frac = a["masks"].float().mean((1, 2, 3))
    assert bool(((frac > 0.01) & (frac < 0.35)).all()), frac
    # the digit is bright: mask pixels are brighter than the noise on average
    img = a["images"].float().mean(1, keepdim=True)
    assert img[a["masks"]].mean() > img[~a["masks"]].mean() + 50


def test_synthetic_digits_split_cache_and_batches(tmp_path):
    dm = SyntheticDigitsDataModule(tmp_path, n_train=40, n_val=10, n_test=20, batch_size=8, seed=1)
    dm.setup()
    files = list((tmp_path / "synthetic_digits").glob("*.pt"))
    assert len(files) == 1 and not list((tmp_path / "synthetic_digits").glob("*.tmp"))
    b = unpack_batch(next(iter(dm.train_dataloader())))
    assert b.images.shape == (8, 3, 64, 64) and 0 <= b.images.min() and b.images.max() <= 1
    assert b.masks.shape == (8, 1, 64, 64) and b.masks.dtype == torch.bool
    assert b.index.dtype == torch.long
    info = dm.split_info()
    assert info["train"]["size"] == 40 and info["test"]["size"] == 20
    # a second module reads the cache and gives the same data and recorded split
    dm2 = SyntheticDigitsDataModule(tmp_path, n_train=40, n_val=10, n_test=20, batch_size=8, seed=1)
    assert dm2.split_info() == info
    assert torch.equal(dm2.splits["test"][3][0], dm.splits["test"][3][0])


def test_synthetic_digits_corrupt_cache_is_rebuilt_with_warning(tmp_path):
    dm = SyntheticDigitsDataModule(tmp_path, n_train=8, n_val=4, n_test=4)
    dm.setup()
    (path,) = (tmp_path / "synthetic_digits").glob("*.pt")
    path.write_bytes(b"not a torch file")
    dm2 = SyntheticDigitsDataModule(tmp_path, n_train=8, n_val=4, n_test=4)
    with pytest.warns(UserWarning, match="unreadable"):
        dm2.setup()
    assert len(dm2.splits["train"]) == 8


def test_synthetic_source_digits_do_not_leak_between_splits(tmp_path):
    from xaibench.data.synthetic import split_sources

    pools = split_sources(1797, (0.7, 0.1, 0.2), 0)
    sets = [set(pools[s].tolist()) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(len(s) for s in sets) == 1797


@pytest.mark.parametrize("gz", [True, False])
def test_synthetic_mnist_reads_idx(tmp_path, gz):
    make_mnist(tmp_path, gz=gz)
    dm = SyntheticMnistDataModule(tmp_path, n_train=12, n_val=4, n_test=6, batch_size=4)
    b = unpack_batch(next(iter(dm.test_dataloader())))
    assert b.images.shape == (4, 3, 64, 64) and b.masks is not None


def test_cifar10_reads_official_format(tmp_path):
    make_cifar(tmp_path, n_per_batch=20)
    dm = Cifar10DataModule(tmp_path, val_size=10, batch_size=16)
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [90, 10, 20]
    x, y, i = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and y.max() < 10


def test_cub200_reads_official_format_with_20_classes(tmp_path):
    make_cub(tmp_path, n_classes=25, per_class=4)
    dm = Cub200DataModule(tmp_path, num_classes=20, image_size=64, batch_size=4, num_workers=0)
    dm.setup()
    assert len(dm.classes) == 20 and dm.split_info()["classes"] == dm.classes
    assert len(dm.splits["test"]) == 40
    b = unpack_batch(next(iter(dm.test_dataloader())))
    assert b.images.shape == (4, 3, 64, 64) and b.labels.max() < 20
    # box (5,6,20,15) on a 48x40 image scaled to 64x64
    assert 0.05 < b.masks.float().mean() < 0.3
    dm2 = Cub200DataModule(tmp_path, num_classes=20, image_size=64, class_seed=1)
    dm2.setup()
    assert dm2.classes != dm.classes


@pytest.mark.parametrize(
    ("cls", "folder"),
    [
        (Cifar10DataModule, "cifar-10-batches-py"),
        (Cub200DataModule, "CUB_200_2011"),
        (SyntheticMnistDataModule, "train-images-idx3-ubyte"),
    ],
)
def test_missing_dataset_names_folder_and_files(tmp_path, cls, folder):
    with pytest.raises(DatasetNotFoundError) as e:
        cls(tmp_path / "empty").setup()
    msg = str(e.value)
    assert folder in msg and str(tmp_path / "empty") in msg and "how to get it" in msg


def test_malformed_cub_file_is_named(tmp_path):
    make_cub(tmp_path, n_classes=20, per_class=2)
    (tmp_path / "CUB_200_2011" / "bounding_boxes.txt").write_text("1 2 3\n")
    with pytest.raises(DatasetNotFoundError, match="bounding_boxes.txt line 1 has 3 fields"):
        Cub200DataModule(tmp_path).setup()


def test_malicious_cifar_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    make_malicious_cifar(tmp_path, marker)
    with pytest.raises(
        DatasetNotFoundError,
        match="refused to load global 'posix.system'|refused to load global 'os.system'",
    ):
        load_cifar_batch(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    with pytest.raises(DatasetNotFoundError, match="refused"):
        Cifar10DataModule(tmp_path).setup()
    assert not marker.exists()


def test_truncated_cifar_batch_is_a_clear_error(tmp_path):
    make_cifar(tmp_path)
    p = tmp_path / "cifar-10-batches-py" / "test_batch"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DatasetNotFoundError, match="test_batch: pickle data was truncated"):
        load_cifar_batch(p)


def test_bad_dataset_values():
    with pytest.raises(ValueError, match="dataset.n_train=0"):
        SyntheticDigitsDataModule("x", n_train=0)
    with pytest.raises(ValueError, match="dataset.batch_size"):
        SyntheticDigitsDataModule("x", batch_size=0)


# --------------------------------------------------------------------------- cache keys

KEYED = {
    "cifar10": (Cifar10DataModule, make_cifar, {"val_size": 10}),
    "cub200": (Cub200DataModule, lambda root, seed: make_cub(root, 22, 2, seed=seed), {}),
    "synthetic_mnist": (SyntheticMnistDataModule, make_mnist, {}),
}


@pytest.mark.parametrize("name", sorted(KEYED))
def test_cache_key_fingerprints_the_content_not_the_path(tmp_path, name):
    cls, make, kw = KEYED[name]
    make(tmp_path / "a", seed=0)
    make(tmp_path / "b", seed=1)
    shutil.copytree(tmp_path / "a", tmp_path / "moved" / "deeper")

    def key(folder: str) -> dict:
        return cls(tmp_path / folder, **kw).cache_key()

    assert key("a") != key("b")
    assert key("moved/deeper") == key("a")
    assert str(tmp_path) not in json.dumps(key("a"))


def test_cifar_key_holds_the_sha256_of_every_batch_and_changes_with_one_byte(tmp_path):
    make_cifar(tmp_path / "a")
    folder = tmp_path / "a" / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    key = Cifar10DataModule(tmp_path / "a").cache_key()
    assert key["files"] == {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    flip_byte(tmp_path / "b" / "cifar-10-batches-py" / "data_batch_3")
    changed = Cifar10DataModule(tmp_path / "b").cache_key()
    assert {n for n in names if changed["files"][n] != key["files"][n]} == {"data_batch_3"}


def test_file_hashes_are_memoized_per_process(tmp_path, monkeypatch):
    make_cifar(tmp_path)
    first = Cifar10DataModule(tmp_path).cache_key()

    def no_open(*args, **kwargs):
        raise AssertionError("a file was hashed again")

    monkeypatch.setattr(data_cache, "open", no_open, raising=False)
    assert Cifar10DataModule(tmp_path).cache_key() == first


def test_cub_key_covers_metadata_and_the_images_used(tmp_path):
    make_cub(tmp_path / "a", n_classes=22, per_class=2)
    dm = Cub200DataModule(tmp_path / "a")
    key = dm.cache_key()

    def variant(folder: str, edit) -> dict:
        """The key of a copy of ``a`` after ``edit(<copy>/CUB_200_2011)``."""
        shutil.copytree(tmp_path / "a", tmp_path / folder)
        edit(tmp_path / folder / "CUB_200_2011")
        return Cub200DataModule(tmp_path / folder).cache_key()

    def grow_image_of(label: int):  # one image of that class one byte longer
        def edit(cub):
            img = sorted((cub / "images").glob(f"{label + 1:03d}.*/*"))[0]
            img.write_bytes(img.read_bytes() + b"\0")

        return edit

    def move_a_box(cub):
        boxes = cub / "bounding_boxes.txt"
        boxes.write_text(boxes.read_text().replace("5.0 6.0", "5.0 7.0", 1))

    unused = min(set(range(22)) - set(dm.classes))  # not one of the 20 drawn classes
    assert variant("unused", grow_image_of(unused)) == key
    assert variant("used", grow_image_of(dm.classes[0]))["images"] != key["images"]
    moved = variant("box", move_a_box)
    assert [f for f in key["files"] if moved["files"][f] != key["files"][f]] == [
        "bounding_boxes.txt"
    ]


# --------------------------------------------------------------------------- labels


def _labels(path) -> list[int]:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")[b"labels"]


@pytest.mark.parametrize("bad", [10, -1])
def test_cifar_label_out_of_range_is_a_data_error_at_setup(tmp_path, bad):
    make_cifar(tmp_path)
    path = set_cifar_label(tmp_path, "data_batch_2", 3, bad)
    lo, hi = min(_labels(path)), max(_labels(path))
    dm = Cifar10DataModule(tmp_path, val_size=10)
    with pytest.raises(DataError) as e:
        dm.setup()
    fix = (
        "fix the negative labels in cifar-10-batches-py/data_batch_2"
        if bad < 0
        else "fix cifar-10-batches-py/data_batch_2 or set dataset.num_classes=11"
    )
    assert str(e.value) == (
        f"cifar10: cifar-10-batches-py/data_batch_2 has labels in [{lo}, {hi}] but "
        f"dataset.num_classes=10 needs them in [0, 9]; {fix}"
    )
    assert (lo, hi) == ((-1, 9) if bad < 0 else (0, 10))


def test_mnist_label_out_of_range_names_the_idx_file(tmp_path):
    make_mnist(tmp_path, gz=False)
    path = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    blob = bytearray(path.read_bytes())
    blob[8] = 12  # the first label, after the 8-byte header
    path.write_bytes(bytes(blob))
    lo = min(blob[8:])
    with pytest.raises(DataError) as e:
        SyntheticMnistDataModule(tmp_path, n_train=4, n_val=2, n_test=2).setup()
    where = "t10k-labels-idx1-ubyte (test pool)"
    assert str(e.value) == (
        f"synthetic_mnist: {where} has labels in [{lo}, 12] but dataset.num_classes=10 "
        f"needs them in [0, 9]; fix {where} or set dataset.num_classes=13"
    )


def test_too_few_classes_for_the_digits_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as e:
        SyntheticDigitsDataModule(tmp_path, num_classes=5, n_train=4, n_val=2, n_test=2).setup()
    assert str(e.value) == (
        "synthetic_digits: the train pool of scikit-learn's load_digits has labels in [0, 9] "
        "but dataset.num_classes=5 needs them in [0, 4]; fix the train pool of scikit-learn's "
        "load_digits or set dataset.num_classes=10"
    )
    assert not list(tmp_path.rglob("*.pt"))  # nothing was generated


def test_cub_class_id_zero_is_a_data_error(tmp_path):
    make_cub(tmp_path, n_classes=20, per_class=2)
    labels = tmp_path / "CUB_200_2011" / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("1 1\n", "1 0\n", 1))
    with pytest.raises(
        DataError, match="image_class_labels.txt has class id 0; CUB class ids start at 1"
    ):
        Cub200DataModule(tmp_path).setup()


# --------------------------------------------------------------------------- data_dir is a file


@pytest.mark.parametrize(
    "cls",
    [Cifar10DataModule, Cub200DataModule, SyntheticMnistDataModule, SyntheticDigitsDataModule],
)
def test_data_dir_that_is_a_file_is_named(tmp_path, cls):
    path = tmp_path / "data.tar"
    path.write_bytes(b"not a folder")
    problem = re.escape(f"problem: paths.data_dir={path} is a file, not a folder")
    with pytest.raises(DatasetNotFoundError, match=problem):
        cls(path).setup()
    if cls is not SyntheticDigitsDataModule:  # the others read the folder for their cache key
        with pytest.raises(DatasetNotFoundError, match=problem):
            cls(path).cache_key()
    with pytest.raises(
        DatasetNotFoundError, match=re.escape(f"{path} (in paths.data_dir) is a file")
    ):
        cls(path / "sub").setup()
