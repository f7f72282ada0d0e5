"""The metric registry and the one table of metric directions.

Every registered metric has the call shape
``metric(model, images, heatmaps, targets, **kw) -> dict[str, Tensor]``. At
registration it declares its per-sample keys and, for each, whether higher is
better; tables, DeepFaith's prior filter and plots read :func:`metric_direction`
instead of keeping their own lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor

from xaibench.registry import Registry

MetricFn = Callable[..., dict[str, Tensor]]

METRICS: Registry[MetricFn] = Registry("metric")


def register_metric(
    name: str,
    *,
    higher_is_better: bool | Mapping[str, bool | None],
    needs: tuple[str, ...] = (),
    random: bool = False,
    nan_when: str | None = None,
    smoke: Mapping[str, object] | None = None,
) -> Callable[[MetricFn], MetricFn]:
    """Decorator registering a metric function under ``name``.

    Args:
        name: registry name; also the key of its main per-sample value.
        higher_is_better: direction of ``name``'s value, or a mapping from every
            per-sample key the metric returns to its direction (``None`` for a
            key with no better direction, e.g. a count).
        needs: extra keyword inputs the metric requires (e.g. ``("masks",)``).
        random: whether it draws random numbers (takes ``seed=`` and ``indices=``).
        nan_when: when a value is undefined and returned as NaN (e.g. "constant
            heatmap"); ``None`` promises finite values on valid, non-degenerate input.
        smoke: keyword arguments for a tiny, fast call (the registry contract test
            uses them on a 3×16×16 batch).
    """
    directions = (
        dict(higher_is_better)
        if isinstance(higher_is_better, Mapping)
        else {name: higher_is_better}
    )
    return METRICS.register(
        name, directions=directions, needs=tuple(needs), random=random, nan_when=nan_when,
        smoke=dict(smoke or {}),
    )  # fmt: skip


def get_metric(name: str) -> MetricFn:
    """The metric registered as ``name`` (``ValueError`` listing the names if unknown)."""
    return METRICS.get(name)


def list_metrics() -> list[str]:
    """All registered metric names, sorted."""
    return METRICS.names()


def metric_keys(name: str) -> list[str]:
    """The per-sample ``(N,)`` keys metric ``name`` returns."""
    return list(METRICS.meta(name)["directions"])


def metric_direction(name: str, key: str | None = None) -> bool | None:
    """``True`` if higher is better for ``key`` of metric ``name`` (default: ``name``'s own key).

    ``None`` means the key has no better direction. Curve and grid keys are not
    in the table: asking for one is a ``ValueError`` listing the keys.
    """
    directions = METRICS.meta(name)["directions"]
    key = name if key is None else key
    if key not in directions:
        raise ValueError(
            f"metric {name!r} has no per-sample key {key!r}; its keys: {sorted(directions)}"
        )
    return directions[key]


def default_key(metric: MetricFn | str) -> str | None:
    """The main per-sample key of a registered metric (or of a ``functools.partial`` of one)."""
    if isinstance(metric, str):
        METRICS.get(metric)
        return metric
    func = getattr(metric, "func", metric)
    for name in METRICS.names():
        if METRICS.get(name) is func:
            return name
    return None
