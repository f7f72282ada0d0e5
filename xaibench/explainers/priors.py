"""DeepFaith's offline supervision: prior explanations, deduplicated and faithfulness-filtered.

The pipeline (DESIGN §4, DeepFaith §3.3), run once per classifier and training set:

1. **Raw maps.** ``K`` registered explainers (``methods``, config order) explain
   the first ``max_samples`` training images for their labels, at full
   resolution. Each method's maps are one cache file,
   ``<cache_dir>/<key>/<method>-<settings hash>.pt`` (float16), where ``<key>``
   hashes the classifier's weights, the sample indices and the data's
   ``cache_key()``: written atomically, loaded with ``weights_only=True``, a
   corrupt file rebuilt with a warning. A method already cached is not
   recomputed, so an interrupted run resumes at the next method.
2. **Grid maps.** Each map average-pooled to the ``grid`` and min-max rescaled
   per map to [0, 1] (a constant map becomes zeros); these are the training
   targets and what deduplication compares.
3. **Deduplication** (:func:`dedup_mask`): per sample, greedy in method order, a
   map is dropped if its cosine similarity with an earlier *kept* map is
   ``>= dedup_threshold`` (δ = 0.6). A constant grid map (all zeros) is dropped
   too: it ranks nothing (and every correlation metric is NaN on it).
4. **Faithfulness filter** (:func:`filter_mask`): each surviving prior's
   full-resolution map is scored on the ten faithfulness metrics
   (``variant="deepfaith"``; scores cached per method next to its maps, and
   only the samples where the method survived deduplication are scored); per
   sample and metric the threshold is the ``filter_quantile`` (p = 0.2) of the
   sample's candidates in the metric's good direction
   (:func:`~xaibench.metrics.registry.metric_direction`); a prior is kept only
   if it passes all of them.

A sample left with no prior trains on ``L_LC`` only; :class:`PriorSet` counts them.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from xaibench.data.cache import atomic_save, cached, config_hash, load_checked, normalize_key
from xaibench.errors import ConfigError
from xaibench.explainers.base import get_explainer
from xaibench.metrics.faithfulness import DEEPFAITH_METRICS
from xaibench.metrics.registry import entry_spec, get_metric, metric_direction

log = logging.getLogger(__name__)


@dataclass
class PriorSet:
    """Prior explanations of the first training samples, ready for ``L_PC``.

    Attributes:
        index: ``(M,)`` int64 dataset indices (train split) of the processed
            samples, ascending. A row whose ``kept`` is all False is a sample
            without prior (it trains on ``L_LC`` only); see :attr:`has_prior`.
        maps: ``(M, K, 1, h, w)`` float32 in [0, 1]: each method's map
            average-pooled to the grid ``h × w`` and min-max rescaled per map.
        kept: ``(M, K)`` bool: survived deduplication (and the filter, when on).
        methods: the ``K`` method names, in config order.
        stats: JSON-able counts and timings (see :func:`build_priors`).
    """

    index: Tensor
    maps: Tensor
    kept: Tensor
    methods: list[str]
    stats: dict[str, Any]

    @property
    def has_prior(self) -> Tensor:
        """``(M,)`` bool: the sample kept at least one prior."""
        return self.kept.any(dim=1)

    def rows(self, indices: Tensor) -> Tensor:
        """``(B,)`` int64 row of each dataset index in this set, ``-1`` where it has none."""
        indices = indices.to(self.index.device, torch.int64)
        pos = torch.searchsorted(self.index, indices).clamp_max(len(self.index) - 1)
        return torch.where(self.index[pos] == indices, pos, torch.full_like(pos, -1))


# -- the two pure rules -------------------------------------------------------


def dedup_mask(maps: Tensor, threshold: float = 0.6, *, centered: bool = True) -> Tensor:
    """maps (M, K, P) -> keep (M, K) bool: per sample, greedy in method order, a map is dropped
    if its similarity with an earlier KEPT map of that sample is >= threshold.

    Similarity is the cosine of the mean-centred maps (Pearson ρ) by default. Our maps
    are min-max scaled into [0, 1], where the plain cosine is high for any pair (measured
    on synthetic_digits: 0.87 on average between methods, about 0.75 for two independent
    uniform-noise maps), so δ = 0.6 on it kept about one prior per sample; centred, δ = 0.6
    kept 3.4. ``centered=False`` gives the plain cosine (the paper's wording, on signed
    attributions). The first map of a sample is always kept; a constant map has
    similarity 0 with every map.

    Args:
        maps: ``(M, K, P)`` maps, flattened per method.
        threshold: δ in ``(0, 1]``.
        centered: subtract each map's mean before the cosine.
    """
    check_threshold(threshold)
    if maps.dim() != 3:
        raise ValueError(f"maps {tuple(maps.shape)} must be (M, K, P)")
    x = maps.double()
    if centered:
        x = x - x.mean(dim=2, keepdim=True)
    unit = F.normalize(x, dim=2)  # (M, K, P); zero rows stay zero
    sim = unit @ unit.transpose(1, 2)  # (M, K, K)
    m, k = maps.shape[:2]
    keep = torch.zeros(m, k, dtype=torch.bool, device=maps.device)
    for j in range(k):  # K is small (<= ~20); vectorised over samples
        dup = ((sim[:, j, :j] >= threshold) & keep[:, :j]).any(dim=1)  # (M,)
        keep[:, j] = ~dup
    return keep


def filter_mask(
    scores: Tensor, higher_is_better: list[bool], candidates: Tensor, quantile: float = 0.2
) -> Tensor:
    """scores (M, K, R) per sample, method, metric; candidates (M, K) bool (the deduplicated ones).
    Per sample and metric, the threshold is the `quantile` (good direction: for higher-is-better the
    p-quantile, a prior passes if score >= it; for lower-is-better the (1-p)-quantile, passes if <=)
    over that sample's candidates; NaN scores fail; returns candidates & passes-all-R.

    Quantiles interpolate linearly (``torch.nanquantile``, numpy's default) over
    the candidates' non-NaN scores; a sample and metric whose candidates are
    all NaN has no threshold, and every candidate fails.
    """
    check_quantile(quantile)
    if scores.dim() != 3 or tuple(candidates.shape) != tuple(scores.shape[:2]):
        raise ValueError(
            f"scores {tuple(scores.shape)} must be (M, K, R) and candidates "
            f"{tuple(candidates.shape)} must be (M, K)"
        )
    if len(higher_is_better) != scores.shape[2]:
        raise ValueError(
            f"higher_is_better has {len(higher_is_better)} entries for {scores.shape[2]} metrics"
        )
    if any(d is None for d in higher_is_better):
        raise ValueError(f"every filter metric needs a direction, got {higher_is_better}")
    x = scores.double()
    pool = torch.where(candidates[:, :, None], x, torch.full_like(x, float("nan")))  # (M, K, R)
    hib = torch.tensor(higher_is_better, dtype=torch.bool, device=x.device)  # (R,)
    if len(pool) == 0 or pool.shape[1] == 0:
        return candidates.clone()
    low = torch.nanquantile(pool, quantile, dim=1, keepdim=True)  # (M, 1, R)
    high = torch.nanquantile(pool, 1.0 - quantile, dim=1, keepdim=True)
    passes = torch.where(hib, x >= low, x <= high)  # NaN score or NaN threshold: False
    return candidates & passes.all(dim=2)


# -- checks -------------------------------------------------------------------


def check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and 0.0 < threshold <= 1.0):
        raise ConfigError(
            f"explainer.dedup_threshold={threshold!r} must lie in (0, 1] (a cosine similarity; "
            "DeepFaith uses 0.6)"
        )


def check_quantile(quantile: float) -> None:
    if not (isinstance(quantile, (int, float)) and 0.0 < quantile < 1.0):
        raise ConfigError(
            f"explainer.filter_quantile={quantile!r} must lie in (0, 1) (DeepFaith uses 0.2)"
        )


def _check_methods(methods: list[str], settings: dict[str, dict]) -> None:
    if not methods:
        raise ConfigError(
            "explainer.prior_methods is empty; list at least one registered explainer "
            "(configs/explainer/deepfaith.yaml lists the paper's 14)"
        )
    seen = [m for i, m in enumerate(methods) if m in methods[:i]]
    if seen:
        raise ConfigError(f"explainer.prior_methods lists {sorted(set(seen))} more than once")
    extra = sorted(set(settings) - set(methods))
    if extra:
        raise ConfigError(
            f"explainer.prior_settings has settings for {extra}, which are not in "
            f"explainer.prior_methods {list(methods)}; add them there or remove the settings"
        )


# -- filter metrics -----------------------------------------------------------


def default_filter_metrics(image_shape: tuple[int, ...], nr_runs: int = 10) -> dict[str, dict]:
    """The ten DeepFaith metrics (``variant="deepfaith"``, ``seed=0``) sized for an image.

    DeepFaith's chunk of 3136 elements is 1/48 of a 3×224×224 image; the same
    fraction here (256 for 3×64×64), so every cumulative metric makes 48
    forward passes per sample; the random ones draw ``nr_runs`` subsets.

    Args:
        image_shape: ``(C, H, W)`` of one image.
        nr_runs: random subsets of faithfulness_correlation and infidelity_correlation.
    """
    elements = 1
    for s in image_shape:
        elements *= int(s)
    step = max(1, round(elements / 48))  # elements per chunk: 1/48 of C*H*W
    per = {
        "faithfulness_correlation": {"nr_runs": nr_runs, "subset_size": step},
        "faithfulness_estimate": {"features_in_step": step},
        "infidelity_correlation": {"nr_runs": nr_runs},
        "monotonicity_correlation": {"features_in_step": step},
        "faithfulness_deletion": {"features_in_step": step},
        "faithfulness_insertion": {"features_in_step": step},
        "negative_perturbation": {"features_in_step": step},
        "positive_perturbation": {"features_in_step": step},
        "region_perturbation": {"regions_evaluation": step},
        "irof": {"features_in_step": step},
    }
    return {name: {"variant": "deepfaith", "seed": 0, **per[name]} for name in DEEPFAITH_METRICS}


def _metric_calls(filter_metrics: dict[str, dict]) -> list[tuple[str, Callable, tuple[str, ...]]]:
    """``(name, partial, needs)`` per filter metric, as its registry entry declares."""
    if not filter_metrics:
        raise ConfigError("explainer.filter_metrics is empty; give metrics or turn the filter off")
    calls = []
    for name, kw in filter_metrics.items():
        try:
            fn = functools.partial(get_metric(name), **dict(kw))
        except ValueError as e:
            raise ConfigError(f"explainer.filter_metrics: {e}") from e
        spec = entry_spec(fn)
        if "masks" in spec.needs:
            raise ConfigError(
                f"explainer.filter_metrics: {name!r} needs ground-truth masks; "
                "choose a faithfulness metric"
            )
        if metric_direction(name) is None:
            raise ConfigError(f"explainer.filter_metrics: {name!r} has no better direction")
        calls.append((name, fn, spec.needs))
    return calls


# -- the pipeline -------------------------------------------------------------


def classifier_hash(model: nn.Module) -> str:
    """sha256 of a model's ``state_dict`` content: every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes of any dtype
    return h.hexdigest()


def _read_samples(dataset, n: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``n`` items of ``dataset`` in order: images (N,C,H,W), labels (N,), indices (N,).

    Images are read without augmentation (a shallow copy with ``augment=False``;
    the caller's dataset is unchanged): a prior explains the stored image.
    """
    if getattr(dataset, "augment", False):
        dataset = copy.copy(dataset)
        dataset.augment = False
    count = len(dataset) if n is None else min(int(n), len(dataset))
    images, labels, index = [], [], []
    for i in range(count):
        item = dataset[i]
        images.append(item[0])
        labels.append(torch.as_tensor(item[1]))
        index.append(torch.as_tensor(item[2]))
    if not images:
        raise ValueError("the train split is empty; there is nothing to compute priors for")
    return torch.stack(images).float(), torch.stack(labels).long(), torch.stack(index).long()


def _grid_maps(raw: Tensor, grid: tuple[int, int]) -> Tensor:
    """(N,1,H,W) -> (N,1,h,w) float32 average-pooled, min-max rescaled per map (constant -> 0)."""
    pooled = F.adaptive_avg_pool2d(raw.float(), grid)
    flat = pooled.flatten(1)  # (N, h*w)
    lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return out.clamp(0.0, 1.0).view_as(pooled)


def build_priors(
    classifier: nn.Module,
    datamodule,
    *,
    methods: list[str],
    settings: dict[str, dict] | None,
    grid: tuple[int, int],
    cache_dir: str | Path,
    max_samples: int | None = 512,
    dedup_threshold: float = 0.6,
    filter_quantile: float = 0.2,
    use_filter: bool = True,
    filter_metrics: dict[str, dict] | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> PriorSet:
    """Compute (or load) the prior explanations of the first training samples.

    Args:
        classifier: the frozen classifier (logits); explainers and metrics run
            on its device and leave it unchanged.
        datamodule: an ``XaiDataModule`` (``setup()`` is called); its
            ``splits["train"]`` items are ``(image, label, index, ...)``.
        methods: explainer names (:func:`~xaibench.explainers.list_explainers`), in order.
        settings: ``method -> keyword arguments`` of its explainer (missing: defaults).
        grid: ``(h, w)`` of the returned maps (the learned explainer's patch grid).
        cache_dir: folder of the caches (one subfolder per classifier and samples).
        max_samples: how many training samples, from the first (None: all).
        dedup_threshold: δ of :func:`dedup_mask`, in ``(0, 1]``.
        filter_quantile: p of :func:`filter_mask`, in ``(0, 1)``.
        use_filter: apply the faithfulness filter (else ``kept`` is the dedup result).
        filter_metrics: ``metric name -> keyword arguments`` (default:
            :func:`default_filter_metrics` for the image size).
        batch_size: images per explainer call and per metric call.
        progress: show a tqdm bar per method and stage.

    Returns:
        The :class:`PriorSet`. ``stats`` holds ``n_samples``, ``n_methods``,
        ``kept_per_method`` ``{name: samples kept}``, ``n_constant`` (constant
        maps, never kept), ``n_after_dedup`` and
        ``n_after_filter`` (kept (sample, method) pairs; the same when the
        filter is off), ``samples_without_prior``, ``use_filter``, ``computed``
        (``{"maps": [...], "scores": [...]}``: methods computed in this call, the
        others loaded from the cache), ``seconds``
        (``{"maps", "dedup", "scores", "filter", "total"}``) and
        ``seconds_per_method`` (``{"maps": {...}, "scores": {...}}``).
    """
    t_start = time.perf_counter()
    methods = list(methods)
    settings = dict(settings or {})
    _check_methods(methods, settings)
    check_threshold(dedup_threshold)
    check_quantile(filter_quantile)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigError(f"explainer.prior_batch_size={batch_size!r} must be a positive integer")
    if max_samples is not None and not (isinstance(max_samples, int) and max_samples >= 1):
        raise ConfigError(
            f"explainer.prior_samples={max_samples!r} must be a positive integer or null (all)"
        )
    grid = (int(grid[0]), int(grid[1]))
    if min(grid) < 1:
        raise ValueError(f"grid={grid} must be two positive integers (h, w)")
    # build every explainer first: a typo fails in seconds, naming the method
    explainers = {}
    for name in methods:
        try:
            explainers[name] = get_explainer(name, **settings.get(name, {}))
        except (TypeError, ValueError) as e:
            conf = settings.get(name, {})
            raise ConfigError(
                f"explainer.prior_methods entry {name!r} (explainer.prior_settings: {conf}): {e}"
            ) from e
    calls = _metric_calls(filter_metrics) if (use_filter and filter_metrics is not None) else None

    datamodule.setup()
    images, labels, index = _read_samples(datamodule.splits["train"], max_samples)
    order = torch.argsort(index)  # rows ascending by dataset index
    images, labels, index = images[order], labels[order], index[order]
    if use_filter and calls is None:
        filter_metrics = default_filter_metrics(tuple(images.shape[1:]))
        calls = _metric_calls(filter_metrics)
    device = next(iter(classifier.parameters()), torch.empty(0)).device
    n = len(index)

    key = {
        "classifier": classifier_hash(classifier),
        "indices": hashlib.sha256(index.numpy().tobytes()).hexdigest(),
        "data": datamodule.cache_key(),
    }
    folder = Path(cache_dir) / config_hash(key)
    seconds: dict[str, Any] = {"maps": {}, "scores": {}}
    computed: dict[str, list[str]] = {"maps": [], "scores": []}

    def raw_maps(name: str) -> Tensor:
        """(N,1,H,W) float16 on the CPU, from the cache or computed and cached."""
        conf = settings.get(name, {})
        path = folder / f"{name}-{config_hash(conf)}.pt"
        mkey = {**key, "method": name, "settings": conf}
        built = []

        def build() -> dict[str, Any]:
            built.append(True)
            out = []
            bar = tqdm(total=n, desc=f"prior maps {name}", unit="img", disable=not progress)
            for s in range(0, n, batch_size):
                x = images[s : s + batch_size].to(device)
                y = labels[s : s + batch_size].to(device)
                out.append(explainers[name](classifier, x, y).detach().to("cpu", torch.float16))
                bar.update(len(x))
            bar.close()
            return {"maps": torch.cat(out), "index": index.clone()}

        obj = cached(path, mkey, build)
        if built:
            computed["maps"].append(name)
        return obj["maps"]

    # 1-2. raw maps per method -> grid maps
    grid_maps, maps_sha = [], {}
    for name in methods:
        t0 = time.perf_counter()
        raw = raw_maps(name)
        maps_sha[name] = hashlib.sha256(raw.reshape(-1).view(torch.uint8).numpy()).hexdigest()
        grid_maps.append(_grid_maps(raw, grid))  # (N, 1, h, w)
        seconds["maps"][name] = time.perf_counter() - t0
    maps = torch.stack(grid_maps, dim=1)  # (N, K, 1, h, w)

    # 3. deduplication on the grid maps; a constant map (all zeros after rescaling) ranks
    # nothing and is never a prior
    t0 = time.perf_counter()
    informative = maps.flatten(2).amax(dim=2) > 0  # (N, K)
    dedup = dedup_mask(maps.flatten(2), dedup_threshold) & informative  # (N, K)
    t_dedup = time.perf_counter() - t0

    # 4. faithfulness filter on the full-resolution maps of the survivors
    t_scores = t_filter = 0.0
    kept = dedup
    if use_filter and calls is not None and filter_metrics is not None:
        names = [c[0] for c in calls]
        scores = torch.full((n, len(methods), len(calls)), float("nan"))  # (N, K, R)
        for k, name in enumerate(methods):
            t0 = time.perf_counter()
            scores[:, k] = _method_scores(
                name, maps_sha[name], raw_maps, dedup[:, k], folder, key,
                filter_metrics, calls, classifier, images, labels, index, device,
                batch_size, progress, computed,
            )  # fmt: skip
            seconds["scores"][name] = time.perf_counter() - t0
        t_scores = sum(seconds["scores"].values())
        t0 = time.perf_counter()
        kept = filter_mask(
            scores, [bool(metric_direction(m)) for m in names], dedup, filter_quantile
        )
        t_filter = time.perf_counter() - t0

    no_prior = int((~kept.any(dim=1)).sum())
    stats = {
        "n_samples": n,
        "n_methods": len(methods),
        "kept_per_method": {m: int(kept[:, k].sum()) for k, m in enumerate(methods)},
        "n_constant": int((~informative).sum()),
        "n_after_dedup": int(dedup.sum()),
        "n_after_filter": int(kept.sum()),
        "samples_without_prior": no_prior,
        "use_filter": bool(use_filter),
        "computed": computed,
        "seconds": {
            "maps": sum(seconds["maps"].values()),
            "dedup": t_dedup,
            "scores": t_scores,
            "filter": t_filter,
            "total": time.perf_counter() - t_start,
        },
        "seconds_per_method": seconds,
    }
    log.info(
        "priors: %d samples x %d methods -> %d after dedup (δ=%g) -> %d after filter%s; "
        "%d samples without prior; %.1f s (maps %.1f, scores %.1f) [%s]",
        n, len(methods), stats["n_after_dedup"], dedup_threshold, stats["n_after_filter"],
        f" (p={filter_quantile:g})" if use_filter else " (off)", no_prior,
        stats["seconds"]["total"], stats["seconds"]["maps"], stats["seconds"]["scores"], folder,
    )  # fmt: skip
    return PriorSet(index=index, maps=maps, kept=kept, methods=methods, stats=stats)


def _method_scores(
    name: str,
    maps_sha: str,
    raw_maps: Callable[[str], Tensor],
    need: Tensor,
    folder: Path,
    key: dict[str, Any],
    filter_metrics: dict[str, dict],
    calls: list[tuple[str, Callable, tuple[str, ...]]],
    classifier: nn.Module,
    images: Tensor,
    labels: Tensor,
    index: Tensor,
    device: torch.device,
    batch_size: int,
    progress: bool,
    computed: dict[str, list[str]],
) -> Tensor:
    """(N, R) float32 scores of one method's maps (NaN where not needed), cached incrementally.

    The cache is keyed by the content of the method's maps and the metric
    configs. It holds the scores of every sample scored so far and a ``scored``
    mask; only needed samples not scored yet are computed (each metric's value
    is a function of its own sample and ``(seed, index)``, so scoring a subset
    gives the values of scoring all).
    """
    path = folder / f"{name}-{maps_sha[:12]}-scores-{config_hash(filter_metrics)}.pt"
    skey = {**key, "method": name, "maps_sha": maps_sha, "metrics": filter_metrics}
    n, r = len(index), len(calls)
    obj = load_checked(path, skey)
    if obj is not None and tuple(obj["scores"].shape) == (n, r):
        scores, scored = obj["scores"].float(), obj["scored"].bool()
    else:
        scores, scored = torch.full((n, r), float("nan")), torch.zeros(n, dtype=torch.bool)
    todo = torch.nonzero(need & ~scored).flatten()  # rows to score now
    if len(todo) == 0:
        return torch.where(need[:, None], scores, torch.full_like(scores, float("nan")))
    raw = raw_maps(name)
    bar = tqdm(total=len(todo), desc=f"prior scores {name}", unit="img", disable=not progress)
    for s in range(0, len(todo), batch_size):
        rows = todo[s : s + batch_size]
        x, y = images[rows].to(device), labels[rows].to(device)
        h = raw[rows].to(device, torch.float32)
        inputs = {"indices": index[rows].to(device)}
        for j, (metric, fn, needs) in enumerate(calls):
            out = fn(classifier, x, h, y, **{need_: inputs[need_] for need_ in needs})
            scores[rows, j] = out[metric].detach().to("cpu", torch.float32)
        bar.update(len(rows))
    bar.close()
    scored[todo] = True
    computed["scores"].append(name)
    atomic_save({"scores": scores, "scored": scored, "meta": {"key": normalize_key(skey)}}, path)
    return torch.where(need[:, None], scores, torch.full_like(scores, float("nan")))
