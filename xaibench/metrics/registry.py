"""The metric registry, the one table of metric directions, and what each config entry takes.

Every registered metric has the call shape
``metric(model, images, heatmaps, targets, **kw) -> dict[str, Tensor]``. At
registration it declares its per-sample keys and, for each, whether higher is
better; tables, DeepFaith's prior filter and plots read :func:`metric_direction`
instead of keeping their own lists. It also declares the extra inputs it
needs; :func:`entry_spec` tells a caller, for a configured entry (a
``functools.partial`` of a registered metric), exactly which inputs to pass
and which per-sample keys come back. Every registered metric runs in eval
mode and leaves the model's ``training`` flags as it found them
(:func:`~xaibench.metrics.model_state.eval_mode`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from xaibench.metrics.model_state import evaluates_in_eval_mode
from xaibench.registry import Registry

MetricFn = Callable[..., dict[str, Tensor]]

METRICS: Registry[MetricFn] = Registry("metric")

NEEDS = ("masks", "indices")
"""Extra keyword inputs a metric may need, in the order :func:`entry_spec` lists them."""


@dataclass(frozen=True)
class EntrySpec:
    """What one configured metric entry takes and returns.

    Attributes:
        name: the registered metric's name.
        needs: extra keyword inputs to pass, among :data:`NEEDS` (``"masks"``:
            ground-truth masks ``(N, 1, H, W)`` bool; ``"indices"``: dataset
            indices ``(N,)`` seeding per-sample draws).
        keys: the per-sample ``(N,)`` keys the call returns, in order.
        directions: ``key -> True`` if higher is better (``None``: no better direction).
    """

    name: str
    needs: tuple[str, ...]
    keys: tuple[str, ...]
    directions: dict[str, bool | None]


WrapperOutputs = Callable[
    [EntrySpec, Mapping[str, object]], tuple[dict[str, bool | None], tuple[str, ...]]
]
"""A wrapping metric's declaration: ``(wrapped entry's spec, the entry's keywords) ->
(its per-sample keys with directions, the inputs it needs itself)``."""


def register_metric(
    name: str,
    *,
    higher_is_better: bool | Mapping[str, bool | None],
    needs: tuple[str, ...] = (),
    random: bool = False,
    nan_when: str | None = None,
    smoke: Mapping[str, object] | None = None,
    wraps: str | None = None,
    outputs: WrapperOutputs | None = None,
) -> Callable[[MetricFn], MetricFn]:
    """Decorator registering a metric function under ``name``, run in eval mode.

    The registered (and returned) function is ``fn`` wrapped by
    :func:`~xaibench.metrics.model_state.evaluates_in_eval_mode`: the model is
    evaluated in eval mode and every submodule's ``training`` flag restored,
    also on error. Name, docstring and signature stay ``fn``'s.

    Args:
        name: registry name; also the key of its main per-sample value.
        higher_is_better: direction of ``name``'s value, or a mapping from every
            per-sample key the metric returns to its direction (``None`` for a
            key with no better direction, e.g. a count).
        needs: extra keyword inputs the metric requires, among :data:`NEEDS`
            (e.g. ``("masks",)``).
        random: whether it draws random numbers (takes ``seed=`` and ``indices=``;
            :func:`entry_spec` then lists ``"indices"`` among its needs).
        nan_when: when a value is undefined and returned as NaN (e.g. "constant
            heatmap"); ``None`` promises finite values on valid, non-degenerate input.
        smoke: keyword arguments for a tiny, fast call (the registry contract test
            uses them on a 3×16×16 batch).
        wraps: for a metric that evaluates another one: the keyword naming the
            wrapped metric (e.g. ``"metric"``); needs ``outputs``.
        outputs: for a wrapping metric: its keys, directions and own needs
            given the wrapped entry (:data:`WrapperOutputs`).
    """
    unknown = sorted(set(needs) - set(NEEDS))
    if unknown:
        raise ValueError(f"metric {name!r}: needs {unknown} unknown; choose among {list(NEEDS)}")
    if (wraps is None) != (outputs is None):
        raise ValueError(f"metric {name!r}: give wraps= and outputs= together (a wrapping metric)")
    directions = (
        dict(higher_is_better)
        if isinstance(higher_is_better, Mapping)
        else {name: higher_is_better}
    )
    register = METRICS.register(
        name, directions=directions, needs=tuple(needs), random=random, nan_when=nan_when,
        smoke=dict(smoke or {}), wraps=wraps, outputs=outputs,
    )  # fmt: skip

    def deco(fn: MetricFn) -> MetricFn:
        return register(evaluates_in_eval_mode(fn))

    return deco


def get_metric(name: str) -> MetricFn:
    """The metric registered as ``name`` (``ValueError`` listing the names if unknown)."""
    return METRICS.get(name)


def list_metrics() -> list[str]:
    """All registered metric names, sorted."""
    return METRICS.names()


def metric_keys(name: str) -> list[str]:
    """The per-sample ``(N,)`` keys metric ``name`` declares (a wrapper's: :func:`entry_spec`)."""
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


def unwrap_partial(fn: object) -> tuple[object, dict[str, object]]:
    """The function under (possibly nested) ``functools.partial`` s and their merged keywords."""
    keywords: dict[str, object] = {}
    while isinstance(fn, functools.partial):
        keywords = {**fn.keywords, **keywords}  # an outer partial overrides an inner one
        fn = fn.func
    return fn, keywords


def registered_name(metric: object) -> str | None:
    """The registered name of ``metric`` (a registered function or a partial of one), else None."""
    func, _ = unwrap_partial(metric)
    for name in METRICS.names():
        if METRICS.get(name) is func:
            return name
    return None


def default_key(metric: MetricFn | str) -> str | None:
    """The main per-sample key of a registered metric (or of a ``functools.partial`` of one)."""
    if isinstance(metric, str):
        METRICS.get(metric)
        return metric
    return registered_name(metric)


def entry_spec(fn: MetricFn) -> EntrySpec:
    """What a configured entry ``fn`` takes and returns, read from its registration.

    Args:
        fn: a registered metric or a ``functools.partial`` of one (nested
            partials too; Hydra's ``_partial_: true`` builds them). A wrapping
            metric (``quality_gaps``) reads the wrapped metric from its
            keywords and adds that metric's needs to its own.

    Returns:
        The :class:`EntrySpec`: call ``fn(model, images, heatmaps, targets,
        **{need: ... for need in spec.needs})`` and read ``spec.keys``.
    """
    name = registered_name(fn)
    if name is None:
        func, _ = unwrap_partial(fn)
        what = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}"
        raise ValueError(
            f"{what!r} is not a registered metric; decorate its function with "
            "@register_metric('<name>', higher_is_better=...) from xaibench.metrics.registry "
            f"(and import its module), or configure a registered one: {', '.join(list_metrics())}"
        )
    meta = METRICS.meta(name)
    needs = set(meta["needs"]) | ({"indices"} if meta["random"] else set())
    directions = dict(meta["directions"])
    if meta["wraps"] is not None:
        _, keywords = unwrap_partial(fn)
        inner = keywords.get(meta["wraps"])
        if inner is None:
            raise ValueError(
                f"metric {name!r} evaluates another metric: give {meta['wraps']}= "
                "(a registered name such as 'msi', or a partial of a registered metric)"
            )
        inner_spec = entry_spec(get_metric(inner) if isinstance(inner, str) else inner)
        directions, own = meta["outputs"](inner_spec, keywords)
        needs |= set(own) | set(inner_spec.needs)
    return EntrySpec(
        name=name,
        needs=tuple(need for need in NEEDS if need in needs),
        keys=tuple(directions),
        directions=directions,
    )
