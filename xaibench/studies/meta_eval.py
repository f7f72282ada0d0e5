"""MetaQuantus's meta-evaluation scores (Hedström et al., TMLR 2023): IAC, IEC and MC.

A quality metric ``Q`` is meta-evaluated from its scores on ``E`` explainers and
``N`` samples before a perturbation (``q``, ``(E, N)``) and after each of ``K``
perturbation draws (``q_hat``, ``(K, E, N)``), at two levels:

* **NR** (noise resilience): a minor perturbation that keeps the model's
  predictions. A reliable metric's scores should not move: the scores are
  compared on the samples whose prediction did *not* change.
* **AR** (adversarial reactivity): a disruptive perturbation that destroys the
  model's predictions. A reliable metric's scores should get worse: compared on
  the samples whose prediction *did* change.

For each level two criteria, each in ``[0, 1]`` with 1 the ideal:

* **IAC** (intra-consistency), per explainer and draw: the p-value ``p`` of a
  two-sided Wilcoxon signed-rank test between ``q`` and ``q_hat`` on the kept
  samples (``zero_method="zsplit"``, as MetaQuantus); ``IAC_NR = p`` (the two
  distributions should be indistinguishable), ``IAC_AR = 1 - p`` (they should differ).
* **IEC** (inter-consistency), per draw: ``IEC_NR`` is the share of (sample,
  rank position) pairs at which the explainers' ranking by ``q_hat`` equals their
  ranking by ``q`` (the ranking should hold); ``IEC_AR`` is the share of
  (explainer, sample) pairs whose score got *worse* (see :func:`iec_ar`).

``MC`` (meta-consistency) is the mean of the four: ``(IAC_NR + IAC_AR + IEC_NR +
IEC_AR) / 4``, each averaged over explainers and draws first.

Undefined values are NaN, never 0: a draw whose kept subset is empty (or has no
finite pair) gives NaN for that draw, and draws are averaged with ``nanmean``; a
criterion that is NaN for every draw makes ``MC`` NaN. (MetaQuantus sets a p-value
to 0 when scipy raises; current scipy returns NaN for an empty sample instead.)
NaN scores are dropped pairwise (IAC, IEC_AR) or sample-wise (IEC_NR: a sample
with a NaN score for any explainer).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from torch import Tensor

CRITERIA = ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR")
"""The four meta-consistency criteria, in MetaQuantus's order."""

ArrayLike = Tensor | np.ndarray


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().double().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _check(q: np.ndarray, q_hat: np.ndarray, keep: np.ndarray) -> None:
    if q.ndim != 2 or q.shape != q_hat.shape or keep.shape != (q.shape[1],):
        raise ValueError(
            f"scores {q.shape} and perturbed scores {q_hat.shape} must both be (E, N) and "
            f"keep {keep.shape} must be (N,) = ({q.shape[-1]},)"
        )
    if keep.dtype != bool:
        raise ValueError(f"keep must be a bool mask over samples, got dtype {keep.dtype}")


def _wilcoxon(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples (``n >= 2``), zeros split.

    scipy's ``method="auto"``: exact for ``n <= 50`` without ties or zeros, an
    exhaustive (deterministic) permutation test for ``n <= 13`` with them, the
    normal approximation otherwise.
    """
    return stats.wilcoxon(a, b, alternative="two-sided", zero_method="zsplit").pvalue


def iac(q: ArrayLike, q_hat: ArrayLike, keep: ArrayLike, *, adversarial: bool) -> np.ndarray:
    """Intra-consistency per explainer, ``(E,)``: ``p`` (NR) or ``1 - p`` (AR).

    Args:
        q: ``(E, N)`` scores before the perturbation.
        q_hat: ``(E, N)`` scores after one perturbation draw.
        keep: ``(N,)`` bool, the samples to compare (NR: prediction unchanged;
            AR: prediction changed).
        adversarial: ``False`` for NR, ``True`` for AR.

    Returns:
        Per explainer the two-sided Wilcoxon signed-rank p-value of ``q`` versus
        ``q_hat`` on the kept samples with finite scores (``zero_method="zsplit"``:
        all-equal pairs give ``p = 1``; a single pair gives ``p = 1``, its exact
        value), or ``1 - p`` for AR; NaN without any pair.
    """
    q, q_hat, keep = _np(q), _np(q_hat), _np(keep)
    _check(q, q_hat, keep)
    out = np.full(q.shape[0], np.nan)
    for e in range(q.shape[0]):
        a, b = q[e, keep], q_hat[e, keep]
        finite = np.isfinite(a) & np.isfinite(b)
        n = int(finite.sum())
        if n == 0:
            continue
        # one pair: the exact two-sided p is 1 whatever its sign (scipy raises for n = 1)
        p = 1.0 if n == 1 else float(_wilcoxon(a[finite], b[finite]))
        out[e] = 1.0 - p if adversarial else p
    return out


def iec_nr(q: ArrayLike, q_hat: ArrayLike, keep: ArrayLike) -> float:
    """Inter-consistency under a minor perturbation: does the explainers' ranking hold?

    Per kept sample, the explainers are sorted by score (ascending, stable) before
    and after the perturbation; each of the ``E`` rank positions counts 1 if the
    same explainer holds it in both orders (MetaQuantus's ``compute_iec_resilience``).
    The sort direction does not matter: only equality of the orders is tested.

    Args:
        q, q_hat: ``(E, N)`` scores before and after one draw.
        keep: ``(N,)`` bool, samples whose prediction did not change.

    Returns:
        The share of agreeing (sample, position) pairs in ``[0, 1]``; NaN if no
        kept sample has finite scores for every explainer.
    """
    q, q_hat, keep = _np(q), _np(q_hat), _np(keep)
    _check(q, q_hat, keep)
    cols = keep & np.isfinite(q).all(axis=0) & np.isfinite(q_hat).all(axis=0)
    if not cols.any():
        return math.nan
    r, r_hat = (
        np.argsort(q[:, cols], axis=0, kind="stable"),
        np.argsort(q_hat[:, cols], axis=0, kind="stable"),
    )
    return float((r == r_hat).mean())


def iec_ar(q: ArrayLike, q_hat: ArrayLike, keep: ArrayLike, *, higher_is_better: bool) -> float:
    """Inter-consistency under a disruptive perturbation: did every explainer's score get worse?

    The correct rule: an (explainer, sample) pair counts 1 if its perturbed score
    is strictly *worse* than its unperturbed one, i.e. ``q_hat < q`` when higher
    is better and ``q_hat > q`` when lower is better; ties count 0 (the metric did
    not react).

    The released MetaQuantus code gets this wrong for higher-is-better metrics.
    ``MetaEvaluation.compute_iec_adversary`` (``metaquantus/meta_evaluation.py``)
    receives ``score_direction`` as the *string* ``"higher"`` or ``"lower"``
    (``metaquantus/helpers/configs.py``; ``Estimator`` in ``configs_utils.py``)
    but tests it with ``if score_direction:``. Every non-empty string is truthy,
    so both directions take the first branch, which counts ``q_star < q_hat``: a
    score that went *up*. That is the right rule for lower-is-better metrics and
    the reverse of it for higher-is-better ones, whose IEC_AR there is the share
    of scores that *improved* when the model or input was destroyed (about
    ``1 -`` the correct value, ties aside). :func:`iec_ar_as_released` gives that
    value for comparison. Checked on MetaQuantus's main branch at commit 84bdc2f
    (April 2024); older versions passed a bool ``lower_is_better`` there and were right.
    Here the direction is a bool taken from the metric registry.

    Args:
        q, q_hat: ``(E, N)`` scores before and after one draw.
        keep: ``(N,)`` bool, samples whose prediction changed.
        higher_is_better: the metric's direction (the registry's, e.g.
            :func:`~xaibench.metrics.registry.entry_spec`).

    Returns:
        The share of worsened (explainer, sample) pairs among the kept ones with
        finite scores, in ``[0, 1]``; NaN if there are none.
    """
    if not isinstance(higher_is_better, (bool, np.bool_)):
        raise ValueError(
            f"higher_is_better must be True or False, got {higher_is_better!r}: IEC_AR needs a "
            "metric key with a better direction (the registry declares None for a count)"
        )
    q, q_hat, keep = _np(q), _np(q_hat), _np(keep)
    _check(q, q_hat, keep)
    a, b = q[:, keep], q_hat[:, keep]
    finite = np.isfinite(a) & np.isfinite(b)
    if not finite.any():
        return math.nan
    worse = (b < a) if higher_is_better else (b > a)
    return float(worse[finite].mean())


def iec_ar_as_released(q: ArrayLike, q_hat: ArrayLike, keep: ArrayLike) -> float:
    """IEC_AR as the released MetaQuantus computes it for *either* ``score_direction``.

    ``if "higher":`` and ``if "lower":`` both take the branch ``q_star < q_hat``,
    the lower-is-better rule (see :func:`iec_ar`). For comparison only.
    """
    return iec_ar(q, q_hat, keep, higher_is_better=False)


def _mean(x: list[float] | np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    return math.nan if not np.isfinite(x).any() else float(np.nanmean(x))


def meta_consistency(
    q: ArrayLike,
    q_nr: ArrayLike,
    keep_nr: ArrayLike,
    q_ar: ArrayLike,
    keep_ar: ArrayLike,
    *,
    higher_is_better: bool,
) -> dict[str, float]:
    """The four criteria and MC of one metric under one perturbation test.

    Args:
        q: ``(E, N)`` unperturbed scores.
        q_nr, q_ar: ``(K, E, N)`` scores after each of ``K`` minor (NR) and
            disruptive (AR) draws.
        keep_nr, keep_ar: ``(K, N)`` bool: per draw, samples whose prediction
            stayed the same (NR) or changed (AR).
        higher_is_better: the metric's direction (for IEC_AR).

    Returns:
        ``IAC_NR``, ``IAC_AR`` (mean over explainers and draws), ``IEC_NR``,
        ``IEC_AR`` (mean over draws), ``MC`` (mean of the four; NaN if one is),
        ``MC_std`` (std over draws of the per-draw MC, MetaQuantus's spread),
        ``IEC_AR_as_released`` (:func:`iec_ar_as_released`, mean over draws).
    """
    q, q_nr, q_ar = _np(q), _np(q_nr), _np(q_ar)
    keep_nr, keep_ar = _np(keep_nr).astype(bool), _np(keep_ar).astype(bool)
    if (
        q_nr.ndim != 3
        or q_ar.ndim != 3
        or q_nr.shape[0] != keep_nr.shape[0]
        or q_ar.shape[0] != keep_ar.shape[0]
    ):
        raise ValueError(
            f"perturbed scores must be (K, E, N) with one keep row per draw; got "
            f"{q_nr.shape} / keep {keep_nr.shape} (NR), {q_ar.shape} / keep {keep_ar.shape} (AR)"
        )
    nr, ar = list(zip(q_nr, keep_nr, strict=True)), list(zip(q_ar, keep_ar, strict=True))
    per_draw = {
        "IAC_NR": [_mean(iac(q, qh, k, adversarial=False)) for qh, k in nr],
        "IAC_AR": [_mean(iac(q, qh, k, adversarial=True)) for qh, k in ar],
        "IEC_NR": [iec_nr(q, qh, k) for qh, k in nr],
        "IEC_AR": [iec_ar(q, qh, k, higher_is_better=higher_is_better) for qh, k in ar],
    }
    out = {c: _mean(v) for c, v in per_draw.items()}
    out["MC"] = float(np.mean([out[c] for c in CRITERIA]))
    out["MC_std"] = math.nan
    if len(keep_nr) == len(keep_ar):  # draw d's MC: mean of its four criteria (NaN if one is)
        mc_draws = np.array([per_draw[c] for c in CRITERIA], dtype=float).mean(axis=0)
        if np.isfinite(mc_draws).any():
            out["MC_std"] = float(np.std(mc_draws[np.isfinite(mc_draws)]))
    out["IEC_AR_as_released"] = _mean([iec_ar_as_released(q, qh, k) for qh, k in ar])
    return out
