"""train.py's pipeline: fast_dev_run on every dataset, base-classifier cache reuse, rebuild and resume."""

from __future__ import annotations

import json
import logging

import lightning.pytorch as pl
import pytest
import torch
from conftest import TINY_DIGITS
from fixtures import make_cifar, make_cub, make_mnist

from xaibench import pipeline
from xaibench.data.cache import atomic_save
from xaibench.errors import ConfigError

COARSE_METRICS = [
    "metric.paper.step=0.1",
    "metric.paper.percent_step=0.1",
    "metric.paper.batch_size=512",
]


@pytest.mark.parametrize(
    ("dataset", "make", "extra"),
    [
        ("synthetic_digits", None, ["dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16"]),
        (
            "synthetic_mnist",
            make_mnist,
            ["dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16"],
        ),
        ("cifar10", make_cifar, ["dataset.val_size=20", "dataset.num_workers=0"]),
        ("cub200", make_cub, ["dataset.image_size=64", "dataset.num_workers=0"]),
    ],
)
def test_fast_dev_run_every_dataset(cfg_factory, tmp_path, dataset, make, extra):
    overrides = [
        f"dataset={dataset}",
        "model.net.width=0.125",
        "++trainer.fast_dev_run=true",
        "explainer=lax",
        *COARSE_METRICS,
        *extra,
    ]
    if make is not None:
        make(tmp_path / "fixture")
        overrides.append(f"paths.data_dir={tmp_path / 'fixture'}")
    cfg = cfg_factory(overrides)
    summary = pipeline.train(cfg)
    out = tmp_path / "out"
    split = json.loads((out / "split.json").read_text())
    rows = (out / "per_sample.csv").read_text().splitlines()
    # fast_dev_run scores one test batch: the rows and the summary describe the same samples
    n = summary["test"]["lax"]["msi"]["n"] + summary["test"]["lax"]["msi"]["n_nan"]
    assert len(rows) == 1 + n and 0 < n <= split["test"]["size"]
    msi = [float(r.split(",")[rows[0].split(",").index("msi")]) for r in rows[1:]]
    assert summary["test"]["lax"]["msi"]["mean"] == pytest.approx(sum(msi) / n, abs=1e-5)
    assert not list((tmp_path / "cache").rglob("*.pt")), "a fast_dev_run classifier was cached"
    assert json.loads((out / "summary.json").read_text())["dataset"] == dataset


def test_base_cache_is_reused_then_rebuilt_when_corrupt(cfg_factory, tmp_path):
    cfg = cfg_factory(TINY_DIGITS)
    first = pipeline.train(cfg)["base_classifier"]
    assert first["cached"] is False
    path = pipeline.base_checkpoint_path(cfg, pipeline.build_datamodule(cfg))
    assert path.exists() and not path.with_suffix(".work").exists()
    second = pipeline.train(cfg)["base_classifier"]
    assert second["cached"] is True and second["test_acc"] == first["test_acc"]
    path.write_bytes(b"\x00garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        third = pipeline.train(cfg)["base_classifier"]
    assert third["cached"] is False
    obj = torch.load(path, weights_only=True)
    obj["meta"]["key"] = {"something": "else"}
    atomic_save(obj, path)
    with pytest.warns(UserWarning, match="another config"):
        assert pipeline.train(cfg)["base_classifier"]["cached"] is False


def test_cache_key_changes_with_hparams(cfg_factory):
    a = cfg_factory(TINY_DIGITS)
    b = cfg_factory([*TINY_DIGITS, "model.optimizer.lr=0.01"])
    c = cfg_factory([*TINY_DIGITS, "seed=1"])
    paths = {pipeline.base_checkpoint_path(x, pipeline.build_datamodule(x)) for x in (a, b, c)}
    assert len(paths) == 3


def test_frozen_base_has_no_gradients(cfg_factory):
    cfg = cfg_factory(TINY_DIGITS)
    dm = pipeline.build_datamodule(cfg)
    dm.setup()
    net, _ = pipeline.base_classifier(cfg, dm)
    assert not net.training and not any(p.requires_grad for p in net.parameters())


class _Crash(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_interrupted_training_resumes_from_last_checkpoint(cfg_factory, monkeypatch, caplog):
    cfg = cfg_factory([*TINY_DIGITS, "model.max_epochs=2"])
    real = pipeline.build_trainer
    monkeypatch.setattr(
        pipeline,
        "build_trainer",
        lambda c, **kw: real(c, **{**kw, "callbacks": [*kw["callbacks"], _Crash()]}),
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        pipeline.train(cfg)
    path = pipeline.base_checkpoint_path(cfg, pipeline.build_datamodule(cfg))
    assert (path.with_suffix(".work") / "last.ckpt").exists() and not path.exists()
    monkeypatch.setattr(pipeline, "build_trainer", real)
    with caplog.at_level(logging.INFO, logger="xaibench.pipeline"):
        base = pipeline.train(cfg)["base_classifier"]
    assert "resuming base classifier training" in caplog.text
    assert base["cached"] is False and path.exists() and not path.with_suffix(".work").exists()


def test_optimized_metric_lookup():
    assert pipeline.lookup_metric({"a": {"b": 0.5}}, "a.b") == 0.5
    with pytest.raises(ConfigError, match="optimized_metric='a.c'"):
        pipeline.lookup_metric({"a": {"b": 0.5}}, "a.c")


def test_lax_end_to_end_with_gradcam_row_and_eval_py(cfg_factory, tmp_path):
    cfg = cfg_factory(
        [
            *TINY_DIGITS,
            "explainer=lax",
            "explainer.max_epochs=2",
            "explainer.val_samples=16",
            "compare_with=[gradcam]",
            *COARSE_METRICS,
        ]
    )
    summary = pipeline.train(cfg)
    out = tmp_path / "out"
    assert set(summary["test"]) == {"lax", "gradcam"}
    for col in (
        "msi",
        "base_score",
        "mask_penalty",
        "insertion_value",
        "deletion_percent",
        "fid_plus_value",
        "pointing_game",
    ):
        assert col in summary["test"]["lax"], col
    table = (out / "table.md").read_text()
    assert "| lax |" in table and "| gradcam |" in table
    rows = (out / "per_sample.csv").read_text().splitlines()
    assert rows[0].startswith("index,") and len(rows) == 1 + 32
    assert (out / "lax.pt").exists() and (out / "figures" / "overlays_compare.png").exists()
    assert (out / "compare" / "gradcam" / "per_sample.csv").exists()
    # eval.py reproduces the LAX row from the saved head on the cached classifier
    ev = cfg_factory(
        [*TINY_DIGITS, "explainer=lax", f"ckpt_path={out / 'lax.pt'}", *COARSE_METRICS],
        "eval.yaml",
    )
    ev.paths.output_dir = str(tmp_path / "eval_out")
    again = pipeline.evaluate_only(ev)["test"]["lax"]
    assert again["msi"]["mean"] == pytest.approx(summary["test"]["lax"]["msi"]["mean"], abs=1e-9)


def test_eval_py_needs_cached_base_and_an_explainer(cfg_factory):
    cfg = cfg_factory([*TINY_DIGITS, "explainer=gradcam"], "eval.yaml")
    with pytest.raises(ConfigError, match="no cached base classifier"):
        pipeline.evaluate_only(cfg)
    cfg = cfg_factory([*TINY_DIGITS], "eval.yaml")
    with pytest.raises(ConfigError, match="eval.py needs an explainer"):
        pipeline.evaluate_only(cfg)


def test_run_guarded_reports_user_errors_and_keeps_bugs_tracebacks(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def user_error(cfg):
        raise ConfigError("model.width=0 must be a number > 0")

    with pytest.raises(SystemExit) as e:
        pipeline.run_guarded(user_error, None)
    assert e.value.code == 1
    assert "error: model.width=0 must be a number > 0" in capsys.readouterr().err

    def bug(cfg):  # a plain ValueError/TypeError from inside is a bug, not the user's
        raise TypeError("msi() got an unexpected keyword argument 'masks'")

    with pytest.raises(TypeError, match="unexpected keyword argument 'masks'"):
        pipeline.run_guarded(bug, None)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError):
        pipeline.run_guarded(user_error, None)
