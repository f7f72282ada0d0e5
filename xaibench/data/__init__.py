"""Datasets and LightningDataModules (see DESIGN §3)."""

from xaibench.data.datamodules import (
    Cifar10DataModule,
    Cub200DataModule,
    SyntheticDigitsDataModule,
    SyntheticMnistDataModule,
    XaiDataModule,
)
from xaibench.data.datasets import Batch, unpack_batch
from xaibench.data.determinism import DeferredDataLoader, EpochReseed, EpochSampler
from xaibench.data.errors import DatasetNotFoundError
from xaibench.data.synthetic import SyntheticRecipe, compose

__all__ = [
    "Batch",
    "Cifar10DataModule",
    "Cub200DataModule",
    "DatasetNotFoundError",
    "DeferredDataLoader",
    "EpochReseed",
    "EpochSampler",
    "SyntheticDigitsDataModule",
    "SyntheticMnistDataModule",
    "SyntheticRecipe",
    "XaiDataModule",
    "compose",
    "unpack_batch",
]
