"""Atomic, hash-keyed tensor caches (generated data, base checkpoints) and the
hashes that key them (configs, file contents).

Writes go to a temp file in the same folder and are renamed into place, so an
interrupted write never leaves a half file under the final name. Loads use
``torch.load(weights_only=True)``; a corrupt or stale file is reported with a
warning and rebuilt, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-serialisable object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


_SHA256_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes, memoized per (path, size, mtime_ns) in this process.

    Repeated calls (every ``cache_key()``) hash a file once; a rewritten file
    gets a new size or mtime and is hashed again.
    """
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _SHA256_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA256_MEMO[memo] = h.hexdigest()
    return _SHA256_MEMO[memo]


def normalize_key(key: Any) -> Any:
    """The JSON form of a cache key (tuples become lists), as stored in ``meta.key``."""
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` via a temp file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checked(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """Load a cache file written by :func:`cached`; ``None`` (with a warning) if corrupt or stale."""
    if not path.exists():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or unsafe content
        warnings.warn(
            f"cache {path} is unreadable ({type(e).__name__}: {e}); rebuilding it", stacklevel=2
        )
        return None
    stored = obj.get("meta", {}).get("key") if isinstance(obj, dict) else None
    if stored != normalize_key(key):
        warnings.warn(f"cache {path} was built from another config; rebuilding it", stacklevel=2)
        return None
    return obj


def cached(path: Path, key: dict[str, Any], build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Return the cache at ``path`` if valid for ``key``, else ``build()``, save and return it.

    ``build`` returns a dict of tensors/plain values; ``meta.key`` is added.
    """
    obj = load_checked(path, key)
    if obj is not None:
        return obj
    obj = build()
    obj["meta"] = {**obj.get("meta", {}), "key": normalize_key(key)}
    atomic_save(obj, path)
    return obj
