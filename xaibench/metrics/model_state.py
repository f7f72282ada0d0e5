"""A metric never changes the model: it evaluates in eval mode and restores every flag after.

In train mode BatchNorm would normalise each chunk of perturbed images by its
own statistics (the score then depends on the chunk) and update its running
statistics (the model changes). :func:`eval_mode` is the one place that puts
a model in eval mode for a metric; :func:`~xaibench.metrics.registry.register_metric`
applies it to every registered metric through :func:`evaluates_in_eval_mode`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TypeVar

from torch import nn

F = TypeVar("F", bound=Callable[..., object])


@contextlib.contextmanager
def eval_mode(model: object) -> Iterator[object]:
    """Every submodule of ``model`` in eval mode inside the block, its own ``training`` flag after.

    Each submodule gets back the flag it had (a model half in train mode stays
    so), also when the block raises. Anything that is not an ``nn.Module``
    (``None`` for localization, a plain function) is left alone.

    Yields:
        ``model``.
    """
    if not isinstance(model, nn.Module):
        yield model
        return
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def evaluates_in_eval_mode(fn: F) -> F:
    """``fn(model, ...)`` run under :func:`eval_mode` of its ``model`` (first argument or keyword).

    ``functools.wraps`` keeps the name, docstring and signature of ``fn``.
    """

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        model = args[0] if args else kwargs.get("model")
        with eval_mode(model):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
