"""Resumable, shardable evaluation: the test set in fixed ranges, each saved once.

An evaluation splits the test set into consecutive ranges of
``evaluation.shard_size`` samples. Each range's rows are saved atomically to
``<cache_dir>/eval/<dataset>-<method>-<key hash>/<start>-<stop>.pt`` as soon as
it is scored, keyed by everything that determines them: the method's resolved
config and (for a trained explainer) a digest of its weights, the metric
entries' config, the base classifier, the test split's sample ids, the seed and
a digest of xaibench's own source. So:

- an interrupted evaluation rerun with the same command skips the finished
  ranges and ends with the rows of an uninterrupted run;
- ``evaluation.shard=i/n`` scores only ranges ``i, i+n, i+2n, ...``: independent
  jobs (a submitit array) split one test set, and the same command without
  ``evaluation.shard`` merges them into the one table (computing what is missing);
- a changed config, weight or source file never reuses a stale range.

A ``trainer.fast_dev_run`` scores one batch per range: its ranges go to
``<output_dir>/eval_shards/`` (kept with that run, never in the shared cache).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from xaibench.data.cache import config_hash
from xaibench.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[1]


def parse_selection(spec: Any) -> tuple[int, int] | None:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``; ``None`` for no selection."""
    if spec is None or spec == "":
        return None
    parts = str(spec).split("/")
    try:
        i, n = int(parts[0]), int(parts[1])
        ok = len(parts) == 2 and n >= 1 and 0 <= i < n
    except (ValueError, IndexError):
        ok = False
    if not ok:
        raise ConfigError(f"evaluation.shard={spec!r} must be 'i/n' with 0 <= i < n, e.g. 0/4")
    return i, n


def shard_ranges(n_samples: int, shard_size: Any) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` ranges of ``shard_size`` test samples (the last shorter);
    one range for ``shard_size`` null or 0."""
    if shard_size is None or int(shard_size) == 0:
        return [(0, n_samples)]
    size = int(shard_size)
    if size < 0:
        raise ConfigError(f"evaluation.shard_size={shard_size} must be >= 0 (0: one shard)")
    return [(a, min(a + size, n_samples)) for a in range(0, n_samples, size)]


def source_digest() -> str:
    """sha256 over xaibench's ``.py`` files (path and bytes): a code change voids old shards."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def weights_digest(explainer: Any) -> str | None:
    """sha256 of a trained explainer's weights (``module_state()``); None for a post-hoc one."""
    state = getattr(explainer, "module_state", None)
    if not callable(state) or getattr(explainer, "module", None) is None:
        return None
    h = hashlib.sha256()
    for name, t in sorted(state().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def evaluation_key(
    cfg: DictConfig, name: str, node: DictConfig, explainer: Any, split: dict[str, Any],
    classifier: str,
) -> dict[str, Any]:  # fmt: skip
    """What determines an evaluation's rows (see the module docstring)."""
    return {
        "method": name,
        "explainer": OmegaConf.to_container(node, resolve=True),
        "weights": weights_digest(explainer),
        "metrics": OmegaConf.to_container(cfg.metric, resolve=True),
        "classifier": classifier,
        "test": split,
        "seed": int(cfg.seed),
        "limit_test_batches": (cfg.get("trainer") or {}).get("limit_test_batches"),
        "fast_dev_run": (cfg.get("trainer") or {}).get("fast_dev_run"),
        "source": source_digest(),
    }


def shard_folder(cfg: DictConfig, name: str, key: dict[str, Any]) -> Path:
    """``<cache_dir>/eval/<dataset>-<method>-<hash of key>/`` (``<output_dir>/eval_shards/...``
    under ``trainer.fast_dev_run``: one batch per range is a smoke test, not a result to keep)."""
    base = Path(cfg.paths.cache_dir) / "eval"
    if (cfg.get("trainer") or {}).get("fast_dev_run"):
        base = Path(cfg.paths.output_dir) / "eval_shards"
    return base / f"{cfg.dataset.name}-{name}-{config_hash(key)}"


def shard_path(folder: Path, start: int, stop: int) -> Path:
    return folder / f"{start:07d}-{stop:07d}.pt"
