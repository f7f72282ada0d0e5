"""Shared fixtures: composed Hydra configs and tiny dataset copies (lightning-hydra-template style)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("XAIBENCH_ROOT", str(ROOT))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def compose_cfg(
    tmp_path: Path, overrides: list[str], config_name: str = "train.yaml"
) -> DictConfig:
    """Compose the real configs with outputs, data and caches under ``tmp_path``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name=config_name, return_hydra_config=True, overrides=overrides)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
        cfg.paths.log_dir = str(tmp_path / "logs")
        if not any(o.startswith("paths.data_dir") for o in overrides):
            cfg.paths.data_dir = str(tmp_path / "data")
        cfg.paths.cache_dir = str(tmp_path / "cache")
        cfg.trainer.enable_progress_bar = False
    return cfg


# tiny sizes that make any synthetic run take a second
TINY_DIGITS = [
    "dataset.n_train=64",
    "dataset.n_val=32",
    "dataset.n_test=32",
    "dataset.batch_size=32",
    "model.net.width=0.125",
    "model.net.stem=stride2",
    "model.max_epochs=1",
]


@pytest.fixture
def one_thread():
    """One intra-op thread for many tiny forward passes (two thrash on a shared 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cfg_factory(tmp_path):
    """``cfg_factory(overrides, config_name="train.yaml")`` → composed config under tmp_path."""

    def make(overrides: list[str], config_name: str = "train.yaml") -> DictConfig:
        return compose_cfg(tmp_path, overrides, config_name)

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """A demo-architecture classifier trained briefly on synthetic_digits, plus a test batch.

    Returns a dict: ``model`` (eval, frozen ResNet18 width 0.25 stride2), ``images``
    ``(64,3,64,64)`` in [0,1], ``labels`` ``(64,)``, ``masks`` ``(64,1,64,64)`` bool, ``test_acc``.
    """
    from xaibench.data import SyntheticDigitsDataModule
    from xaibench.models import resnet18

    tmp = tmp_path_factory.mktemp("digits")
    dm = SyntheticDigitsDataModule(tmp, n_train=3000, n_val=64, n_test=256, batch_size=64, seed=0)
    dm.setup()
    torch.manual_seed(0)
    net = resnet18(10, width=0.25, stem="stride2")
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(4):
        for x, y, _i, _m in dm.train_dataloader():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    test = dm.splits["test"]
    xs, ys, _, ms = zip(*[test[i] for i in range(len(test))], strict=True)
    x, y, m = torch.stack(xs), torch.stack(ys), torch.stack(ms)
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    return {"model": net, "images": x[:64], "labels": y[:64], "masks": m[:64], "test_acc": acc}
