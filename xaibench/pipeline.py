"""What ``train.py`` and ``eval.py`` run: data → cached base classifier → explainers → evaluation.

One path for every component: the datamodule, the explainers (the main one
and each ``compare_with``), the metric entries, trainer, loggers and
callbacks are instantiated from their configs by :mod:`xaibench.build`; an
explainer that has a ``fit`` step (a learned one) gets it called, whatever
its name. Before any training, :func:`xaibench.preflight.preflight` calls
every explainer and metric once, so a bad value fails in seconds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn

from xaibench.build import (
    build_callbacks,
    build_datamodule,
    build_explainer,
    build_loggers,
    build_metrics,
    build_study,
    build_trainer,
    check_launch,
    explainer_configs,
)
from xaibench.data import XaiDataModule, unpack_batch
from xaibench.data.cache import atomic_save, config_hash, load_checked, normalize_key
from xaibench.data.determinism import EpochReseed
from xaibench.errors import USER_ERRORS, ConfigError
from xaibench.eval import EvaluationCallback, ExplainerTestModule, save_overlays, write_tables
from xaibench.eval.aggregate import write_ranks
from xaibench.eval.callback import EvaluationResult
from xaibench.eval.fast import FastFlags, evaluation_flag
from xaibench.eval.reference import check_paper_reference, write_paper_comparison
from xaibench.eval.results import merge_rows, write_evaluation
from xaibench.eval.shards import (
    evaluation_key,
    parse_selection,
    shard_folder,
    shard_path,
    shard_ranges,
)
from xaibench.eval.wandb_log import log_results
from xaibench.preflight import preflight

log = logging.getLogger(__name__)

__all__ = [
    "base_checkpoint_path",
    "base_classifier",
    "build_datamodule",
    "evaluate_only",
    "lookup_metric",
    "run_guarded",
    "train",
]


# -- the base classifier -------------------------------------------------------------------
def base_cache_key(cfg: DictConfig, dm: XaiDataModule) -> dict[str, Any]:
    """What determines the base classifier: data (content fingerprint), model config
    (training hparams included), seed."""
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


@contextmanager
def resume_hint(trainer: pl.Trainer, message: str) -> Iterator[None]:
    """Log ``message`` when ``trainer``'s fit is interrupted (Ctrl-C), then let the exit through.

    Lightning catches ``KeyboardInterrupt`` inside ``fit`` and exits the process
    itself (``SystemExit``), so a line after ``fit`` would never run.
    """
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        log.error(message)
        raise
    if trainer.interrupted:
        log.error(message)
        raise KeyboardInterrupt(message)


def _train_base(
    cfg: DictConfig, dm: XaiDataModule, module: pl.LightningModule, path: Path
) -> dict[str, Any]:
    """Train the classifier, resuming from ``<path>.work/last.ckpt`` if an earlier run was interrupted."""
    work = path.with_suffix(".work")
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=work, filename="latest", save_last=True, save_top_k=1, every_n_epochs=1
    )
    trainer = build_trainer(
        cfg,
        max_epochs=module.max_epochs,
        callbacks=[ckpt, EpochReseed(int(cfg.seed))],
        logger=build_loggers(cfg),
    )
    resume = work / "last.ckpt"
    if resume.exists():
        log.info("resuming base classifier training from %s", resume)
    hint = f"base classifier training interrupted; rerun the same command to resume from {resume}"
    with resume_hint(trainer, hint):
        trainer.fit(
            module,
            datamodule=dm,
            ckpt_path=str(resume) if resume.exists() else None,
            weights_only=True,
        )
    test = trainer.test(module, datamodule=dm, verbose=False)
    info = {"test_acc": float(test[0]["test/acc"]), "epochs": module.max_epochs}
    if trainer.fast_dev_run:
        log.warning("fast_dev_run: the base classifier saw one batch and is NOT cached")
        return info
    if trainer.is_global_zero:
        state = {k: v.detach().cpu() for k, v in module.net.state_dict().items()}
        meta = {"key": normalize_key(base_cache_key(cfg, dm)), **info}
        atomic_save({"state_dict": state, "meta": meta}, path)
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
    module = instantiate(cfg.model)
    path = base_checkpoint_path(cfg, dm)
    obj = load_checked(path, base_cache_key(cfg, dm))
    if obj is not None:
        module.net.load_state_dict(obj["state_dict"])
        info = {k: v for k, v in obj["meta"].items() if k != "key"}
        info["cached"] = True
        log.info("base classifier from cache %s (test acc %.4f)", path, info["test_acc"])
    elif not train_if_missing:
        raise ConfigError(
            f"no cached base classifier at {path}; run `python train.py` with the same "
            "dataset/model/seed first"
        )
    else:
        log.info("training base classifier -> %s", path)
        info = {**_train_base(cfg, dm, module, path), "cached": False}
    info["path"] = str(path)
    return freeze(module.net), info


# -- explainers and evaluation ---------------------------------------------------------------
def prepare_explainer(
    explainer: Any,
    name: str,
    cfg: DictConfig,
    dm: XaiDataModule,
    net: nn.Module,
    out: Path,
    *,
    train: bool,
    ckpt_path: str | None = None,
) -> dict[str, Any] | None:
    """Train (``train.py``) or load (``eval.py``) an explainer that has a ``fit`` step.

    ``ckpt_path``: a Lightning checkpoint to resume training from (train), or
    the trained weights to load (eval). Returns the training record for
    ``summary.json``, or ``None`` for an explainer without ``fit`` (post-hoc).
    """
    if not callable(getattr(explainer, "fit", None)):
        return None
    if not train:
        return _load_weights(explainer, name, dm, net, ckpt_path)
    callbacks = [*build_callbacks(cfg, out / "checkpoints"), EpochReseed(int(cfg.seed))]
    trainer = build_trainer(
        cfg, max_epochs=explainer.max_epochs, callbacks=callbacks, logger=build_loggers(cfg)
    )
    hint = f"{name} training interrupted; resume with ckpt_path={out / 'checkpoints' / 'last.ckpt'}"
    with resume_hint(trainer, hint):
        info = explainer.fit(dm, net, trainer, ckpt_path=ckpt_path)
    weights = out / f"{name}.pt"
    if is_rank_zero():  # under strategy=ddp every rank trained the same weights
        explainer.save(weights, info)
    info["weights"] = str(weights)
    write_json(info, out / "explainer_training.json")  # on record even if evaluation fails
    return info


def _load_weights(
    explainer: Any, name: str, dm: XaiDataModule, net: nn.Module, ckpt: str | None
) -> dict[str, Any]:
    """``eval.py``: the main trained explainer's weights from ``ckpt_path``."""
    if not ckpt:
        raise ConfigError(
            f"explainer {name!r} is trained: give its weights, e.g. "
            f"`python eval.py explainer={name} ckpt_path=outputs/.../{name}.pt`; a compared "
            "trained explainer cannot be loaded here (make it the main explainer)"
        )
    explainer.attach(net, dm.image_size)
    explainer.load(ckpt)
    return {"weights": str(ckpt)}


def evaluated_count(cfg: DictConfig, dm: XaiDataModule) -> int:
    """How many test samples an evaluation scores: the first ``evaluation.n_test`` of the
    test split, at most all of it (``null``: all). Smaller than the split, it evaluates a prefix without
    changing the dataset config, so the cached base classifier is reused."""
    total = len(dm.splits["test"])
    n = (cfg.get("evaluation") or {}).get("n_test")
    if n is None:
        return total
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"evaluation.n_test={n!r} must be null or a positive integer")
    if n > total:
        log.warning("evaluation.n_test=%d: %s has %d test samples, all scored", n, dm.name, total)
    return min(n, total)


def evaluate(
    cfg: DictConfig,
    dm: XaiDataModule,
    net: nn.Module,
    explainer: Any,
    name: str,
    out: Path,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Test-set evaluation of one explainer with the run's metric entries; writes into ``out``.

    Resumable and shardable (:mod:`xaibench.eval.shards`): each range of
    ``evaluation.shard_size`` test samples is scored once and saved; ranges already
    saved for the same key are read back. With ``evaluation.shard=i/n`` only this
    job's ranges are scored and, unless every range exists, nothing is written.

    The metrics' forward passes follow ``evaluation.share_forward`` (each distinct
    perturbed input once per batch) and the fast-forward flags ``evaluation.channels_last``,
    ``compile`` and ``autocast`` (:class:`~xaibench.eval.fast.FastFlags`); they are part
    of the ranges' key.

    Returns an :class:`~xaibench.eval.callback.EvaluationResult`: ``{column: {mean, ci_low,
    ci_high, n, n_nan, ...}}`` (``{}`` on ranks > 0 and for a partial sharded job), with
    ``.run["forwards"]`` (the forward counts of the ranges scored in this process) and,
    with a fast-forward flag, ``.run["fast_forward"]`` (its check on the first batch).
    """
    ev = cfg.get("evaluation") or {}
    selection = parse_selection(ev.get("shard"))
    fast = FastFlags.from_config(ev)
    share = evaluation_flag(ev, "share_forward", True)
    key = evaluation_key(
        cfg, name, explainer_configs(cfg)[name], explainer, dm.split_info()["test"],
        base_checkpoint_path(cfg, dm).name,
    )  # fmt: skip
    key["forward"] = {"share_forward": share, **fast.as_dict()}  # fast flags may move values
    n_test = evaluated_count(cfg, dm)
    key["n_test"] = n_test  # a prefix is its own evaluation (its last range is shorter)
    folder = shard_folder(cfg, name, key)
    ranges = shard_ranges(n_test, ev.get("shard_size"))
    mine = [
        r for k, r in enumerate(ranges) if selection is None or k % selection[1] == selection[0]
    ]
    module = ExplainerTestModule(net, explainer)
    # one callback for every range: its forward counts add up, its fast copy is built once
    cb = EvaluationCallback(metrics, out, name, seed=int(cfg.seed), share_forward=share, fast=fast)
    for start, stop in mine:
        path = shard_path(folder, start, stop)
        if load_checked(path, {**key, "range": [start, stop]}) is not None:
            log.info("%s: test samples %d-%d already scored (%s)", name, start, stop - 1, path)
            continue
        cb.for_shard(path, {**key, "range": [start, stop]})
        trainer = build_trainer(cfg, callbacks=[cb], logger=False, enable_checkpointing=False)
        fast.check_device(trainer.strategy.root_device)  # bf16 autocast on CPU: fail before scoring
        # the loader is built from the datamodule where the test runs (in each worker
        # under ddp_spawn: a loader built here and pickled fails there after a spawned fit)
        dm.test_rows = range(start, stop)
        try:
            trainer.test(module, datamodule=dm, verbose=False)
        finally:
            dm.test_rows = None
    run = {"forwards": cb.forward_stats.as_dict()}
    if cb.fast_check is not None:
        run["fast_forward"] = cb.fast_check
    if not is_rank_zero():
        return EvaluationResult(run=run)
    parts = [load_checked(shard_path(folder, a, b), {**key, "range": [a, b]}) for a, b in ranges]
    if any(p is None for p in parts):
        done = sum(p is not None for p in parts)
        log.info(
            "%s: %d of %d test ranges scored in %s; run the command without evaluation.shard "
            "to score the rest and write the table",
            name, done, len(ranges), folder,
        )  # fmt: skip
        return EvaluationResult(run=run)
    return EvaluationResult(write_evaluation(out, name, merge_rows(parts), seed=int(cfg.seed)), run)


def run_methods(
    cfg: DictConfig,
    dm: XaiDataModule,
    net: nn.Module,
    explainers: dict[str, Any],
    metrics: dict[str, Any],
    out: Path,
    summary: dict[str, Any],
    *,
    train: bool,
) -> None:
    """Prepare and evaluate every method on the same test set; the main one writes into
    ``out``, each ``compare_with`` one into ``out/compare/<name>``; then the combined
    ``table.{md,csv,tex}`` (one row per method) and the side-by-side overlays."""
    results: dict[str, Any] = {}
    for i, (name, explainer) in enumerate(explainers.items()):
        where = out if i == 0 else out / "compare" / name
        ckpt = cfg.get("ckpt_path") if i == 0 else None  # ckpt_path belongs to the main method
        record = prepare_explainer(
            explainer, name, cfg, dm, net, where, train=train, ckpt_path=ckpt
        )
        if record is not None:
            summary.setdefault("explainer_training", {})[name] = record
            write_json(summary, out / "summary.json")
        start = time.perf_counter()
        results[name] = evaluate(cfg, dm, net, explainer, name, where, metrics)
        seconds, n = time.perf_counter() - start, evaluated_count(cfg, dm)
        summary.setdefault("timing", {})[name] = {
            "evaluation_s": round(seconds, 3),
            "test_images": n,
            "images_per_s": round(n / seconds, 3),
            **getattr(results[name], "run", {}),  # forward counts, the fast-forward check
        }
    summary["test"] = results
    if not is_rank_zero() or not all(results.values()):
        return  # strategy=ddp rank > 0, or a job of evaluation.shard=i/n: no tables here
    columns = list(dict.fromkeys(c for res in results.values() for c in res))
    rows = [{"name": k, "summary": v} for k, v in results.items()]
    write_tables(out, rows, columns)
    if len(rows) > 1:  # each method's rank per column and mean rank per metric entry
        write_ranks(out, rows, columns)
    if cfg.get("paper_reference"):
        summary["paper_comparison"] = write_paper_comparison(out, results, cfg.paper_reference)
    if len(explainers) > 1:
        save_comparison(dm, net, explainers, out / "figures" / "overlays_compare.png")
    for name, res in results.items():
        shown = ("msi", "base_score", "mask_penalty")
        log.info("%s: %s", name, ", ".join(f"{c} {res[c]['mean']:.3f}" for c in shown if c in res))


def save_comparison(
    dm: XaiDataModule, net: nn.Module, explainers: dict[str, Any], path: Path, k: int = 8
) -> None:
    """Every method's heatmaps on the first ``k`` test images, side by side."""
    b = unpack_batch(next(iter(dm.test_dataloader())))
    device = next(net.parameters()).device
    images, labels = b.images[:k].to(device), b.labels[:k].to(device)
    maps = {name: ex(net, images, labels).cpu() for name, ex in explainers.items()}
    save_overlays(path, images.cpu(), maps, labels.cpu())


# -- the two entry points ------------------------------------------------------------------
def setup_run(
    cfg: DictConfig,
) -> tuple[XaiDataModule, dict[str, Any], dict[str, Any], Path]:
    """Seed, find the data, build and preflight every explainer and metric entry.

    Returns the datamodule (set up), the explainers by method name, the metric entries
    (built once, used for every method) and the output folder.
    """
    check_launch(cfg)
    FastFlags.from_config(cfg.get("evaluation"))  # a typo fails before any training
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    out = Path(cfg.paths.output_dir)
    dm = build_datamodule(cfg)
    dm.setup()  # a missing or malformed dataset fails here
    evaluated_count(cfg, dm)  # a bad evaluation.n_test fails before any training
    with torch.random.fork_rng(devices=[]):  # the checks draw nothing from the run's seed
        explainers = {n: build_explainer(node, n) for n, node in explainer_configs(cfg).items()}
        metrics = build_metrics(cfg) if explainers else {}
        if cfg.get("paper_reference") and explainers:  # a typo fails before training
            check_paper_reference(cfg.paper_reference, metrics, explainers)
        first = unpack_batch([torch.as_tensor(t).unsqueeze(0) for t in dm.splits["test"][0]])
        preflight(
            freeze(instantiate(cfg.model).net),
            (first.images, first.labels, first.index, first.masks),
            explainers,
            metrics,
            image_size=dm.image_size,
            writable={"paths.output_dir": out, "paths.cache_dir": Path(cfg.paths.cache_dir)},
        )
    return dm, explainers, metrics, out


def run_study(cfg: DictConfig) -> dict[str, Any]:
    """A study experiment (``cfg.study``: a ``_partial_`` callable ``(cfg) -> summary``)
    instead of the explainer pipeline, e.g. ``experiment=qge_tabular``. It writes its own
    tables and figures into ``paths.output_dir``; its summary goes to ``summary.json``."""
    out = Path(cfg.paths.output_dir)
    study = build_study(cfg)
    summary = {"study": cfg.study.get("_target_"), "seed": int(cfg.seed), **study(cfg)}
    write_json(summary, out / "summary.json")
    return summary


def train(cfg: DictConfig) -> dict[str, Any]:
    """One row of a table per method: the classifier (cached), each explainer trained if it
    has a ``fit`` step, then evaluated. Returns the summary (also ``summary.json``).
    A config with ``study`` set runs that study instead (:func:`run_study`)."""
    if cfg.get("study"):
        return run_study(cfg)
    dm, explainers, metrics, out = setup_run(cfg)
    write_json(dm.split_info(), out / "split.json")
    net, base = base_classifier(cfg, dm)
    log.info(
        "base classifier test accuracy %.4f (%s)",
        base["test_acc"],
        "cached" if base["cached"] else "trained",
    )
    summary = summary_head(cfg, next(iter(explainers), "none"), base, out)
    if explainers:
        run_methods(cfg, dm, net, explainers, metrics, out, summary, train=True)
    write_json(summary, out / "summary.json")
    log_results(cfg, out, summary)
    return summary


def evaluate_only(cfg: DictConfig) -> dict[str, Any]:
    """``eval.py``: the cached base classifier (never trained here), the explainers (a trained
    main explainer loaded from ``ckpt_path``), the test-set evaluation and tables.
    A config with ``study`` set runs that study instead (:func:`run_study`)."""
    if cfg.get("study"):
        return run_study(cfg)
    if "_target_" not in (cfg.get("explainer") or {}):
        raise ConfigError(
            "eval.py needs an explainer, e.g. `python eval.py explainer=gradcam` or "
            "`explainer=lax ckpt_path=...`"
        )
    dm, explainers, metrics, out = setup_run(cfg)
    net, base = base_classifier(cfg, dm, train_if_missing=False)
    summary = summary_head(cfg, next(iter(explainers)), base, out)
    run_methods(cfg, dm, net, explainers, metrics, out, summary, train=False)
    write_json(summary, out / "summary.json")
    log_results(cfg, out, summary)
    return summary


def summary_head(cfg: DictConfig, name: str, base: dict[str, Any], out: Path) -> dict[str, Any]:
    """The fields every ``summary.json`` starts with."""
    return {
        "dataset": cfg.dataset.name,
        "explainer": name,
        "compare_with": list(cfg.get("compare_with") or []),
        "seed": int(cfg.seed),
        "base_classifier": base,
        "output_dir": str(out),
    }


def is_rank_zero() -> bool:
    """False in the processes of ranks > 0 of a ``strategy=ddp`` run (they write nothing)."""
    return rank_zero_only.rank == 0


def write_json(obj: Any, path: Path) -> None:
    """Pretty JSON, written to a temp file and renamed (never half-written); rank 0 only."""
    if not is_rank_zero():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def run_guarded(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point's job. A user error (missing data, a bad config value) is one
    clear message and exit status 1 (``HYDRA_FULL_ERROR=1`` shows the traceback); any
    other error is a bug and keeps its traceback. An open W&B run is finished whatever
    happens, so a multirun leaves nothing open."""
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
            raise ConfigError(
                f"optimized_metric={key!r} is not in the run summary; top-level keys: {sorted(summary)}"
            )
        node = node[part]
    return float(node)
