"""Per-sample random draws that do not depend on batch size, order or process count.

Every random quantity of sample ``i`` is a function of ``(seed, index[i])``
only, where ``index`` is the sample's position in its split. Two tools:

* :func:`sample_generator` / :func:`per_sample_rand`: a ``torch.Generator``
  per sample, seeded by a hash-free mix of ``(seed, index)`` (splitmix64);
  simple and exact, one small Python step per *sample* (not per pixel/step).
* :func:`counter_uniform`: a counter-based generator (a 32-bit integer hash of
  ``(seed, index, stream, position)``) computed with tensor ops on any device,
  for draws too large to materialise up front (e.g. F-Fidelity's thousands of
  random masks per sample, built chunk by chunk inside the engine).
"""

from __future__ import annotations

import torch
from torch import Tensor

_M64 = (1 << 64) - 1
_M32 = 0xFFFFFFFF


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def sample_seed(seed: int, index: int) -> int:
    """Deterministic 63-bit seed of sample ``index`` under ``seed`` (no Python ``hash``)."""
    return _splitmix64((_splitmix64(int(seed) & _M64) ^ (int(index) & _M64)) & _M64) >> 1


def sample_generator(seed: int, index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` for sample ``index`` under ``seed``."""
    return torch.Generator().manual_seed(sample_seed(seed, index))


def sample_indices(n: int, indices: Tensor | None, device: torch.device | None = None) -> Tensor:
    """``indices`` as ``(N,)`` int64, or ``arange(N)`` when not given."""
    if indices is None:
        return torch.arange(n, device=device)
    if tuple(indices.shape) != (n,):
        raise ValueError(
            f"indices {tuple(indices.shape)} must be ({n},): one dataset index per sample"
        )
    return indices.to(device=device, dtype=torch.int64)


def per_sample_rand(
    seed: int,
    indices: Tensor,
    shape: tuple[int, ...],
    *,
    kind: str = "uniform",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(N, *shape)`` draws, row ``i`` from :func:`sample_generator` ``(seed, indices[i])``.

    Args:
        kind: ``"uniform"`` (U[0, 1)) or ``"normal"`` (N(0, 1)).
    """
    draw = {"uniform": torch.rand, "normal": torch.randn}.get(kind)
    if draw is None:
        raise ValueError(f"kind={kind!r} is unknown; choose 'uniform' or 'normal'")
    rows = [
        draw(shape, generator=sample_generator(seed, int(i)), dtype=dtype) for i in indices.tolist()
    ]
    out = torch.stack(rows) if rows else torch.empty((0, *shape), dtype=dtype)
    return out.to(device)


def per_sample_permutation(seed: int, indices: Tensor, size: int, *, device=None) -> Tensor:
    """``(N, size)`` int64: a random permutation of ``range(size)`` per sample."""
    rows = [
        torch.randperm(size, generator=sample_generator(seed, int(i))) for i in indices.tolist()
    ]
    out = torch.stack(rows) if rows else torch.empty((0, size), dtype=torch.int64)
    return out.to(device)


def _mix32(x: Tensor) -> Tensor:
    # "lowbias32" integer finaliser on int64 tensors holding 32-bit values;
    # products wrap mod 2**64 and the mask keeps the exact low 32 bits.
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def counter_uniform(seed: int, index: Tensor, stream: Tensor, num_positions: int) -> Tensor:
    """U[0, 1) draws ``(B, num_positions)`` float64, a pure function of ``(seed, index, stream, position)``.

    Args:
        seed: global seed.
        index: ``(B,)`` int64 dataset index of each row's sample.
        stream: ``(B,)`` int64 draw number within the sample (e.g. the variant).
        num_positions: positions per row.
    """
    s = _mix32(torch.tensor(int(seed) & _M32, device=index.device))
    h = _mix32((s + (index.to(torch.int64) & _M32)) & _M32)
    h = _mix32((h + (stream.to(torch.int64) & _M32)) & _M32)
    pos = torch.arange(num_positions, device=index.device, dtype=torch.int64)
    h = _mix32((h[:, None] ^ _mix32(pos)[None, :]) & _M32)
    return (h >> 8).to(torch.float64) / float(1 << 24)
