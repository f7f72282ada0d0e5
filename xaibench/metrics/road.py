"""ROAD: Remove And Debias (Rong et al., 2022), noisy linear imputation solved on the device.

Definition (pytorch-grad-cam 1.5.7, ``pytorch_grad_cam/metrics/road.py``, the reference):

* **Which pixels are imputed.** For a heatmap ``h`` ``(H, W)`` and a
  percentile ``p``, ``t = np.percentile(h, p)`` (numpy's ``"linear"``
  method, reproduced bit for bit in :func:`numpy_percentile`). MoRF
  (``ROADMostRelevantFirst(p)``) keeps the pixels with ``h < t`` and imputes
  the rest, about the ``100 - p`` % most relevant; LeRF
  (``ROADLeastRelevantFirst(p)``) does the same on ``1 - h``: it keeps the
  pixels with ``1 - h < percentile(1 - h, p)``, about the ``p`` % most
  relevant, and imputes the rest. Ties at the threshold are imputed (strict
  ``<``); a heatmap with at least ``p`` % of its pixels at its minimum has
  every pixel imputed by MoRF at ``p``.
* **Noisy linear imputation.** Every imputed pixel equals the weighted mean
  of its in-image 8 neighbours (weight 1/6 for the 4 edge neighbours, 1/12
  for the 4 diagonal ones, renormalised at the border), known neighbours
  entering with their values: a sparse linear system per image, shared by
  the channels. Then ``noise · N(0, 1)`` is added to each imputed value (each
  channel its own draw); known pixels are unchanged. When every pixel is
  imputed the system has no known value and its solution is 0 (what SciPy's
  ``spsolve`` returns in the reference).
* **Score.** ``s(x) = softmax(model(x))[target]`` (grad-cam's
  ``ClassifierOutputSoftmaxTarget``; ``score="logit"`` is its
  ``ClassifierOutputTarget``) and the value at ``p`` is
  ``s(x_imputed) - s(x)`` (grad-cam's ``return_diff=True``). Per sample,
  ``road_morf`` / ``road_lerf`` are the means over the percentiles
  (``ROADMostRelevantFirstAverage`` / ``ROADLeastRelevantFirstAverage``) and
  ``road = (road_lerf - road_morf) / 2`` (``ROADCombined``).

Solver: preconditioned conjugate gradients on a whole chunk of images at
once (one system per image and channel, each with its own step sizes), the
preconditioner one symmetric multigrid V-cycle (one damped Jacobi sweep
before and after, 2×2 coarsening where a coarse pixel is unknown only if its
four fine pixels are, piecewise-constant transfers). Every grid lives in a
zero-padded flat layout, so each neighbour shift is a contiguous slice; the
operator is the separable ``[1, 2, 1] ⊗ [1, 2, 1]`` stencil (12 times the
neighbour weights, plus the centre). Each system stops when
``r·M⁻¹r <= rtol² · b·M⁻¹b`` (``rtol=1e-5``), at most ``max_iter=100``
iterations (11-17 were needed at 32, 64, 100 and 224 px); the solve runs in
the images' dtype. No SciPy, no per-image loop. The noise of a variant is a
counter-based draw of ``(seed, dataset index, direction, percentile)``, so a
sample's values do not depend on its batch.

Agreement with grad-cam (noise 0 on both sides; ``tests/test_metrics_road.py``,
``scripts/bench_road.py``): imputed pixels of images in ``[0, 1]`` within
1e-4 of SciPy's float64 solution (measured 1.7e-5 at 32 px, 3.0e-5 at 64 px,
1.5e-5 at 224 px with the float32 solve; 1e-6 in float64 at ``rtol=1e-10``),
scores within 1e-4 (measured 1e-6 on probabilities).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from xaibench.metrics.checks import check_choice, prepare_batch
from xaibench.metrics.engine import SCORES, forward_chunks, scores_from_logits
from xaibench.metrics.registry import register_metric
from xaibench.metrics.seeding import counter_uniform, sample_indices

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
"""grad-cam's default percentiles (``ROADCombined``)."""

ORDERS = ("morf", "lerf")

COARSE_SWEEPS = 4
"""Jacobi sweeps on the coarsest grid of the V-cycle."""

JACOBI = 1.0 / 16
"""Jacobi step: the inverse of the operator's diagonal inside the image (16; 12 on an edge,
9 in a corner, where the step is thus damped); residuals vanish off the unknowns."""


def numpy_percentile(sorted_values: Tensor, p: float) -> Tensor:
    """``np.percentile(row, p)`` (method ``"linear"``) of each sorted row, in the rows' dtype.

    Follows numpy 2's arithmetic: ``q = p / 100`` and the virtual index
    ``(n - 1) · q`` in the values' dtype, then ``a + (b - a)·g``, or
    ``b - (b - a)·(1 - g)`` when ``g >= 0.5``.

    Args:
        sorted_values: ``(N, P)`` ascending rows.
        p: percentile in ``[0, 100]``.

    Returns:
        ``(N,)`` thresholds.
    """
    dtype, n = sorted_values.dtype, sorted_values.shape[1]
    q = torch.tensor(p, dtype=dtype) / torch.tensor(100, dtype=dtype)
    virtual = torch.tensor(n - 1, dtype=dtype) * q
    below = torch.floor(virtual)
    if float(virtual) >= n - 1:
        return sorted_values[:, -1]
    lo = int(below)
    gamma = (virtual - below).to(sorted_values.device)
    a, b = sorted_values[:, lo], sorted_values[:, lo + 1]
    diff = b - a
    return b - diff * (1 - gamma) if float(gamma) >= 0.5 else a + diff * gamma


def removal_masks(heatmaps: Tensor, percentiles: Sequence[float], order: str) -> Tensor:
    """The pixels ROAD imputes, per sample and percentile: ``(N, K, H, W)`` bool.

    Args:
        heatmaps: ``(N, 1, H, W)`` attributions (any real values).
        percentiles: ``K`` values in ``[0, 100]``.
        order: ``"morf"`` (impute ``h >= percentile(h, p)``) or ``"lerf"``
            (impute ``1 - h >= percentile(1 - h, p)``), see the module docstring.
    """
    check_choice("order", order, ORDERS)
    h = heatmaps[:, 0]
    if order == "lerf":
        h = 1 - h
    srt = h.flatten(1).sort(dim=1).values
    thresholds = torch.stack([numpy_percentile(srt, p) for p in percentiles], dim=1)  # (N, K)
    return ~(h[:, None] < thresholds[:, :, None, None])


class _Operand:
    """A zero-margined flat buffer for ``B·C`` padded systems, with its shifted views cached.

    The systems (image × channel) are stored zero-padded by one pixel,
    flattened and concatenated, with ``Wp + 1`` zeros at both ends; the
    neighbour at ``(dy, dx)`` is the slice shifted by ``dy · Wp + dx`` and
    never leaves its own padded block.
    """

    def __init__(self, b: int, c: int, hp: int, wp: int, dtype: torch.dtype, device) -> None:
        m, t = wp + 1, b * c * hp * wp
        self.full = torch.zeros(t + 2 * m, dtype=dtype, device=device)
        self.flat = self.full[m : m + t]
        self.x = self.flat.view(b, c, hp * wp)  # (B, C, L)
        self.grid = self.flat.view(b, c, hp, wp)  # (B, C, Hp, Wp)
        self.left, self.right = self.full[m - 1 : m - 1 + t], self.full[m + 1 : m + 1 + t]
        self.up, self.down = self.full[m - wp : m - wp + t], self.full[m + wp : m + wp + t]


def _stencil(src: _Operand, tmp: _Operand, out: Tensor) -> Tensor:
    """``out = ([1, 2, 1] ⊗ [1, 2, 1]) * src`` (flat, ``src``'s size); ``tmp`` is scratch."""
    torch.add(src.left, src.right, out=tmp.flat)
    tmp.flat.add_(src.flat, alpha=2)
    torch.add(tmp.up, tmp.down, out=out)
    return out.add_(tmp.flat, alpha=2)


def _blocks(x: Tensor, h: int, w: int) -> Tensor:
    """The interior of a padded grid ``(B, C', Hp, Wp)`` as 2×2 blocks ``(B, C', h, 2, w, 2)``.

    With an odd side the last block takes one padding row/column, which holds zeros.
    """
    return x[:, :, 1 : 1 + 2 * h, 1 : 1 + 2 * w].unflatten(2, (h, 2)).unflatten(4, (w, 2))


class _Grid:
    """One level of the multigrid hierarchy: its operator, masks, buffers and coarser grid.

    The operator is ``A x = rem · (D x - ([1, 2, 1] ⊗ [1, 2, 1]) x)`` with
    ``D`` the stencil applied to the in-image indicator (16 inside, 12 on an
    edge, 9 in a corner): 12 times the imputation system of the unknowns.
    """

    def __init__(self, removed: Tensor, channels: int) -> None:
        # removed: (B, 1, H, W) in the solve dtype, 1 where the pixel is unknown
        b, _, hh, ww = removed.shape
        self.b, self.c, self.h, self.w = b, channels, hh, ww
        self.hp, self.wp = hh + 2, ww + 2
        dtype, device = removed.dtype, removed.device
        rem = nn.functional.pad(removed, (1, 1, 1, 1))  # (B, 1, Hp, Wp), zero border
        self.rem = rem.reshape(b, 1, self.hp * self.wp)  # (B, 1, L)
        diag = self._diagonal(dtype, device)  # (1, 1, L)
        self.neg_rem = -self.rem
        self.rem_diag = self.rem * diag

        def operand() -> _Operand:
            return _Operand(b, channels, self.hp, self.wp, dtype, device)

        self.z, self.tmp = operand(), operand()  # V-cycle output (a stencil operand), scratch
        self.work = torch.zeros_like(self.z.x)
        self.rhs = torch.zeros_like(self.z.x)  # restricted residual (when this grid is coarse)
        self.coarse = self._coarsen(removed)
        if self.coarse is not None:
            g = self.coarse
            work = _blocks(self.work.view(b, channels, self.hp, self.wp), g.h, g.w)
            self._res_parts = [work[:, :, :, i, :, j] for i in (0, 1) for j in (0, 1)]
            self._rhs_inner = g.rhs.view(b, channels, g.hp, g.wp)[:, :, 1:-1, 1:-1]
            self._rem_coarse = g.rem.view(b, 1, g.hp, g.wp)[:, :, 1:-1, 1:-1]
            self._z_blocks = _blocks(self.z.grid, g.h, g.w)
            self._rem_blocks = _blocks(rem, g.h, g.w)
            self._zc_inner = g.z.grid[:, :, 1:-1, 1:-1, None].unsqueeze(3)  # (B, C, h, 1, w, 1)

    def _diagonal(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        valid = _Operand(1, 1, self.hp, self.wp, dtype, device)
        valid.grid[:, :, 1:-1, 1:-1] = 1
        out = torch.empty_like(valid.flat)
        return _stencil(valid, _Operand(1, 1, self.hp, self.wp, dtype, device), out).view(1, 1, -1)

    def _coarsen(self, removed: Tensor) -> _Grid | None:
        """The next grid (a coarse pixel is unknown if its fine pixels all are), or None."""
        hh, ww = self.h, self.w
        if min(hh, ww) < 4:
            return None
        # pad to even sides with outside pixels, which count as unknown for the all-rule
        pad = nn.functional.pad(removed, (0, ww % 2, 0, hh % 2), value=1.0)
        coarse = torch.minimum(
            torch.minimum(pad[:, :, 0::2, 0::2], pad[:, :, 0::2, 1::2]),
            torch.minimum(pad[:, :, 1::2, 0::2], pad[:, :, 1::2, 1::2]),
        )
        if not bool(coarse.any()):
            return None
        return _Grid(coarse, self.c)

    def apply(self, src: _Operand, out: Tensor) -> Tensor:
        """``out = A src`` ``(B, C, L)`` for ``src`` supported on the unknowns."""
        _stencil(src, self.tmp, out.view(-1))
        return out.mul_(self.neg_rem).addcmul_(self.rem_diag, src.x)

    def _smooth(self, r: Tensor) -> None:
        """One damped Jacobi sweep on ``A z = r``: ``z += (r - A z) / 16``."""
        res = self.apply(self.z, self.work)
        torch.sub(r, res, out=res)
        self.z.x.add_(res, alpha=JACOBI)

    def vcycle(self, r: Tensor) -> Tensor:
        """One symmetric V-cycle from zero for ``A z = r``; returns ``z`` (this grid's buffer)."""
        torch.mul(r, JACOBI, out=self.z.x)
        if self.coarse is None:
            for _ in range(COARSE_SWEEPS - 1):
                self._smooth(r)
            return self.z.x
        res = self.apply(self.z, self.work)
        torch.sub(r, res, out=res)
        # restrict: the coarse right-hand side sums each 2x2 block (transpose of the prolongation)
        a, b, c, d = self._res_parts
        rhs = self._rhs_inner
        torch.add(a, b, out=rhs)
        rhs.add_(c).add_(d).mul_(self._rem_coarse)
        self.coarse.vcycle(self.coarse.rhs)
        # prolong: each coarse value to its 2x2 block, on this grid's unknowns
        self._z_blocks.addcmul_(self._zc_inner, self._rem_blocks)
        self._smooth(r)
        return self.z.x


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-system inner products ``(B, C, 1)`` of ``(B, C, L)`` tensors."""
    return torch.linalg.vecdot(a, b).unsqueeze(-1)


def solve_imputation(
    images: Tensor, removed: Tensor, *, rtol: float = 1e-5, max_iter: int = 100
) -> tuple[Tensor, int]:
    """Linear imputation (no noise): the removed pixels solved from their neighbours.

    Args:
        images: ``(B, C, H, W)`` floating point; its dtype is the solve's.
        removed: ``(B, H, W)`` bool, True where the pixel is imputed.
        rtol: relative tolerance on the preconditioned residual norm, per image and channel.
        max_iter: iteration cap (a ``RuntimeWarning`` names the residual if reached).

    Returns:
        ``(imputed images (B, C, H, W), iterations run)``.
    """
    b, c, hh, ww = images.shape
    rem = removed[:, None].to(images.dtype)
    grid = _Grid(rem, c)
    p = _Operand(b, c, grid.hp, grid.wp, images.dtype, images.device)  # search direction
    p.grid[:, :, 1:-1, 1:-1] = images * (1 - rem)  # first the known values
    r = torch.empty_like(p.x)
    _stencil(p, grid.tmp, r.view(-1))
    r.mul_(grid.rem)  # b = rem · stencil(known values); r = b - A·0
    x = torch.zeros_like(r)
    q = torch.empty_like(r)
    p.x.copy_(grid.vcycle(r))
    rz = _dot(r, p.x)
    stop = rz * rtol**2
    active = rz > 0
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    iterations = 0
    while iterations < max_iter and bool(active.any()):
        grid.apply(p, q)
        pq = _dot(p.x, q)
        alpha = torch.where(active & (pq > 0), rz / pq, zero)
        x.addcmul_(alpha, p.x)
        r.addcmul_(alpha, q, value=-1)
        z = grid.vcycle(r)
        rz_new = _dot(r, z)
        active = active & (rz_new > stop)
        beta = torch.where(active, rz_new / rz, zero)
        p.x.mul_(beta).add_(z)
        rz = rz_new
        iterations += 1
    if bool(active.any()):
        worst = float((rz / stop.clamp_min(torch.finfo(rz.dtype).tiny)).max().sqrt()) * rtol
        warnings.warn(
            f"ROAD imputation stopped at max_iter={max_iter} with a relative residual of "
            f"{worst:.2g} > rtol={rtol:g}; raise max_iter",
            RuntimeWarning,
            stacklevel=2,
        )
    solved = x.view(b, c, grid.hp, grid.wp)[:, :, 1:-1, 1:-1]
    return torch.where(removed[:, None], solved, images), iterations


def road_noise(seed: int, index: Tensor, stream: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Standard normal draws ``(B, *shape)``, row ``i`` a function of ``(seed, index[i], stream[i])``.

    The inverse normal CDF of a :func:`~xaibench.metrics.seeding.counter_uniform`
    draw centred in its 2**-24 bin (so within ±5.4); on ``index``'s device, float64.
    """
    u = counter_uniform(seed, index, stream, math.prod(shape))  # multiples of 2**-24 in [0, 1)
    return torch.special.ndtri(u.add_(2.0**-25)).view(index.shape[0], *shape)


def noisy_linear_imputation(
    images: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.01,
    seed: int = 0,
    index: Tensor | None = None,
    stream: Tensor | None = None,
    rtol: float = 1e-5,
    max_iter: int = 100,
) -> Tensor:
    """ROAD's imputation of ``removed`` pixels: linear fill plus ``noise · N(0, 1)`` on them.

    Args:
        images: ``(B, C, H, W)``.
        removed: ``(B, H, W)`` bool.
        noise: standard deviation of the added noise, in the images' units (grad-cam: 0.01).
        seed, index, stream: the noise of row ``i`` is drawn from ``(seed, index[i],
            stream[i])`` (default ``arange(B)`` and zeros).
        rtol, max_iter: see :func:`solve_imputation`.

    Returns:
        ``(B, C, H, W)`` imputed images (known pixels unchanged).
    """
    out, _ = solve_imputation(images, removed, rtol=rtol, max_iter=max_iter)
    if noise == 0:
        return out
    n = images.shape[0]
    index = sample_indices(n, index, images.device)
    stream = torch.zeros_like(index) if stream is None else stream.to(index)
    eps = road_noise(seed, index, stream, tuple(images.shape[1:])).to(images.dtype)
    return out.add_(eps.mul_(noise).mul_(removed[:, None]))


def default_solve_batch(images: Tensor) -> int:
    """Images per imputation chunk: buffers of about 2**16 values on a CPU (cache-sized), 2**24 on a GPU."""
    per_image = math.prod(images.shape[1:-2]) * (images.shape[-2] + 2) * (images.shape[-1] + 2)
    budget = 2**24 if images.device.type == "cuda" else 2**16
    return max(1, budget // per_image)


def _check_road_args(
    images: Tensor,
    heatmaps: Tensor,
    percentiles: Sequence[float],
    noise: float,
    rtol: float,
    **counts: int,
) -> tuple[float, ...]:
    """Validate ROAD's inputs and settings; return the percentiles as floats."""
    if images.dim() != 4 or tuple(heatmaps.shape) != (images.shape[0], 1, *images.shape[2:]):
        raise ValueError(
            f"ROAD imputes whole pixels: give images (N, C, H, W) and heatmaps (N, 1, H, W); "
            f"got images {tuple(images.shape)} and heatmaps {tuple(heatmaps.shape)}"
        )
    if isinstance(percentiles, (int, float)):
        percentiles = [percentiles]
    try:
        ps = () if isinstance(percentiles, str) else tuple(float(p) for p in percentiles)
    except (TypeError, ValueError):
        ps = ()
    if not ps or not all(0.0 <= p <= 100.0 for p in ps):
        raise ValueError(
            f"percentiles={percentiles!r} must be a non-empty list of numbers in [0, 100] "
            "(grad-cam: [10, 20, ..., 90])"
        )
    if isinstance(noise, bool) or not (isinstance(noise, (int, float)) and noise >= 0):
        raise ValueError(f"noise={noise!r} must be a number >= 0 (grad-cam: 0.01)")
    if isinstance(rtol, bool) or not (isinstance(rtol, (int, float)) and rtol > 0):
        raise ValueError(f"rtol={rtol!r} must be a number > 0 (default 1e-5)")
    for name, value in counts.items():
        if isinstance(value, bool) or not (isinstance(value, int) and value > 0):
            raise ValueError(f"{name}={value!r} must be a positive integer")
    return ps


@register_metric(
    "road",
    higher_is_better={"road": True, "road_morf": False, "road_lerf": True},
    random=True,
    smoke={"percentiles": [20, 50, 80, 90]},
)
def road(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    percentiles: Sequence[float] = PERCENTILES,
    noise: float = 0.01,
    score: str = "probability",
    difference: bool = True,
    target: str = "label",
    rtol: float = 1e-5,
    max_iter: int = 100,
    solve_batch: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    indices: Tensor | None = None,
) -> dict[str, Tensor]:
    """ROAD MoRF and LeRF curves and their means, per sample (grad-cam's definition, see module).

    Args:
        model: classifier returning logits ``(B, classes)``.
        images: ``(N, C, H, W)`` model inputs.
        heatmaps: ``(N, 1, H, W)`` attributions (any real values; only their order matters,
            and ``1 - h`` for LeRF).
        targets: ``(N,)`` class indices.
        percentiles: ``K`` heatmap percentiles in ``[0, 100]``; MoRF at ``p`` imputes
            about the top ``100 - p`` %, LeRF at ``p`` all but about the top ``p`` %.
        noise: standard deviation of the imputation noise, in input units (grad-cam: 0.01).
        score: ``"probability"`` (softmax of the target, grad-cam's
            ``ClassifierOutputSoftmaxTarget``), ``"logit"`` (``ClassifierOutputTarget``)
            or ``"accuracy"`` (argmax equals the target, Quantus's ROAD).
        difference: report ``s(imputed) - s(x)`` (grad-cam) rather than ``s(imputed)``.
        target: ``"label"`` scores ``targets``; ``"predicted"`` the model's predictions.
        rtol, max_iter: the imputation solver's tolerance and cap (:func:`solve_imputation`).
        solve_batch: imputed images solved together, each needing about 12 buffers of
            ``C·(H+2)·(W+2)`` values; None: :func:`default_solve_batch`.
        batch_size: images per forward pass.
        seed, indices: the noise of sample ``i`` is a function of ``(seed, indices[i])``
            (default ``arange(N)``), its direction and percentile.

    Returns:
        ``road`` ``(N,)`` = ``(road_lerf - road_morf) / 2`` (higher is better);
        ``road_morf`` ``(N,)`` mean MoRF value over the percentiles (lower is better);
        ``road_lerf`` ``(N,)`` mean LeRF value (higher is better);
        ``road_morf_curve``, ``road_lerf_curve`` ``(N, K)`` in the order of ``percentiles``.
    """
    check_choice("score", score, SCORES)
    images, heatmaps, targets = prepare_batch(
        model, images, heatmaps, targets, target=target, unit_range=False, batch_size=batch_size
    )
    if solve_batch is None:
        solve_batch = default_solve_batch(images)
    ps = _check_road_args(
        images, heatmaps, percentiles, noise, rtol, max_iter=max_iter, solve_batch=solve_batch,
        batch_size=batch_size,
    )  # fmt: skip
    n, k = images.shape[0], len(ps)
    index = sample_indices(n, indices, images.device)
    with torch.no_grad():
        logits = forward_chunks(model, lambda sl: images[sl], n, batch_size)
        clean = scores_from_logits(logits, targets, score)
        # variant v = (direction, percentile, sample), so a solve chunk shares a percentile
        masks = torch.stack([removal_masks(heatmaps, ps, o) for o in ORDERS])  # (2, N, K, H, W)
        masks = masks.transpose(1, 2).reshape(2 * k * n, *images.shape[2:])
        sample = torch.arange(n, device=images.device).repeat(2 * k)
        direction = torch.arange(2, device=images.device).repeat_interleave(k * n)
        pid = torch.tensor([round(p * 1000) for p in ps], device=images.device)
        stream = 2 * pid.repeat_interleave(n).repeat(2) + direction
        values = torch.empty(2 * k * n, dtype=clean.dtype, device=images.device)
        for start in range(0, 2 * k * n, solve_batch):
            sl = slice(start, min(start + solve_batch, 2 * k * n))
            si = sample[sl]
            imputed = noisy_linear_imputation(
                images[si], masks[sl], noise=noise, seed=seed, index=index[si],
                stream=stream[sl], rtol=rtol, max_iter=max_iter,
            )  # fmt: skip
            out = forward_chunks(model, imputed.__getitem__, imputed.shape[0], batch_size)
            values[sl] = scores_from_logits(out, targets[si], score)
    if difference:
        values = values - clean.repeat(2 * k)
    curves = values.view(2, k, n).transpose(1, 2)  # (2, N, K)
    morf, lerf = curves[0], curves[1]
    morf_mean, lerf_mean = morf.mean(dim=1), lerf.mean(dim=1)
    return {
        "road": (lerf_mean - morf_mean) / 2,
        "road_morf": morf_mean,
        "road_lerf": lerf_mean,
        "road_morf_curve": morf,
        "road_lerf_curve": lerf,
    }
