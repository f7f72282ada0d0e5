"""Randomness that is a function of (seed, epoch), so a resumed run matches an uninterrupted one.

A run interrupted at an epoch boundary and resumed from its last checkpoint
restores weights, optimizer and scheduler, but not the global RNGs, DataLoader
worker RNGs or the shuffle order. Three pieces make epoch ``e`` see the same
randomness either way:

- :class:`EpochSampler` (the training loader's sampler): the shuffle order and a
  seed per sample (which drives that sample's augmentation, in whichever
  worker loads it) come from ``(seed, e)``. Lightning calls ``set_epoch(e)`` on it.
- :class:`DeferredDataLoader`: starts a pass at its first batch, not when
  ``iter()`` is called. Lightning 2.6 calls ``iter()`` on the train loader of a
  run's first epoch (0, or the one a resume starts at) before ``set_epoch`` and
  ``on_train_epoch_start`` -- with OneCycleLR even before the checkpoint is
  restored (``estimated_stepping_batches``) -- and with ``num_workers > 0`` the
  iterator draws its first indices at once. It also takes its own ``generator``,
  so creating an iterator never draws from the global torch RNG.
- :class:`EpochReseed` (a callback): at ``on_train_epoch_start`` it reseeds
  python ``random``, numpy and torch (CPU and every CUDA device) from
  ``(seed, e)``, for randomness inside the training step (dropout, noise).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed derived from ``(seed, epoch)`` by sha256 (stable across processes)."""
    digest = hashlib.sha256(f"xaibench:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def reseed_all(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device (lazily if CUDA is not initialised)


class EpochReseed(pl.Callback):
    """Reseed the global RNGs from ``(seed, trainer.current_epoch)`` at each training epoch start.

    Args:
        seed: the run's seed (``cfg.seed``).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reseed_all(epoch_seed(self.seed, trainer.current_epoch))


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)`` for every index of a dataset of size ``n``, in an order
    drawn from ``(seed, epoch)``; the datasets of :mod:`xaibench.data.datasets` draw that
    sample's augmentation from ``sample_seed``.

    The epoch is the one last given to :meth:`set_epoch` (Lightning calls it each epoch),
    else ``epoch`` and one more for every later pass.

    Args:
        n: dataset size.
        seed: the split seed (``dataset.seed``).
        epoch: the epoch of the first pass.
        shuffle: permute the indices (else ``0..n-1`` in order, still with sample seeds).
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, shuffle: bool = True) -> None:
        self.n, self.seed, self.epoch, self.shuffle = int(n), int(seed), int(epoch), shuffle

    def set_epoch(self, epoch: int) -> None:
        """Draw the next pass from ``(seed, epoch)``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # not a generator function: the epoch is read when the pass starts, not at its first item
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        return iter(list(zip(order.tolist(), seeds.tolist(), strict=True)))


class _Deferred:
    """An iterator that calls ``start()`` for the real one at its first ``next()``."""

    def __init__(self, start: Callable[[], Iterator[Any]]) -> None:
        self._start, self._it = start, None

    def __iter__(self) -> _Deferred:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._it = self._start()
        return next(self._it)


class DeferredDataLoader(DataLoader):
    """A DataLoader whose pass (sampler order, worker prefetch) starts at the first batch.

    Same arguments as :class:`torch.utils.data.DataLoader`; pass a ``generator``
    to keep iterator creation off the global torch RNG.
    """

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return _Deferred(super().__iter__)
