"""What ``train.py`` runs: data → cached base classifier → explainer → evaluation.

The entry point only composes the config; every step lives here so tests and
notebooks can call it too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from xaibench.data import XaiDataModule, unpack_batch
from xaibench.data.cache import atomic_save, config_hash, load_checked, normalize_key
from xaibench.eval import EvaluationCallback, ExplainerTestModule, save_overlays, write_tables

log = logging.getLogger(__name__)

DATASET_META_KEYS = (
    "name",
    "stem",
    "alpha_min",
)  # dataset-config keys that describe, not construct


def build_datamodule(cfg: DictConfig) -> XaiDataModule:
    """Instantiate ``cfg.dataset`` (minus its metadata keys)."""
    ds = OmegaConf.to_container(cfg.dataset, resolve=True)
    for k in DATASET_META_KEYS:
        ds.pop(k, None)  # type: ignore[union-attr]
    return instantiate(ds)


def build_loggers(cfg: DictConfig) -> list[pl.loggers.Logger]:
    """Instantiate every logger under ``cfg.logger`` (none if empty)."""
    return [
        instantiate(c)
        for c in (cfg.get("logger") or {}).values()
        if c is not None and "_target_" in c
    ]


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    """Instantiate ``cfg.trainer`` with per-stage overrides (max_epochs, callbacks, logger)."""
    return instantiate(cfg.trainer, **overrides)


def base_cache_key(cfg: DictConfig, dm: XaiDataModule) -> dict[str, Any]:
    """What determines the base classifier: data, model config (incl. training hparams), seed."""
    return {
        "data": dm.cache_key(),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "seed": int(cfg.seed),
    }


def base_checkpoint_path(cfg: DictConfig, dm: XaiDataModule) -> Path:
    """``<cache_dir>/base/<dataset>-<hash of base_cache_key>.pt``."""
    return (
        Path(cfg.paths.cache_dir).expanduser()
        / "base"
        / f"{dm.name}-{config_hash(base_cache_key(cfg, dm))}.pt"
    )


def freeze(net: nn.Module) -> nn.Module:
    """Eval mode and no gradients for every parameter (the frozen base classifier)."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _train_base(
    cfg: DictConfig, dm: XaiDataModule, module: pl.LightningModule, path: Path
) -> dict[str, Any]:
    """Train the classifier, resuming from ``<path>.work/last.ckpt`` if an earlier run was interrupted."""
    work = path.with_suffix(".work")
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=work, filename="latest", save_last=True, save_top_k=1, every_n_epochs=1
    )
    trainer = build_trainer(
        cfg, max_epochs=module.max_epochs, callbacks=[ckpt], logger=build_loggers(cfg)
    )
    resume = work / "last.ckpt"
    if resume.exists():
        log.info("resuming base classifier training from %s", resume)
    trainer.fit(
        module, datamodule=dm, ckpt_path=str(resume) if resume.exists() else None, weights_only=True
    )
    if trainer.interrupted:
        raise KeyboardInterrupt(
            f"base classifier training interrupted; rerun the same command to resume from {resume}"
        )
    test = trainer.test(module, datamodule=dm, verbose=False)
    info = {"test_acc": float(test[0]["test/acc"]), "epochs": module.max_epochs}
    if trainer.fast_dev_run:
        log.warning("fast_dev_run: the base classifier saw one batch and is NOT cached")
        return info
    if trainer.is_global_zero:
        state = {k: v.detach().cpu() for k, v in module.net.state_dict().items()}
        atomic_save(
            {"state_dict": state, "meta": {"key": normalize_key(base_cache_key(cfg, dm)), **info}},
            path,
        )
        shutil.rmtree(work, ignore_errors=True)
    trainer.strategy.barrier()
    return info


def base_classifier(
    cfg: DictConfig, dm: XaiDataModule, *, train_if_missing: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen base classifier for (dataset, model, seed): from cache, else trained and cached.

    Returns:
        The network (eval mode, no gradients) and ``{"test_acc", "cached", "path", ...}``.
    """
    module = instantiate(cfg.model)  # validates width/stem before any work
    path = base_checkpoint_path(cfg, dm)
    key = base_cache_key(cfg, dm)
    obj = load_checked(path, key)
    if obj is not None:
        module.net.load_state_dict(obj["state_dict"])
        info = {k: v for k, v in obj["meta"].items() if k != "key"}
        info["cached"] = True
        log.info(
            "base classifier from cache %s (test acc %.4f)",
            path,
            info.get("test_acc", float("nan")),
        )
    elif not train_if_missing:
        raise FileNotFoundError(
            f"no cached base classifier at {path}; run `python train.py` with the same dataset/model/seed first"
        )
    else:
        log.info("training base classifier -> %s", path)
        info = {**_train_base(cfg, dm, module, path), "cached": False}
    info["path"] = str(path)
    return freeze(module.net), info


EXPLAINER_META_KEYS = ("name", "learned", "max_epochs", "paper_hparams", "module")


def explainer_name(cfg: DictConfig) -> str:
    """The explainer's config name (``explainer=<name>``)."""
    name = cfg.explainer.get("name")
    if name:
        return str(name)
    from hydra.core.hydra_config import HydraConfig

    return str(HydraConfig.get().runtime.choices.get("explainer"))


def build_explainer(cfg: DictConfig, name: str | None = None):
    """A post-hoc explainer: ``cfg.explainer`` instantiated, or (for ``compare_with``)
    the registered ``name`` with its default arguments."""
    if name is not None:
        from xaibench.explainers import get_explainer

        return get_explainer(name)
    ex = OmegaConf.to_container(cfg.explainer, resolve=True)
    for k in EXPLAINER_META_KEYS:
        ex.pop(k, None)  # type: ignore[union-attr]
    return instantiate(ex)


def build_metrics(cfg: DictConfig) -> dict[str, Any]:
    """Entry name → metric partial from the selected ``metric`` config files."""
    entries = cfg.get("metric") or {}
    return {k: instantiate(v) for k, v in entries.items()}


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """Instantiate ``cfg.callbacks`` (checkpointing and early stopping of the explainer stage)."""
    return [
        instantiate(c)
        for c in (cfg.get("callbacks") or {}).values()
        if c is not None and "_target_" in c
    ]


def train_learned_explainer(
    cfg: DictConfig, dm: XaiDataModule, net: nn.Module, out: Path
) -> pl.LightningModule:
    """Fit the learned explainer's module, select the best head by validation MSI, save it."""
    module = instantiate(cfg.explainer.module, net=net, image_size=dm.image_size)
    callbacks = build_callbacks(cfg)
    trainer = build_trainer(
        cfg,
        max_epochs=int(cfg.explainer.max_epochs),
        callbacks=callbacks,
        logger=build_loggers(cfg),
    )
    resume = cfg.get("ckpt_path")
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    if trainer.interrupted:
        raise KeyboardInterrupt(
            f"explainer training interrupted; resume with ckpt_path={out / 'checkpoints' / 'last.ckpt'}"
        )
    ckpt = next((c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint)), None)
    best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
    if best:
        module.load_head(best)
        log.info("selected %s (val/msi %.4f)", best, float(ckpt.best_model_score))
    info = {
        "best_checkpoint": best,
        "val_msi_best": float(ckpt.best_model_score) if best else None,
        "epochs": trainer.current_epoch,
        "head": str(out / f"{explainer_name(cfg)}_head.pt"),
    }
    module.save_head(info["head"], info)
    module.training_info = info
    return module


def evaluate(
    cfg: DictConfig, dm: XaiDataModule, module: pl.LightningModule, method: str, out: Path
) -> dict[str, Any]:
    """Test-stage evaluation of one explainer with ``cfg.metric``; returns per-column statistics."""
    cb = EvaluationCallback(build_metrics(cfg), out, method, seed=int(cfg.seed))
    trainer = build_trainer(cfg, callbacks=[cb], logger=False, enable_checkpointing=False)
    trainer.test(module, datamodule=dm, verbose=False)
    return cb.summary


def write_json(obj: Any, path: Path) -> None:
    """Pretty JSON (atomic enough for run outputs: written once per run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def summary_head(cfg: DictConfig, name: str, base: dict[str, Any], out: Path) -> dict[str, Any]:
    """The fields every ``summary.json`` starts with."""
    return {
        "dataset": cfg.dataset.name,
        "explainer": name,
        "seed": int(cfg.seed),
        "base_classifier": base,
        "output_dir": str(out),
    }


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one row of a table; returns the summary dict (also written to ``summary.json``)."""
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    out = Path(cfg.paths.output_dir)
    dm = build_datamodule(cfg)
    dm.setup()  # a missing dataset fails here, before any training
    write_json(dm.split_info(), out / "split.json")
    net, base = base_classifier(cfg, dm)
    name = explainer_name(cfg)
    summary = summary_head(cfg, name, base, out)
    log.info(
        "base classifier test accuracy %.4f (%s)",
        base["test_acc"],
        "cached" if base["cached"] else "trained",
    )
    if name != "none":
        summary["test"] = run_explainers(cfg, dm, net, name, out, summary)
    write_json(summary, out / "summary.json")
    return summary


def evaluate_only(cfg: DictConfig) -> dict[str, Any]:
    """What ``eval.py`` runs: the cached base classifier (never trained here), the explainer
    (a learned one loaded from ``cfg.ckpt_path``), the test-set evaluation."""
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    out = Path(cfg.paths.output_dir)
    name = explainer_name(cfg)
    if name == "none":
        raise ValueError(
            "eval.py needs an explainer, e.g. `python eval.py explainer=gradcam` or `explainer=lax ckpt_path=...`"
        )
    dm = build_datamodule(cfg)
    dm.setup()
    net, base = base_classifier(cfg, dm, train_if_missing=False)
    if cfg.explainer.get("learned"):
        if not cfg.get("ckpt_path"):
            raise ValueError(
                f"explainer={name} is learned: give its head checkpoint, e.g. ckpt_path=outputs/.../{name}_head.pt"
            )
        path = Path(cfg.ckpt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={path} does not exist")
        module = instantiate(cfg.explainer.module, net=net, image_size=dm.image_size)
        module.load_head(path)
    else:
        module = ExplainerTestModule(net, build_explainer(cfg))
    summary = summary_head(cfg, name, base, out)
    summary["test"] = {name: evaluate(cfg, dm, module, name, out)}  # also writes table.*
    write_json(summary, out / "summary.json")
    return summary


def run_explainers(
    cfg: DictConfig,
    dm: XaiDataModule,
    net: nn.Module,
    name: str,
    out: Path,
    summary: dict[str, Any],
) -> dict[str, Any]:
    """Train (if learned) and evaluate the explainer, then each ``compare_with`` baseline on the same test set.

    Writes the combined ``table.{md,csv,tex}`` in ``out`` (one row per method);
    returns ``{method: {column: {mean, ci_low, ci_high, n, n_nan}}}`` and adds
    ``explainer_training`` (best validation MSI, head path) to ``summary``.
    """
    if cfg.explainer.get("learned"):
        module = train_learned_explainer(cfg, dm, net, out)
        summary["explainer_training"] = module.training_info
        write_json(
            summary, out / "summary.json"
        )  # the trained head is on record even if evaluation fails
    else:
        module = ExplainerTestModule(net, build_explainer(cfg))
    results = {name: evaluate(cfg, dm, module, name, out)}
    modules = {name: module}
    for other in cfg.get("compare_with") or []:
        if other == name:
            continue
        modules[other] = ExplainerTestModule(net, build_explainer(cfg, other))
        results[other] = evaluate(cfg, dm, modules[other], other, out / "compare" / other)
    columns = list(next(iter(results.values())))
    write_tables(out, [{"name": k, "summary": v} for k, v in results.items()], columns)
    if len(modules) > 1:  # side-by-side overlays of every method on the same images
        b = unpack_batch(next(iter(dm.test_dataloader())))
        k = 8
        maps = {
            m: mod.test_step((b.images[:k], b.labels[:k], b.index[:k]), 0)["heatmaps"]
            for m, mod in modules.items()
        }
        save_overlays(out / "figures" / "overlays_compare.png", b.images[:k], maps, b.labels[:k])
    for m, res in results.items():
        cols = ", ".join(
            f"{c} {res[c]['mean']:.3f}" for c in ("msi", "base_score", "mask_penalty") if c in res
        )
        log.info("%s: %s", m, cols)
    return results


USER_ERRORS = (FileNotFoundError, ValueError, TypeError)


def run_guarded(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point's job: a user error (missing data, bad value) is one clear
    message and exit status 1, not a traceback (``HYDRA_FULL_ERROR=1`` shows it);
    an open W&B run is finished whatever happens, so a multirun leaves nothing open."""
    try:
        return fn(cfg)
    except USER_ERRORS as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if "wandb" in sys.modules and getattr(sys.modules["wandb"], "run", None) is not None:
            sys.modules["wandb"].finish()


def lookup_metric(summary: dict[str, Any], key: str) -> float:
    """``summary["a"]["b"]`` for ``key="a.b"`` (the value a sweeper optimises)."""
    node: Any = summary
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(
                f"optimized_metric={key!r} is not in the run summary; top-level keys: {sorted(summary)}"
            )
        node = node[part]
    return float(node)
