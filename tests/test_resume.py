"""Bit-identical resume: a run stopped at an epoch boundary and resumed from last.ckpt ends
with the same weights as one never stopped (EpochSampler + EpochReseed)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from fixtures import make_cifar
from torch import Tensor

from xaibench.data import Cifar10DataModule, EpochReseed, EpochSampler, SyntheticDigitsDataModule
from xaibench.data.datasets import TensorImageDataset
from xaibench.models import ClassifierModule, resnet18

EPOCHS = 3


class CrashAt(pl.Callback):
    """Raise at the start of training epoch ``epoch`` (a run killed at an epoch boundary)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"crash at epoch {self.epoch}")


class NoisyClassifier(ClassifierModule):
    """Adds input noise drawn from the global torch RNG in each training step (like dropout)."""

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, *rest = batch
        return super().training_step((x + 0.05 * torch.randn_like(x), *rest), batch_idx)


def classifier(cls: type[ClassifierModule] = ClassifierModule) -> ClassifierModule:
    """configs/model/resnet18.yaml at width 0.125, stem stride2, 3 epochs."""
    return cls(
        resnet18(10, width=0.125, stem="stride2"),
        partial(torch.optim.Adam, lr=0.003, weight_decay=0.0),
        partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.003),
        max_epochs=EPOCHS,
    )


def fit(
    dm: pl.LightningDataModule,
    ckpt_dir: Path,
    *,
    crash_at: int | None = None,
    resume: bool = False,
    reseed: bool = True,
    cls: type[ClassifierModule] = ClassifierModule,
) -> dict[str, Tensor]:
    """Seed as the pipeline does, fit the classifier (optionally crashing or resuming), return its state."""
    pl.seed_everything(0, workers=True, verbose=False)
    module = classifier(cls)
    callbacks: list[pl.Callback] = [pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True)]
    callbacks += [EpochReseed(0)] if reseed else []
    callbacks += [CrashAt(crash_at)] if crash_at is not None else []
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        deterministic=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=callbacks,
    )
    ckpt = str(ckpt_dir / "last.ckpt") if resume else None
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def interrupted_and_resumed(make_dm, ckpt_dir: Path, **kw: Any) -> dict[str, Tensor]:
    """Crash at the start of epoch 2, then resume from ``ckpt_dir/last.ckpt`` (``kw`` as :func:`fit`)."""
    with pytest.raises(RuntimeError, match="crash at epoch 2"):
        fit(make_dm(), ckpt_dir, crash_at=2, **kw)
    saved = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1  # the last finished epoch
    return fit(make_dm(), ckpt_dir, resume=True, **kw)


def differing(a: dict[str, Tensor], b: dict[str, Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def tiny_digits(root: Path):
    return lambda: SyntheticDigitsDataModule(
        root, n_train=64, n_val=16, n_test=16, batch_size=16, seed=0
    )


def tiny_cifar(root: Path, num_workers: int):
    make_cifar(root, n_per_batch=16)
    return lambda: Cifar10DataModule(
        root, val_size=16, batch_size=16, augment=True, seed=0, num_workers=num_workers
    )


@pytest.mark.parametrize("data", ["digits", "cifar_flips_2_workers"])
def test_resumed_training_is_bit_identical(tmp_path, one_thread, data):
    if data == "digits":
        make_dm = tiny_digits(tmp_path / "data")
    else:  # augmentation in worker processes, persistent across epochs
        make_dm = tiny_cifar(tmp_path / "data", num_workers=2)
    straight = fit(make_dm(), tmp_path / "straight")
    resumed = interrupted_and_resumed(make_dm, tmp_path / "resumed")
    assert differing(straight, resumed) == []
    # it did train: the weights moved from the seeded initialisation
    pl.seed_everything(0, verbose=False)
    assert "net.fc.weight" in differing(straight, classifier().state_dict())


@pytest.mark.parametrize("reseed", [True, False])
def test_epoch_reseed_makes_global_rng_draws_in_the_step_resumable(tmp_path, one_thread, reseed):
    make_dm = tiny_digits(tmp_path / "data")
    straight = fit(make_dm(), tmp_path / "straight", cls=NoisyClassifier, reseed=reseed)
    resumed = interrupted_and_resumed(
        make_dm, tmp_path / "resumed", cls=NoisyClassifier, reseed=reseed
    )
    # without the callback, epoch 2's noise follows two epochs of draws in one run and
    # a fresh seed_everything in the other
    assert (differing(straight, resumed) == []) is reseed


def test_sampler_order_and_seeds_are_a_function_of_seed_and_epoch():
    s = EpochSampler(6, seed=0)
    first, second = list(s), list(s)  # each pass moves on one epoch
    assert first != second
    s.set_epoch(1)
    assert list(s) == second
    assert list(EpochSampler(6, seed=0, epoch=1)) == second
    assert sorted(i for i, _ in first) == [0, 1, 2, 3, 4, 5]
    assert [i for i, _ in EpochSampler(4, seed=3, shuffle=False)] == [0, 1, 2, 3]


def test_augmentation_follows_the_sample_seed_not_the_global_rng():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    ds = TensorImageDataset(images, torch.tensor([0, 1]), augment=True)
    flips = set()
    for seed in range(8):
        torch.manual_seed(seed)  # a different global state for each read
        a = ds[(1, seed)][0]
        torch.manual_seed(seed + 100)
        assert torch.equal(ds[(1, seed)][0], a)
        flips.add(torch.equal(a, images[1].flip(-1).float() / 255))
    assert flips == {True, False}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_batches_of_an_epoch_do_not_depend_on_history_or_workers(tmp_path, num_workers):
    make_cifar(tmp_path, n_per_batch=8)
    kw = {"val_size": 8, "batch_size": 8, "augment": True}
    ref = Cifar10DataModule(tmp_path, **kw).train_dataloader()
    ref.sampler.set_epoch(2)
    expected = list(ref)
    dm = Cifar10DataModule(tmp_path, num_workers=num_workers, **kw)
    loader = dm.train_dataloader()
    torch.manual_seed(123)
    for _ in range(2):  # epochs 0 and 1, with whatever they do to the RNGs
        list(loader)
    got = list(loader)  # epoch 2
    assert len(got) == len(expected) == 4
    for (x, y, i), (ex, ey, ei) in zip(got, expected, strict=True):
        assert torch.equal(i, ei) and torch.equal(y, ey) and torch.equal(x, ex)
