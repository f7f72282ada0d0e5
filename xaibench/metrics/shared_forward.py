"""One forward pass per distinct input row across all metric entries of a batch.

Each metric entry plans and forwards its own perturbed inputs, and entries
often forward the same ones: the clean images (every entry's prologue), QGE's
``Q(h)`` (the variants ``paper`` already scored), the fully removed image
(every deletion curve's last point, one tensor for all images with a constant
baseline), the cumulative removals that pixel-flipping-style metrics share.
:class:`SharedForward` wraps the frozen classifier for one batch: every row
of every call is fingerprinted, rows seen before in the batch are answered
from the stored outputs, and only the new distinct rows are forwarded (as one
batch). The metrics are not changed and do not know.

Correctness does not rest on the fingerprint: a stored output is reused only
after the row's bits equal the stored row's bits (``==`` on the raw words, so
``-0.0`` and ``0.0`` are different rows and a NaN row is never reused wrongly).
The fingerprint (:func:`row_keys`) is two 32-bit integer dot products of a
row's mixed raw words with fixed random odd coefficients: exact integer
arithmetic, so a row gets the same key in any batch, chunk and summation
order, at about 3 % of the demo classifier's forward pass (10 ms against
350 ms of CPU time for 256 rows of 3×64×64 on one core).

Only forward passes that cannot need gradients are shared: the call must run
under ``torch.inference_mode()`` (every metric's forward does, see
:func:`~xaibench.metrics.engine.forward_chunks` and
:func:`~xaibench.metrics.checks.prepare_batch`) with every submodule in eval
mode, a single tensor argument and at least two rows; anything else (grad
enabled, plain ``no_grad``, train mode, the one-row class-count probe) goes
straight to the model. Parameters or buffers changed in place (a model
randomisation test) drop everything stored.

Values: a shared row's output is the one computed the first time the row was
forwarded in the batch, possibly among other rows than in entry-by-entry
evaluation. On CPU the demo classifier's per-row logits do not depend on the
batch for batches of 6 rows or more (measured: identical for 6 to 64 rows,
any selection); batches of 1 to 5 rows take other kernels and differ by up to
2.4e-6. Entry-by-entry evaluation has such small batches too (the last chunk of
a call), so equality is exact where both forward a row in a batch of 6 or more.

Memory: the inputs of stored rows (their raw words) plus their outputs, for
one batch only (:meth:`SharedForward.clear`, or leave the ``with`` block).
``max_bytes`` caps the stored inputs; when full, new rows replace the least
recently used ones. Repeats are mostly close together in a run (``qge`` right
after ``paper``; ``positive_perturbation``, ``region_perturbation`` and ``irof``
(deepfaith) ask exactly for ``faithfulness_deletion``'s rows; the clean images
in every entry), so a cap well below all distinct rows keeps most of the
sharing. Demo classifier, 200 test images, ``metric=[paper,qge,faithfulness]``,
29.6 % of the requested rows are repeats: with 64 images a batch 1 GiB keeps
29.2 % (measured, ``scripts/bench_shared.py``; 512 MiB: 27.0 %, replayed key
streams) where storing rows only until full would keep 15.0 %; with the
demo's 256 a batch 1 GiB keeps 21.5 % (measured; 2 GiB: 29.1 %, replayed).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

DEFAULT_MAX_BYTES = 1 << 30
"""Stored inputs of one batch at most (1 GiB, about 21,800 rows of 3x64x64); see the module
docstring for what it keeps on the demo."""

_HASH_ELEMENTS = 1 << 24
"""Words per fingerprint chunk (bounds the temporary of the product to 64 MiB)."""


@dataclass
class ForwardStats:
    """Counts of one :class:`SharedForward` (added up across batches with ``+=``).

    Attributes:
        calls: model calls received.
        rows: rows requested by those calls.
        forwarded: rows the wrapped model actually computed.
        passthrough: calls forwarded as they came (gradients, train mode, one row, ...).
        collisions: fingerprint matches whose inputs differed (forwarded, never shared).
        evicted: stored rows replaced by newer ones (``max_bytes`` reached).
        peak_bytes: the most memory the stored rows held at once (inputs, outputs, keys).
    """

    calls: int = 0
    rows: int = 0
    forwarded: int = 0
    passthrough: int = 0
    collisions: int = 0
    evicted: int = 0
    peak_bytes: int = 0

    @property
    def saved(self) -> int:
        """Rows requested but not forwarded."""
        return self.rows - self.forwarded

    def __iadd__(self, other: ForwardStats) -> ForwardStats:
        for key, value in asdict(other).items():
            merged = max if key == "peak_bytes" else int.__add__
            setattr(self, key, merged(getattr(self, key), value))
        return self

    def as_dict(self) -> dict[str, int]:
        """The counts and ``saved``, JSON-able."""
        return {**asdict(self), "saved": self.saved}


@contextmanager
def row_counter(model: nn.Module) -> Iterator[list[int]]:
    """``[rows, calls]`` that ``model`` computes inside the block, counted by a forward
    pre-hook (removed after): an independent count of what :class:`ForwardStats` reports."""
    counts = [0, 0]

    def pre(_: nn.Module, args: tuple) -> None:
        counts[0] += int(args[0].shape[0])
        counts[1] += 1

    handle = model.register_forward_pre_hook(pre)
    try:
        yield counts
    finally:
        handle.remove()


@functools.lru_cache(maxsize=16)
def projection(words: int, device: torch.device) -> Tensor:
    """``(2, words)`` int32 odd random coefficients of the fingerprint (fixed seed)."""
    g = torch.Generator().manual_seed(0x5EED)
    coeffs = torch.randint(-(2**31), 2**31, (2, words), generator=g, dtype=torch.int64)
    return (coeffs | 1).to(device=device, dtype=torch.int32)


def as_words(flat: Tensor) -> Tensor:
    """The raw bits of rows ``(B, F)`` as int32 words ``(B, W)`` (a view when the row's bytes allow)."""
    flat = flat.contiguous()
    if (flat.shape[1] * flat.element_size()) % 4:  # 1- or 2-byte elements: one word each
        return flat.view(torch.uint8 if flat.element_size() == 1 else torch.int16).to(torch.int32)
    return flat.view(torch.int32)


def row_keys(words: Tensor) -> Tensor:
    """Fingerprint ``(B,)`` int64 of each row of ``words (B, W)`` int32.

    Each word is mixed (``w ^ (w >>> 16)``: without it, rows whose words differ
    only in high bits, such as 0.0, 0.5 and 1.0, would differ only in the top
    bits of each product), then two dot products with :func:`projection`'s
    coefficients are taken modulo 2**32 (integer sums: the same key whatever
    the batch or summation order) and packed into one int64.
    """
    n, w = words.shape
    coeffs = projection(w, words.device)
    step = max(1, _HASH_ELEMENTS // max(w, 1))
    parts = []
    for start in range(0, n, step):
        chunk = words[start : start + step]
        mixed = chunk >> 16
        mixed &= 0xFFFF
        mixed ^= chunk  # w ^ (w >>> 16): high bits into low ones (a bijection)
        if mixed.device.type == "cpu":  # integer matmul: wraps modulo 2**32, 5x the loop's speed
            h = (mixed @ coeffs.T).to(torch.int64)
        else:  # no integer matmul on CUDA
            h = torch.stack([(mixed * c).sum(dim=1, dtype=torch.int32) for c in coeffs], 1).long()
        parts.append((h[:, 0] << 32) | (h[:, 1] & 0xFFFFFFFF))
    return torch.cat(parts) if parts else words.new_empty((0,), dtype=torch.int64)


def first_equal_rows(keys: Tensor, words: Tensor) -> Tensor | None:
    """For each row, the first row of the call with its key, ``(n,)`` int64; ``None`` if two
    rows with one key differ (a fingerprint collision inside the call).

    Args:
        keys: ``(n,)`` :func:`row_keys` of ``words``.
        words: ``(n, W)`` :func:`as_words` of the call's rows.
    """
    n = keys.shape[0]
    arange = torch.arange(n, device=keys.device)
    uniq, inv = torch.unique(keys, return_inverse=True)
    rep = torch.full_like(uniq, n).scatter_reduce(0, inv, arange, reduce="amin")[inv]
    dup = (rep != arange).nonzero().squeeze(1)
    if dup.numel() and not bool((words[dup] == words[rep[dup]]).all()):
        return None
    return rep


class _Store:
    """Rows of one input signature: a sorted key index over buffer slots (words, outputs).

    When the buffers are full, new rows replace the least recently used ones
    (reuse is mostly between neighbouring entries: ``paper`` then ``qge``,
    ``faithfulness_deletion`` then ``positive_perturbation``, ``region_perturbation``
    and ``irof``, the clean images in every entry).
    """

    def __init__(self, words: int, device: torch.device) -> None:
        self.row_bytes = 4 * words
        self.keys = torch.empty((0,), dtype=torch.int64, device=device)  # sorted, unique
        self.slots = torch.empty((0,), dtype=torch.int64, device=device)  # key -> buffer slot
        self.words: Tensor | None = None  # (capacity, W) int32
        self.outputs: Tensor | None = None  # (capacity, *out)
        self.used: Tensor | None = None  # (capacity,) int64: call count at the last use
        self.size = 0  # filled slots
        self.clock = 0

    @property
    def capacity(self) -> int:
        return 0 if self.words is None else self.words.shape[0]

    @property
    def nbytes(self) -> int:
        held = [self.keys, self.slots, self.words, self.outputs, self.used]
        return sum(t.numel() * t.element_size() for t in held if t is not None)

    def lookup(self, keys: Tensor, words: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For unique ``keys (U,)`` of the rows ``words[rows]`` (``words (n, W)``): ``(hit, slot, clash)``.

        ``hit`` (U,) bool: stored with equal bits (its output is ``outputs[slot]``,
        now the most recently used); ``clash`` (U,) bool: the key is stored for a
        different row.
        """
        self.clock += 1
        none = torch.zeros_like(keys, dtype=torch.bool)
        if self.size == 0:
            return none, torch.zeros_like(keys), none
        pos = torch.searchsorted(self.keys, keys).clamp(max=self.keys.shape[0] - 1)
        found = self.keys[pos] == keys
        slot = self.slots[pos]
        hit = found.clone()
        idx = found.nonzero().squeeze(1)
        if idx.numel():
            hit[idx] = (self.words[slot[idx]] == words[rows[idx]]).all(dim=1)
            self.used[slot[hit]] = self.clock
        return hit, slot, found & ~hit

    def add(self, keys: Tensor, words: Tensor, outputs: Tensor, max_rows: int) -> int:
        """Store rows whose keys are not stored, in at most ``max_rows`` slots; returns how
        many stored rows were evicted for them (the least recently used)."""
        self._reserve(min(self.size + keys.shape[0], max_rows), max_rows, words, outputs)
        n = min(keys.shape[0], self.capacity)
        if n == 0:
            return 0
        free = torch.arange(self.size, self.capacity, device=keys.device)[:n]
        evict = n - free.shape[0]
        slots = free
        if evict:
            victims = torch.topk(self.used[: self.size], evict, largest=False).indices
            slots = torch.cat([free, victims])
            gone = torch.zeros(self.capacity, dtype=torch.bool, device=keys.device)
            gone[victims] = True
            kept = ~gone[self.slots]
            self.keys, self.slots = self.keys[kept], self.slots[kept]
        if evict == 0:  # appending: contiguous slots, no gather
            self.words[self.size : self.size + n] = words[:n]
            self.outputs[self.size : self.size + n] = outputs[:n]
        else:
            self.words[slots] = words[:n]
            self.outputs[slots] = outputs[:n]
        self.used[slots] = self.clock
        self.size += free.shape[0]
        merged = torch.cat([self.keys, keys[:n]])
        order = merged.argsort()
        self.keys, self.slots = merged[order], torch.cat([self.slots, slots])[order]
        return evict

    def _reserve(self, need: int, max_rows: int, words: Tensor, outputs: Tensor) -> None:
        """Buffers of at least ``need`` slots (the capacity doubles, up to ``max_rows``)."""
        cap = self.capacity
        if need <= cap:
            return
        cap = min(max_rows, max(need, 2 * cap))
        new_words = words.new_empty((cap, words.shape[1]))
        new_out = outputs.new_empty((cap, *outputs.shape[1:]))
        new_used = torch.zeros(cap, dtype=torch.int64, device=words.device)
        if self.words is not None:
            new_words[: self.size] = self.words[: self.size]
            new_out[: self.size] = self.outputs[: self.size]
            new_used[: self.size] = self.used[: self.size]
        self.words, self.outputs, self.used = new_words, new_out, new_used


class SharedForward(nn.Module):
    """The frozen classifier, forwarding each distinct input row once while it lives.

    Use one per batch of an evaluation, around all metric entries::

        with SharedForward(net) as shared:
            for entry, fn in metrics.items():
                results[entry] = fn(shared, images, heatmaps, targets)

    It is an ``nn.Module`` holding ``model`` as its only child: ``parameters()``,
    ``modules()``, :func:`~xaibench.metrics.model_state.eval_mode` and the
    model's hooks work as on the model; other attributes (``model.layer4``)
    are looked up on the model. Shared calls: see the module docstring.

    Args:
        model: the classifier, ``(B, *S) -> (B, *out)`` (logits).
        share: ``False`` forwards every call unchanged and only counts it.
        max_bytes: cap on the stored inputs (raw bytes of the rows); past it, new
            rows replace the least recently used ones.

    Attributes:
        stats: :class:`ForwardStats` since construction.
    """

    def __init__(
        self, model: nn.Module, *, share: bool = True, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        super().__init__()
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative int (bytes), got {max_bytes!r}")
        self.model, self.share, self.max_bytes = model, share, max_bytes
        self.stats = ForwardStats()
        self._stores: dict[tuple, _Store] = {}
        self._state: tuple = ()
        self._unshareable = False

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def __enter__(self) -> SharedForward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()

    def clear(self) -> None:
        """Drop every stored row (the counts stay)."""
        self._stores.clear()

    def extra_repr(self) -> str:
        return f"share={self.share}, max_bytes={self.max_bytes}"

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        n = x.shape[0] if isinstance(x, Tensor) and x.dim() > 0 else 1
        self.stats.calls += 1
        self.stats.rows += n
        if args or kwargs or not self._shareable(x):
            self.stats.passthrough += 1
            return self._direct(x, *args, **kwargs)
        self._check_state()
        return self._shared(x)

    # -- internals -------------------------------------------------------------------------
    def _shareable(self, x: object) -> bool:
        return (
            self.share
            and not self._unshareable
            and isinstance(x, Tensor)
            and x.dim() >= 1
            and x.shape[0] >= 2
            and torch.is_inference_mode_enabled()
            and not any(m.training for m in self.model.modules())
        )

    def _direct(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        self.stats.forwarded += x.shape[0] if isinstance(x, Tensor) and x.dim() > 0 else 1
        return self.model(x, *args, **kwargs)

    def _check_state(self) -> None:
        """Drop the stored rows if a parameter or buffer was replaced or changed in place."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        state = tuple((t.data_ptr(), _version(t)) for t in tensors)
        if state != self._state:
            self.clear()
            self._state = state

    def _shared(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        words = as_words(x.reshape(n, -1))  # (n, W) raw bits of each row
        keys = row_keys(words)
        rep = first_equal_rows(keys, words)
        if rep is None:
            self.stats.collisions += 1  # two different rows of this call share a key
            return self._direct(x)
        firsts = (rep == torch.arange(n, device=x.device)).nonzero().squeeze(1)  # (F,) in order
        signature = (tuple(x.shape[1:]), x.dtype, x.device)
        store = self._stores.get(signature)
        if store is None:
            store = self._stores[signature] = _Store(words.shape[1], x.device)
        hit, slot, clash = store.lookup(keys[firsts], words, firsts)
        self.stats.collisions += int(clash.sum())
        new = (~hit).nonzero().squeeze(1)  # (M,) positions in firsts
        rows = firsts[new]  # (M,) rows to forward, in their order in x
        out_new = None
        if rows.numel():
            out_new = self._direct(x if rows.shape[0] == n else x[rows])
            if not _batched(out_new, rows.shape[0]):
                self._unshareable = True  # not one output row per input row: never share
                return self._direct(x)
        if rows.shape[0] == n:
            out = out_new
        else:
            src = store.outputs if out_new is None else out_new
            out = src.new_empty((n, *src.shape[1:]))
            if out_new is not None:
                out[rows] = out_new
            old = hit.nonzero().squeeze(1)
            if old.numel():
                out[firsts[old]] = store.outputs[slot[old]]
            out = out[rep]  # duplicates take their first row's output
        if out_new is not None:
            keep = (~clash[new]).nonzero().squeeze(1)  # a clashing key stays with its stored row
            kept = rows[keep]
            self.stats.evicted += store.add(
                keys[kept], words if kept.shape[0] == n else words[kept], out_new[keep],
                self._max_rows(store),
            )  # fmt: skip
            self.stats.peak_bytes = max(
                self.stats.peak_bytes, sum(s.nbytes for s in self._stores.values())
            )
        return out

    def _max_rows(self, store: _Store) -> int:
        """Rows ``store`` may hold: its own plus what the byte cap leaves after the other stores."""
        others = sum(s.size * s.row_bytes for s in self._stores.values() if s is not store)
        return max(0, (self.max_bytes - others) // store.row_bytes)


def _version(t: Tensor) -> int:
    """``t``'s in-place version counter (inference tensors have none: -1)."""
    return -1 if t.is_inference() else t._version


def _batched(out: object, n: int) -> bool:
    """``out`` is a tensor with one row per input row."""
    return isinstance(out, Tensor) and out.dim() >= 1 and out.shape[0] == n
