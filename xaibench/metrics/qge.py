"""QGE (Quality Gap Estimate) and the random-explanation gap, on any metric and input shape.

``inverse(h)`` ranks features in the reverse order of ``h`` while keeping its
values: per sample, the value of descending rank ``r`` moves to the position
of rank ``P - 1 - r`` (QGE paper eq. 4). ``QGE = Q(h) - Q(inverse(h))``
(eq. 5); ``random_gap = Q(h) - mean_k Q(permute_k(h))``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from xaibench.metrics.checks import check_images
from xaibench.metrics.model_state import eval_mode
from xaibench.metrics.registry import (
    EntrySpec,
    MetricFn,
    default_key,
    entry_spec,
    get_metric,
    register_metric,
    registered_name,
)
from xaibench.metrics.seeding import per_sample_permutation, sample_indices

DEFAULT_K = 0
""":func:`quality_gaps` adds no random gap unless ``k > 0``."""


def inverse(heatmaps: Tensor) -> Tensor:
    """Rank-reversed explanation, same shape, values and dtype as ``heatmaps (N, *S)``.

    Ranks follow a stable descending sort over all positions of a sample (ties:
    earlier flattened position ranks higher). ``inverse(inverse(h)) == h``
    whenever a sample's values are distinct. With ties no value-preserving
    order reversal can be an involution (e.g. the three arrangements of
    ``{0, 1, 1}`` would have to pair up), so tied inputs give a valid reversal
    that need not map back.
    """
    check_images(heatmaps, name="heatmaps")
    flat = heatmaps.flatten(1)
    values, order = torch.sort(flat, dim=1, descending=True, stable=True)
    out = torch.empty_like(flat)
    out.scatter_(1, order, values.flip(1))  # rank r gets the (P-1-r)-th largest value
    return out.view(heatmaps.shape)


def _resolve(
    metric: MetricFn | str, key: str | None, indices: Tensor | None = None
) -> tuple[Callable[..., dict[str, Tensor]], str]:
    """The metric callable and the key to read.

    A registered metric that needs ``indices`` (a random one) gets them bound;
    an unregistered callable is called as given.
    """
    fn = get_metric(metric) if isinstance(metric, str) else metric
    key = key or default_key(metric)
    if key is None:
        raise ValueError(f"key= is needed to read one value from {metric!r} (e.g. key='deletion')")
    if indices is not None and registered_name(fn) and "indices" in entry_spec(fn).needs:
        fn = functools.partial(fn, indices=indices)
    return fn, key


def _quality(fn: Callable[..., dict[str, Tensor]], key: str, *args: object, **kw: object) -> Tensor:
    out = fn(*args, **kw)
    if key not in out:
        raise ValueError(f"the metric returned no key {key!r}; its keys: {sorted(out)}")
    return out[key]


def qge(
    metric: MetricFn | str,
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    key: str | None = None,
    **kw: object,
) -> Tensor:
    """``Q(h) - Q(inverse(h))`` per sample, ``(N,)``.

    Args:
        metric: a registered metric's name or any metric callable (e.g. a partial).
        model, images, heatmaps, targets: as the metric takes them; heatmaps ``(N, *S')``.
        key: the metric's per-sample key to read (default: the metric's own name).
        **kw: passed to both metric calls.
    """
    fn, key = _resolve(metric, key)
    with eval_mode(model):
        q = _quality(fn, key, model, images, heatmaps, targets, **kw)
        q_inv = _quality(fn, key, model, images, inverse(heatmaps), targets, **kw)
    return q - q_inv


def permute(
    heatmaps: Tensor,
    *,
    generator: torch.Generator | None = None,
    seed: int = 0,
    indices: Tensor | None = None,
) -> Tensor:
    """Randomly permuted positions per sample (values preserved), same shape as ``heatmaps (N, *S)``.

    Draws from ``generator`` when given, else from per-sample generators seeded
    by ``(seed, indices[i])``.
    """
    flat = heatmaps.flatten(1)
    n, p = flat.shape
    if generator is not None:
        perm = torch.rand((n, p), generator=generator).argsort(dim=1).to(flat.device)
    else:
        perm = per_sample_permutation(seed, sample_indices(n, indices), p, device=flat.device)
    return flat.gather(1, perm).view(heatmaps.shape)


def random_gap(
    metric: MetricFn | str,
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    k: int = 10,
    generator: torch.Generator | None = None,
    key: str | None = None,
    seed: int = 0,
    indices: Tensor | None = None,
    **kw: object,
) -> Tensor:
    """``Q(h) - mean_k Q(permute_k(h))`` per sample, ``(N,)`` — the random-baseline transform.

    Args:
        metric, model, images, heatmaps, targets, key, **kw: as in :func:`qge`.
        k: number of random permutations (``>= 1``).
        generator: one generator for all draws (depends on batch order); if
            ``None``, draw ``k`` permutations per sample from ``(seed + j, indices[i])``.
        seed: seed of the per-sample draws.
        indices: ``(N,)`` dataset indices of the samples (default ``arange(N)``).
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int (number of random explanations), got {k!r}")
    fn, key = _resolve(metric, key, indices)
    with eval_mode(model):
        q = _quality(fn, key, model, images, heatmaps, targets, **kw)
        return q - _random_quality(
            fn, key, model, images, heatmaps, targets, k, generator, seed, indices, **kw
        )


def _random_quality(
    fn: MetricFn,
    key: str,
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    k: int,
    generator: torch.Generator | None,
    seed: int,
    indices: Tensor | None,
    **kw: object,
) -> Tensor:
    """``mean_k Q(permute_k(h))`` per sample ``(N,)``; draw ``j`` is seeded by ``seed + j``."""
    draws = [
        _quality(
            fn,
            key,
            model,
            images,
            permute(heatmaps, generator=generator, seed=seed + j, indices=indices),
            targets,
            **kw,
        )
        for j in range(k)
    ]
    return torch.stack(draws).mean(dim=0)


def _gap_outputs(
    wrapped: EntrySpec, keywords: Mapping[str, object]
) -> tuple[dict[str, bool | None], tuple[str, ...]]:
    """:func:`quality_gaps`' keys and own needs, from its keywords.

    ``qge_<key>`` and ``random_gap_<key>`` follow ``key``'s direction; ``<key>_inverse``
    the opposite one (a good explanation's reversal scores badly).
    """
    key = keywords.get("key") or wrapped.name
    if key not in wrapped.directions:
        raise ValueError(
            f"key={key!r} is not a per-sample key of metric {wrapped.name!r}; "
            f"give key= one of {list(wrapped.keys)}"
        )
    random = keywords.get("k", DEFAULT_K) > 0
    d = wrapped.directions[key]
    directions = {f"{key}_inverse": None if d is None else not d, f"qge_{key}": d}
    if random:
        directions[f"random_gap_{key}"] = d
    return directions, ("indices",) if random else ()


@register_metric(
    "quality_gaps",
    higher_is_better={},
    wraps="metric",
    outputs=_gap_outputs,
    smoke={"metric": "msi", "step": 0.1, "k": 1},
)
def quality_gaps(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    metric: MetricFn | str,
    key: str | None = None,
    k: int = DEFAULT_K,
    seed: int = 0,
    indices: Tensor | None = None,
    **kw: object,
) -> dict[str, Tensor]:
    """QGE as a metric for configs: ``{<key>_inverse, qge_<key>[, random_gap_<key>]}``, ``(N,)``.

    ``Q(h)`` itself is not returned under ``key`` (the metric's own entry gives
    it, and a second ``msi`` column would clash with it): it is
    ``qge_<key> + <key>_inverse``. ``k > 0`` adds the random gap over ``k``
    permutations (per-sample seeded). Directions: see :func:`_gap_outputs`. ``seed`` seeds
    the permutations only; ``indices`` seed them and are passed on to a
    registered metric that needs them (a random one); ``**kw`` (e.g. ``masks``
    for localization) go to the metric.
    """
    fn, key = _resolve(metric, key, indices)
    q = _quality(fn, key, model, images, heatmaps, targets, **kw)
    q_inv = _quality(fn, key, model, images, inverse(heatmaps), targets, **kw)
    out = {f"{key}_inverse": q_inv, f"qge_{key}": q - q_inv}
    if k > 0:
        rand = _random_quality(
            fn, key, model, images, heatmaps, targets, k, None, seed, indices, **kw
        )
        out[f"random_gap_{key}"] = q - rand
    return out
