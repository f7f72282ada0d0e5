"""Datasets: embedded generator, official-format readers, splits, clear errors, pickle safety."""

from __future__ import annotations

import pytest
import torch
from fixtures import make_cifar, make_cub, make_malicious_cifar, make_mnist

from xaibench.data import (
    Cifar10DataModule,
    Cub200DataModule,
    DatasetNotFoundError,
    SyntheticDigitsDataModule,
    SyntheticMnistDataModule,
    compose,
    unpack_batch,
)
from xaibench.data.sources import load_cifar_batch, sklearn_digits


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
