"""Reliability: distinct run folders, Ctrl-C during training resumes bit-identically with a
clear hint, and a metric neither changes a model in train mode nor scores it in train mode."""

from __future__ import annotations

import logging
import signal
from datetime import datetime
from pathlib import Path

import hydra.core.utils
import lightning.pytorch as pl
import pytest
import torch
from conftest import TINY_DIGITS
from omegaconf import OmegaConf, open_dict
from torch import nn

from xaibench import pipeline
from xaibench.metrics import msi
from xaibench.models import ClassifierModule, resnet18


# -- run folders ---------------------------------------------------------------------------
class _SameSecond(datetime):
    """``datetime.now()`` frozen at one second; each call is one microsecond later."""

    calls = 0

    @classmethod
    def now(cls, tz=None):
        cls.calls += 1
        return cls(2024, 5, 17, 12, 30, 45, cls.calls)


def _run_dir(cfg) -> Path:
    return Path(OmegaConf.select(cfg, "hydra.run.dir", throw_on_missing=True))


def test_runs_started_in_the_same_second_get_distinct_folders(cfg_factory, tmp_path, monkeypatch):
    overrides = ["explainer=gradcam"]
    runs = tmp_path / "logs" / "train" / "runs" / "synthetic_digits-gradcam"
    # the real clock: two runs composed back to back
    first, second = (_run_dir(cfg_factory(overrides)) for _ in range(2))
    assert first != second and first.parent == second.parent == runs
    # the clock frozen within one second: the folder names still differ
    monkeypatch.setattr(hydra.core.utils, "datetime", _SameSecond)
    first, second = (_run_dir(cfg_factory(overrides)) for _ in range(2))
    assert first.name.startswith("2024-05-17_12-30-45") and second.name.startswith(
        "2024-05-17_12-30-45"
    )
    assert first != second and first.parent == second.parent == runs


# -- Ctrl-C during training ----------------------------------------------------------------
class _CtrlC(pl.Callback):
    """Raise ``KeyboardInterrupt`` at the start of training epoch ``epoch`` (Ctrl-C), in the
    base classifier's training or only in a learned explainer's (``explainer_only``)."""

    def __init__(self, epoch: int, *, explainer_only: bool = False) -> None:
        self.epoch, self.explainer_only = epoch, explainer_only

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.explainer_only and isinstance(pl_module, ClassifierModule):
            return
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.fixture
def sigint_kept():
    """The test leaves SIGINT's handler as it found it (Lightning ignores SIGINT while it shuts
    down after a KeyboardInterrupt and restores it in teardown)."""
    before = signal.getsignal(signal.SIGINT)
    try:
        yield
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGINT, before)


def _ctrl_c_at(monkeypatch, ctrl_c: _CtrlC) -> None:
    """Every trainer the pipeline builds gets the ``ctrl_c`` callback."""
    real = pipeline.build_trainer
    monkeypatch.setattr(
        pipeline,
        "build_trainer",
        lambda c, **kw: real(c, **{**kw, "callbacks": [*kw.get("callbacks", []), ctrl_c]}),
    )


def _relocate(cfg, folder: Path) -> None:
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder / "out")
        cfg.paths.cache_dir = str(folder / "cache")


def test_base_training_interrupted_by_ctrl_c_resumes_bit_identical(
    cfg_factory, tmp_path, monkeypatch, caplog, sigint_kept
):
    overrides = [*TINY_DIGITS, "model.max_epochs=3"]
    a = cfg_factory(overrides)
    _relocate(a, tmp_path / "a")
    pipeline.train(a)
    path_a = pipeline.base_checkpoint_path(a, pipeline.build_datamodule(a))

    b = cfg_factory(overrides)
    _relocate(b, tmp_path / "b")
    path_b = pipeline.base_checkpoint_path(b, pipeline.build_datamodule(b))
    work = path_b.with_suffix(".work")
    real = pipeline.build_trainer
    _ctrl_c_at(monkeypatch, _CtrlC(2))
    with caplog.at_level(logging.ERROR, logger="xaibench.pipeline"):
        with pytest.raises(SystemExit) as stopped:
            pipeline.train(b)
    assert stopped.value.code == 1  # Lightning exits the process after a KeyboardInterrupt
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        "rerun the same command to resume from" in m and str(work / "last.ckpt") in m
        for m in errors
    ), errors
    assert (work / "last.ckpt").exists() and not path_b.exists()

    monkeypatch.setattr(pipeline, "build_trainer", real)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xaibench.pipeline"):
        assert pipeline.train(b)["base_classifier"]["cached"] is False
    assert f"resuming base classifier training from {work / 'last.ckpt'}" in caplog.text
    assert path_a.name == path_b.name and path_a != path_b and not work.exists()
    sd_a = torch.load(path_a, weights_only=True)["state_dict"]
    sd_b = torch.load(path_b, weights_only=True)["state_dict"]
    assert sd_a.keys() == sd_b.keys()
    differ = [k for k in sd_a if not torch.equal(sd_a[k], sd_b[k])]
    assert not differ, f"resumed != uninterrupted in {len(differ)} tensors, e.g. {differ[:3]}"


def test_lax_training_interrupted_by_ctrl_c_names_its_checkpoint(
    cfg_factory, tmp_path, monkeypatch, caplog, sigint_kept
):
    tiny = [o for o in TINY_DIGITS if not o.startswith("dataset.n_test=")] + ["dataset.n_test=8"]
    cfg = cfg_factory([*tiny, "explainer=lax", "explainer.max_epochs=2", "explainer.val_samples=8"])
    _ctrl_c_at(monkeypatch, _CtrlC(1, explainer_only=True))  # the base classifier trains first
    with caplog.at_level(logging.INFO, logger="xaibench.pipeline"):
        with pytest.raises(SystemExit) as stopped:
            pipeline.train(cfg)
    assert stopped.value.code == 1
    assert "test accuracy" in caplog.text  # the base stage finished; the LAX stage was stopped
    assert pipeline.base_checkpoint_path(cfg, pipeline.build_datamodule(cfg)).exists()
    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"lax training interrupted; resume with ckpt_path={last}"]
    assert last.exists()


# -- a metric and a model in train mode ----------------------------------------------------
def test_metric_on_train_mode_model_scores_as_eval_and_leaves_it_in_train_mode():
    torch.manual_seed(0)
    model = resnet18(10, width=0.125, stem="stride2")
    for m in model.modules():  # running stats unlike the batch's, so the two modes differ
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 32, 32, generator=g)
    heatmaps = torch.rand(4, 1, 32, 32, generator=g)
    targets = torch.arange(4)
    with torch.no_grad():  # the two modes do score differently (this updates running stats)
        assert not torch.equal(model.eval()(images), model.train()(images))
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    kw = {"step": 0.1, "score": "confidence"}
    in_train = msi(model, images, heatmaps, targets, **kw)
    assert model.training and all(m.training for m in model.modules())
    after = dict(model.named_buffers())
    assert all(torch.equal(after[k], v) for k, v in buffers.items())
    in_eval = msi(model.eval(), images, heatmaps, targets, **kw)
    for key in ("msi", "base_score", "mask_penalty", "show_curve", "hide_curve"):
        assert torch.equal(in_train[key], in_eval[key]), key
