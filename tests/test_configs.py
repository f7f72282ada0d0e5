"""Every config group composes and instantiates (lightning-hydra-template style)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from xaibench.models import resnet18
from xaibench.pipeline import build_datamodule, build_loggers

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("config_name", ["train.yaml", "eval.yaml"])
def test_root_configs_compose(cfg_factory, config_name):
    cfg = cfg_factory([], config_name)
    assert cfg.dataset.name == "synthetic_digits" and cfg.explainer.name == "none"
    assert cfg.model.net.num_classes == 10


# dataset file -> (image_size, num_classes, feature-map side of the backbone with its stem):
# 64px + cifar stem (stride 8) -> 8x8, 32px + cifar -> 4x4, 224px + imagenet (stride 32) -> 7x7
DATASETS = {
    "synthetic_digits": (64, 10, 8),
    "synthetic_mnist": (64, 10, 8),
    "cifar10": (32, 10, 4),
    "cub200": (224, 20, 7),
}


def test_every_dataset_config_has_a_design_row():
    assert set(DATASETS) == set(_names("dataset"))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_configs(cfg_factory, name):
    size, classes, side = DATASETS[name]
    yaml = OmegaConf.load(CONFIGS / "dataset" / f"{name}.yaml")
    cfg = cfg_factory([f"dataset={name}"])
    dm = build_datamodule(cfg)
    assert dm.name == name
    assert (dm.image_size, dm.num_classes) == (yaml.image_size, yaml.num_classes) == (size, classes)
    # the backbone the pipeline builds (model.net.stem and num_classes interpolate the dataset)
    net = resnet18(cfg.model.net.num_classes, width=0.125, stem=cfg.model.net.stem)
    x = torch.zeros(1, 3, dm.image_size, dm.image_size)
    with torch.no_grad():
        assert tuple(net.features(x).shape[-2:]) == (side, side)
        assert tuple(net(x).shape) == (1, dm.num_classes)


# trainer file -> the composed values it sets (inference_mode False everywhere: gradient
# explainers run in the test stage)
TRAINERS = {
    "default": {"accelerator": "auto", "devices": 1},
    "cpu": {"accelerator": "cpu", "devices": 1},
    "gpu": {"accelerator": "gpu", "devices": 1},
    "ddp": {
        "accelerator": "gpu",
        "devices": 2,
        "strategy": "ddp",
        "num_nodes": 1,
        "sync_batchnorm": True,
    },
    "ddp_cpu": {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"},
}
# what the Trainer built from each CPU-buildable file is, on a machine without CUDA:
# name -> (accelerator class, num_devices, strategy class, start method)
CPU_BUILT = {
    "default": ("CPUAccelerator", 1, "SingleDeviceStrategy", None),
    "cpu": ("CPUAccelerator", 1, "SingleDeviceStrategy", None),
    "ddp_cpu": ("CPUAccelerator", 2, "DDPStrategy", "spawn"),
}


def test_every_trainer_config_has_a_design_row():
    assert set(TRAINERS) == set(_names("trainer"))


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_trainer_configs(cfg_factory, name):
    cfg = cfg_factory([f"trainer={name}"])
    for key, value in TRAINERS[name].items():
        assert cfg.trainer[key] == value, key
    if "strategy" not in TRAINERS[name]:
        assert "strategy" not in cfg.trainer  # Lightning's default (one device)
    assert cfg.trainer.inference_mode is False and cfg.trainer.max_epochs == 10
    if name not in CPU_BUILT:
        return  # needs CUDA: the composed values above are what can be checked here
    accelerator, devices, strategy, start = CPU_BUILT[name]
    if name == "default" and torch.cuda.is_available():
        accelerator = "CUDAAccelerator"  # "auto" picks the GPU
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, max_epochs=3)
    assert type(trainer.accelerator).__name__ == accelerator
    assert trainer.num_devices == devices
    assert type(trainer.strategy).__name__ == strategy
    assert getattr(trainer.strategy, "_start_method", None) == start
    loops = (trainer.validate_loop, trainer.test_loop, trainer.predict_loop)
    assert [loop.inference_mode for loop in loops] == [False] * 3
    assert trainer.max_epochs == 3
    assert trainer.default_root_dir == cfg.paths.output_dir


@pytest.mark.parametrize("name", [n for n in _names("logger") if n != "wandb"])
def test_logger_configs(cfg_factory, name):
    cfg = cfg_factory([f"logger={name}"])
    loggers = build_loggers(cfg)
    assert len(loggers) == (0 if name == "none" else 1)
    if name == "csv":
        (logger,) = loggers
        assert type(logger).__name__ == "CSVLogger"
        assert logger.save_dir == cfg.paths.output_dir


def test_wandb_logger_writes_an_offline_run(cfg_factory, tmp_path, monkeypatch):
    """logger=wandb logs offline into paths.output_dir/wandb, with no network."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        folder = tmp_path / var.lower()
        folder.mkdir()
        monkeypatch.setenv(var, str(folder))
    cfg = cfg_factory(["logger=wandb"])
    assert cfg.logger.wandb.mode == "offline"
    (logger,) = build_loggers(cfg)
    try:
        logger.log_metrics({"x": 1.0}, step=0)
        run_id = logger.experiment.id
        assert logger.experiment.offline
    finally:
        wandb.finish()
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(f"-{run_id}")
    (record,) = runs[0].glob("*.wandb")
    assert record.name == f"run-{run_id}.wandb" and record.stat().st_size > 0


@pytest.mark.parametrize("name", _names("experiment"))
def test_experiment_configs(cfg_factory, name):
    cfg = cfg_factory([f"experiment={name}"])
    instantiate(cfg.model.net)


def test_model_config_instantiates(cfg_factory):
    cfg = cfg_factory(["model.net.width=0.125"])
    module = instantiate(cfg.model)
    assert module.max_epochs == cfg.model.max_epochs


def test_unknown_dataset_is_a_clear_error(cfg_factory):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="dataset/imagenet"):
        cfg_factory(["dataset=imagenet"])


@pytest.mark.parametrize(
    ("override", "msg"),
    [("model.net.width=0", "model.width=0"), ("model.net.stem=vit", "model.stem='vit' is unknown")],
)
def test_bad_model_values_are_clear(cfg_factory, override, msg):
    cfg = cfg_factory([override])
    with pytest.raises(Exception, match=msg):
        instantiate(cfg.model)
