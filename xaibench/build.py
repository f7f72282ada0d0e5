"""Everything a run is made of, instantiated from its config (``_target_``), nothing by name.

The pipeline asks this module for the datamodule, trainer, loggers,
callbacks, metric entries and explainers; none of them is special-cased. The
explainers of a run are the main one (``explainer=<name>``) and every
``compare_with`` name, each composed from its own ``configs/explainer/<name>.yaml``
so its settings apply.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from xaibench.errors import ConfigError

# dataset-config keys that describe the data (read by other configs), not datamodule arguments
DATASET_META_KEYS = ("name", "stem", "alpha_min", "hparams")


def build_datamodule(cfg: DictConfig):
    """Instantiate ``cfg.dataset`` (minus its metadata keys) as an ``XaiDataModule``."""
    ds = OmegaConf.to_container(cfg.dataset, resolve=True)
    for k in DATASET_META_KEYS:
        ds.pop(k, None)  # type: ignore[union-attr]
    return _instantiate(ds, f"dataset={cfg.dataset.get('name')}")


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


def check_launch(cfg: DictConfig) -> None:
    """Refuse a Hydra multirun with ``strategy=ddp`` on several devices: Lightning relaunches
    the script once per rank, which would rerun the whole sweep in every rank."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # no Hydra app (a notebook, a test)
        return
    t = cfg.get("trainer") or {}
    devices, nodes = t.get("devices", 1), t.get("num_nodes", 1)
    several = devices not in (1, "1", [0]) or (nodes or 1) > 1
    if multirun and str(t.get("strategy", "")) == "ddp" and several:
        raise ConfigError(
            "a multirun (-m) with trainer.strategy=ddp on several devices would rerun the whole "
            "sweep in every rank; use trainer.strategy=ddp_spawn, or hydra/launcher=submitit_slurm "
            "(one job per sweep point, each with its own DDP), or trainer.devices=1"
        )


def build_callbacks(cfg: DictConfig, checkpoint_dir: Path) -> list[pl.Callback]:
    """Instantiate ``cfg.callbacks`` for a learned explainer's training; checkpoints go to
    ``checkpoint_dir`` (one folder per explainer, so compared ones do not mix)."""
    out = []
    for c in (cfg.get("callbacks") or {}).values():
        if c is None or "_target_" not in c:
            continue
        extra = {"dirpath": str(checkpoint_dir)} if "dirpath" in c else {}
        out.append(instantiate(c, **extra))
    return out


def build_metrics(cfg: DictConfig) -> dict[str, Any]:
    """Entry name → metric partial, from every file selected in the ``metric`` group."""
    entries = cfg.get("metric") or {}
    if not entries:
        raise ConfigError("metric= selects no metric entry; e.g. metric=[paper,localization]")
    return {k: _instantiate(v, f"metric entry {k!r}") for k, v in entries.items()}


def build_study(cfg: DictConfig) -> Any:
    """``cfg.study`` as a callable ``(cfg) -> summary dict`` (a ``_partial_`` config)."""
    fn = _instantiate(cfg.study, "study")
    if not callable(fn):
        raise ConfigError(
            f"study: {cfg.study.get('_target_')} is not callable; set _partial_: true"
        )
    return fn


def config_dir() -> Path:
    """The primary config folder of this run (Hydra's, else ``$XAIBENCH_ROOT/configs``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        for src in HydraConfig.get().runtime.config_sources:
            if src.provider == "main" and src.schema == "file":
                return Path(src.path)
    except ValueError:  # no Hydra app running (a notebook, a test)
        pass
    return Path(os.environ.get("XAIBENCH_ROOT", ".")) / "configs"


def explainer_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """Method name → its explainer config (resolved in the run's context).

    The main explainer first (``cfg.explainer``; with ``explainer=none``, whose
    config has no ``_target_``, there are none at all), then each ``compare_with`` name
    loaded from ``configs/explainer/<name>.yaml``. The name is the file's
    (the registry name of its class). ``explainer_settings.<name>`` (e.g.
    ``explainer_settings.lime.n_samples=50``) is merged over that method's config.
    """
    out: dict[str, DictConfig] = {}
    if "_target_" not in (cfg.get("explainer") or {}):
        return out  # explainer=none: the classifier only, whatever compare_with says
    main = _registered_name(cfg.explainer)
    out[main] = _with_settings(cfg, main, cfg.explainer, keep=_command_line_keys())
    folder = config_dir() / "explainer"
    for name in cfg.get("compare_with") or []:
        if name in out:
            continue
        path = folder / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in folder.glob("*.yaml") if p.stem != "none")
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"compare_with: no explainer config {path}.{hint} Known: {', '.join(known)}"
            )
        out[name] = _with_settings(cfg, name, OmegaConf.load(path))
    return out


def _with_settings(
    cfg: DictConfig, name: str, node: DictConfig, keep: frozenset[str] = frozenset()
) -> DictConfig:
    """``node`` with ``cfg.explainer_settings[name]`` merged over it, resolved in the run's
    context. Per-method settings that apply whichever role the method has: the main
    explainer, a ``compare_with`` row, or one point of a sweep over ``explainer=``.
    Keys in ``keep`` (set on the command line as ``explainer.<key>=``) are not overridden."""
    extra = (cfg.get("explainer_settings") or {}).get(name) or {}
    extra = {k: v for k, v in extra.items() if k not in keep}
    return _in_context(cfg, OmegaConf.merge(node, extra) if extra else node)


def _command_line_keys() -> frozenset[str]:
    """Top-level explainer keys the command line sets (``explainer.optimizer.lr=`` → optimizer)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = HydraConfig.get().overrides.task
    except ValueError:  # no Hydra app
        return frozenset()
    keys = (o.split("=", 1)[0].lstrip("+~") for o in task)
    return frozenset(k.split(".")[1] for k in keys if k.startswith("explainer."))


def build_explainer(node: DictConfig, name: str):
    """Instantiate one explainer config; a bad value is a ``ConfigError`` naming the file."""
    return _instantiate(node, f"explainer {name!r} (configs/explainer/{name}.yaml)")


def _registered_name(node: DictConfig) -> str:
    """The registry name of the class an explainer config targets."""
    from hydra.utils import get_class

    try:
        return str(get_class(node._target_).name)
    except Exception as e:  # a mistyped _target_
        raise ConfigError(f"explainer _target_={node._target_!r} cannot be imported: {e}") from e


def _in_context(cfg: DictConfig, node: DictConfig) -> DictConfig:
    """``node`` as ``cfg.explainer``, so its interpolations (``${dataset...}``) resolve, resolved."""
    merged = cfg.copy()
    with open_dict(merged):
        merged.explainer = node
    return OmegaConf.create(OmegaConf.to_container(merged.explainer, resolve=True))


def _instantiate(node: Any, what: str) -> Any:
    """``instantiate(node)``; a bad argument or value is a ``ConfigError`` that says where."""
    try:
        return instantiate(node)
    except InstantiationException as e:
        cause = e.__cause__
        if cause is None or isinstance(cause, (TypeError, ValueError, ImportError)):
            raise ConfigError(f"{what}: {_plain(cause or e)}") from e
        raise  # an error inside a constructor that is not about its arguments: a bug
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what}: {_plain(e)}") from e


def _plain(e: BaseException) -> str:
    """The message of an error raised inside a constructor, without Hydra's wrapping."""
    return str(e).replace("\n", " ").strip()
