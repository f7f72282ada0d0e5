"""DeepFaith (ICLR 2026): a patch Transformer trained to explain a frozen classifier faithfully.

The explainer ``φ: (N, C, H, W) -> (N, 1, H/p, W/p)`` in [0, 1] (one saliency
value per ``p × p`` patch, ``P = HW/p²`` patches) is trained with

* the **local correlation** loss (self-supervised, from the faithfulness
  metrics' shared optimum), for ``k`` random patch subsets ``I_j`` per image::

      L_LC = 1/2 - 1/2 · mean_x ρ[(Σ_{i∈I_j} φ(x)_i)_j, (Δ_j)_j]
      Δ_j  = s(x) - s(x with the patches of I_j set to the baseline)

  with ``s`` the softmax probability of the target and ρ Pearson's correlation;
* the **pattern consistency** loss against the kept prior explanations ``Z``
  of a sample (average-pooled to the patch grid)::

      L_PC = 1/|Z| · Σ_{(x, s) ∈ Z} (1 - ρ[φ(x), s])      ∈ [0, 2]

* joined as ``α·L_PC + (1-α)·L_LC`` with the variance-monitored
  :class:`AlphaSchedule`; a sample without a kept prior contributes ``L_LC`` only.

:class:`DeepFaithModule` holds the frozen classifier (eval mode, no
gradients, bitwise unchanged), the :class:`PatchTransformer` and the priors;
its checkpoints hold the transformer only.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench.baselines import make_baseline
from xaibench.data.datasets import unpack_batch
from xaibench.errors import ConfigError
from xaibench.metrics.engine import evaluate_variants
from xaibench.metrics.model_state import eval_mode
from xaibench.metrics.seeding import per_sample_rand, sample_seed

TRANSFORMER_PREFIX = "transformer."
LOSS_MODES = ("full", "pc", "lc")


# -- the explainer network ----------------------------------------------------------------------
class PatchTransformer(nn.Module):
    """Image ``(N, C, H, W)`` -> per-patch saliency ``(N, 1, H/p, W/p)`` in [0, 1].

    A learned patch embedding (``Conv2d`` with kernel and stride ``patch``), a
    learned position embedding, an ``nn.TransformerEncoder`` (pre-norm,
    ``depth`` layers of ``width`` channels and ``heads`` heads), a final
    LayerNorm and a linear head per token followed by a sigmoid.

    Args:
        image_size: input side in pixels (square inputs); divisible by ``patch``.
        in_channels: image channels.
        patch: patch side in pixels.
        depth: encoder layers ``L``.
        width: token width ``d`` (divisible by ``heads``).
        heads: attention heads.
        mlp_ratio: feed-forward width as a multiple of ``width``.
        dropout: dropout inside the encoder layers.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int = 3,
        *,
        patch: int = 8,
        depth: int = 2,
        width: int = 64,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_architecture(image_size, patch=patch, depth=depth, width=width, heads=heads)
        self.image_size, self.patch = int(image_size), int(patch)
        self.grid = self.image_size // self.patch
        self.embed = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, self.grid * self.grid, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=max(1, int(width * mlp_ratio)),
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)

    def forward(self, images: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, 1, H/p, W/p)`` in [0, 1]."""
        n, _, h, w = images.shape
        if (h, w) != (self.image_size, self.image_size):
            raise ValueError(
                f"images {tuple(images.shape)} must be {self.image_size}x{self.image_size} "
                "(the size this DeepFaith explainer was built for)"
            )
        tokens = self.embed(images).flatten(2).transpose(1, 2)  # (N, d, g, g) -> (N, g*g, d)
        tokens = self.norm(self.encoder(tokens + self.pos))
        sal = torch.sigmoid(self.head(tokens))  # (N, g*g, 1)
        return sal.transpose(1, 2).reshape(n, 1, self.grid, self.grid)  # row-major patch grid


def check_architecture(image_size: int, *, patch: int, depth: int, width: int, heads: int) -> None:
    """``ConfigError`` (a ``ValueError``) naming the ``explainer.*`` key of a bad setting."""
    for key, v in {"patch": patch, "depth": depth, "width": width, "heads": heads}.items():
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise ConfigError(f"explainer.{key}={v!r} must be an integer >= 1")
    if width % heads:
        raise ConfigError(f"explainer.width={width} must be divisible by explainer.heads={heads}")
    if image_size % patch:
        raise ConfigError(
            f"explainer.patch={patch} does not divide the image size {image_size}: choose a "
            f"patch size that divides it (e.g. {_divisor_near(image_size, patch)})"
        )


def _divisor_near(n: int, p: int) -> int:
    """The divisor of ``n`` closest to ``p`` (smaller first on ties)."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - p), d))


# -- losses -----------------------------------------------------------------------------------
def pearson(a: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim`` (broadcast), in [-1, 1].

    NaN-safe in value and gradient: where either vector is constant (its
    spread is within a few float ulps of its magnitude) the correlation is 0.
    """
    a, b = torch.broadcast_tensors(a, b)
    ac = a - a.mean(dim, keepdim=True)
    bc = b - b.mean(dim, keepdim=True)
    ssa, ssb = (ac * ac).sum(dim), (bc * bc).sum(dim)
    n = a.shape[dim]
    tol = 16 * torch.finfo(a.dtype).eps
    # "constant": the spread is rounding noise relative to the values' magnitude
    flat_a = ssa <= n * (tol * a.detach().abs().amax(dim) + torch.finfo(a.dtype).tiny) ** 2
    flat_b = ssb <= n * (tol * b.detach().abs().amax(dim) + torch.finfo(b.dtype).tiny) ** 2
    ok = ~(flat_a | flat_b)
    denom = torch.where(ok, ssa * ssb, torch.ones_like(ssa))  # 1 where unused: finite gradients
    r = (ac * bc).sum(dim) * torch.rsqrt(denom)
    return torch.where(ok, r, torch.zeros_like(r)).clamp(-1.0, 1.0)


def pattern_consistency_loss(phi: Tensor, priors: Tensor, kept: Tensor) -> tuple[Tensor, Tensor]:
    """``L_PC``: mean of ``1 - ρ(φ(x), s)`` over the kept priors ``s``.

    Args:
        phi: ``(B, P)`` patch saliency.
        priors: ``(B, K, P)`` prior maps on the same patch grid.
        kept: ``(B, K)`` bool, the priors that count.

    Returns:
        ``(loss, per_sample)``: ``loss`` the scalar mean over every kept
        (sample, prior) pair of the batch (the paper's ``1/|Z| Σ``), in [0, 2];
        ``per_sample`` ``(B,)`` the mean over each sample's kept priors, 0 for a
        sample with none (``kept.any(1)`` tells which). With no kept prior in the
        batch the loss is 0 and every term is multiplied by 0 (zero gradients).
    """
    if priors.shape[:2] != kept.shape or priors.shape[0] != phi.shape[0]:
        raise ValueError(
            f"priors {tuple(priors.shape)}, kept {tuple(kept.shape)} and phi "
            f"{tuple(phi.shape)} must be (B, K, P), (B, K) and (B, P)"
        )
    terms = 1.0 - pearson(phi[:, None, :], priors)  # (B, 1, P) vs (B, K, P) -> (B, K)
    w = kept.to(terms.dtype)
    loss = (terms * w).sum() / w.sum().clamp_min(1.0)
    per_sample = (terms * w).sum(1) / w.sum(1).clamp_min(1.0)
    return loss, per_sample


def local_correlation_loss(
    phi: Tensor, delta: Tensor, subsets: Tensor, reduction: str = "mean"
) -> Tensor:
    """``L_LC = 1/2 - 1/2 · mean_b ρ_b((Σ_{i∈I_j} φ_i)_j, (Δ_j)_j)``, in [0, 1].

    Args:
        phi: ``(B, P)`` patch saliency.
        delta: ``(B, k)`` perturbation effects (:func:`perturbation_effects`).
        subsets: ``(B, k, P)`` bool, ``subsets[b, j, i]``: patch ``i`` is in ``I_j``.
        reduction: ``"mean"`` (scalar) or ``"none"`` (``(B,)``: ``(1 - ρ_b) / 2``).
    """
    if subsets.shape[:2] != delta.shape or subsets.shape[::2] != phi.shape:
        raise ValueError(
            f"phi {tuple(phi.shape)}, delta {tuple(delta.shape)} and subsets "
            f"{tuple(subsets.shape)} must be (B, P), (B, k) and (B, k, P)"
        )
    sums = torch.einsum("bkp,bp->bk", subsets.to(phi.dtype), phi)  # saliency mass of each I_j
    per_sample = 0.5 - 0.5 * pearson(sums, delta.to(phi.dtype))
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction={reduction!r} must be 'mean' or 'none'")


def subset_keep(subsets: Tensor, patch: int) -> Tensor:
    """Pixel keep-masks ``(B, 1, g·p, g·p)`` bool of patch subsets ``(B, g·g)`` (True = kept)."""
    g = math.isqrt(subsets.shape[-1])
    grid = subsets.view(-1, 1, g, g)  # row-major patch grid, as PatchTransformer's tokens
    return ~grid.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


def perturbation_effects(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    subsets: Tensor,
    patch: int,
    *,
    baseline: float | str = 0.0,
    batch_size: int = 1024,
) -> Tensor:
    """``Δ_j = s(x) - s(x ∖ I_j)`` for every image and subset, ``(B, k)``, no gradient.

    ``s`` is the softmax probability of ``targets`` (the engine's
    ``score="confidence"``); ``x ∖ I_j`` has the pixels of the patches in
    ``I_j`` set to ``baseline`` (0 = ``X ⊙ M``). The ``B·(k+1)`` forward passes
    (the unperturbed image is variant ``k``) run through
    :func:`~xaibench.metrics.engine.evaluate_variants` in chunks of
    ``batch_size``, in eval mode, under ``torch.inference_mode``.

    Args:
        model: classifier returning logits.
        images: ``(B, C, H, W)`` with ``H = W = g·patch``.
        targets: ``(B,)`` int64 classes.
        subsets: ``(B, k, g·g)`` bool, True = the patch is removed in that variant.
        patch: patch side in pixels.
    """
    b, k, num_patches = subsets.shape
    if images.shape[-1] * images.shape[-2] != num_patches * patch * patch:
        raise ValueError(
            f"subsets over {num_patches} patches of {patch}px do not tile images "
            f"{tuple(images.shape)}"
        )
    # variant k removes nothing: s(x) from the same chunks
    removed = torch.cat([subsets, subsets.new_zeros(b, 1, num_patches)], dim=1)

    def keep_fn(si: Tensor, ki: Tensor) -> Tensor:
        return subset_keep(removed[si, ki], patch)

    fill = make_baseline(images, baseline)
    with eval_mode(model):
        scores = evaluate_variants(
            model,
            images,
            targets,
            keep_fn,
            k + 1,
            fill=fill,
            score="confidence",
            batch_size=batch_size,
        )
    delta = scores[:, k : k + 1] - scores[:, :k]
    return delta.clone()  # a normal tensor (the engine's are inference tensors)


def draw_subsets(
    n: int, k: int, num_patches: int, fraction: float, generator: torch.Generator
) -> Tensor:
    """``(n, k, num_patches)`` bool: each patch in each subset with probability ``fraction``."""
    return torch.rand(n, k, num_patches, generator=generator) < fraction


# -- the α schedule -----------------------------------------------------------------------------
class AlphaSchedule:
    """DeepFaith's variance-monitored weight α of ``L_PC`` (``1 - α`` weighs ``L_LC``).

    ``α = 1`` while *monitoring*: the variance of the last ``window`` (``e``)
    values of ``L_PC`` is watched; at the first step ``t_start`` where it is
    below ``eps`` (with a full window) α starts *decaying*::

        α(t) = 1 - 1 / (1 + exp(-(t - t0) / C)),   t0 = t_start + t0_offset

    ``t0_offset`` defaults to ``3·C``, so α(t_start) = 1 - σ(-3) ≈ 0.95 (a
    smooth start); α is 1/2 at ``t0`` and ≈ 0.05 at ``t0 + 3C``. While
    decaying, a variance above ``C · eps`` resets α to 1 and monitoring
    starts again (the window keeps its values). The variance is the
    population variance (divisor ``e``). Steps count calls of :meth:`step`.

    Args:
        window: ``e``, the number of recent ``L_PC`` values whose variance is watched.
        eps: ``ε``, the variance below which decay starts.
        C: the decay time scale in steps, and the reset factor (reset above ``C·ε``).
        t0_offset: steps from the decay start to α = 1/2 (default ``3·C``).
    """

    def __init__(
        self, window: int = 20, eps: float = 1e-3, C: float = 20.0, t0_offset: float | None = None
    ) -> None:
        if not (isinstance(window, int) and window >= 2):
            raise ConfigError(f"explainer.window={window!r} must be an integer >= 2")
        if not (eps > 0 and C > 0):
            raise ConfigError(f"explainer.var_eps={eps!r} and explainer.C={C!r} must be > 0")
        self.window, self.eps, self.C = window, float(eps), float(C)
        self.t0_offset = 3.0 * self.C if t0_offset is None else float(t0_offset)
        self.history: deque[float] = deque(maxlen=window)
        self.t = 0
        self.alpha = 1.0
        self.t_start: int | None = None  # set while decaying

    @property
    def decaying(self) -> bool:
        return self.t_start is not None

    def variance(self) -> float | None:
        """Population variance of the window, or None until it is full."""
        if len(self.history) < self.window:
            return None
        m = sum(self.history) / self.window
        return sum((v - m) ** 2 for v in self.history) / self.window

    def step(self, l_pc: float) -> float:
        """Record ``L_PC`` of step ``t`` and return α for that step."""
        t = self.t
        self.t += 1
        self.history.append(float(l_pc))
        var = self.variance()
        if self.t_start is None:
            if var is not None and var < self.eps:
                self.t_start = t
        elif var is not None and var > self.C * self.eps:
            self.t_start = None  # unstable again: back to fitting the priors
        if self.t_start is None:
            self.alpha = 1.0
        else:
            t0 = self.t_start + self.t0_offset
            self.alpha = 1.0 - 1.0 / (1.0 + math.exp(-(t - t0) / self.C))
        return self.alpha

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": list(self.history),
            "t": self.t,
            "alpha": self.alpha,
            "t_start": self.t_start,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = deque((float(v) for v in state["history"]), maxlen=self.window)
        self.t, self.alpha = int(state["t"]), float(state["alpha"])
        self.t_start = None if state["t_start"] is None else int(state["t_start"])


# -- the LightningModule -----------------------------------------------------------------------
class DeepFaithModule(pl.LightningModule):
    """DeepFaith training of a :class:`PatchTransformer` on a frozen classifier.

    Args:
        net: the frozen base classifier (returns logits).
        image_size: input side in pixels.
        in_channels: image channels.
        optimizer: ``params -> Optimizer`` (a ``_partial_`` config; default AdamW, lr 1e-3).
        patch, depth, width, heads, mlp_ratio, dropout: see :class:`PatchTransformer`.
        loss: ``"full"`` (``α·L_PC + (1-α)·L_LC``, scheduled α), ``"pc"`` (``L_PC``
            only) or ``"lc"`` (``L_LC`` only): the paper's ablations.
        n_subsets: ``k``, random patch subsets per image and step.
        subset_fraction: probability of each patch being in a subset.
        baseline: value of removed pixels (see :func:`~xaibench.baselines.make_baseline`).
        target: class whose probability ``s`` is perturbed: ``"label"`` or ``"predicted"``.
        window, var_eps, C, t0_offset: the :class:`AlphaSchedule`.
        seed: seed of the subset draws (training: ``(seed, step)``; validation:
            ``(seed, sample index)``, the same subsets every epoch).
        val_samples: validation images scored each epoch (the first ones, fixed order).
        metric_batch_size: perturbed images per classifier forward pass.
        priors: a :class:`~xaibench.explainers.priors.PriorSet` on the patch grid,
            or None (``L_LC`` only).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        image_size: int,
        in_channels: int = 3,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        patch: int = 8,
        depth: int = 2,
        width: int = 64,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        loss: str = "full",
        n_subsets: int = 16,
        subset_fraction: float = 0.5,
        baseline: float | str = 0.0,
        target: str = "label",
        window: int = 20,
        var_eps: float = 1e-3,
        C: float = 20.0,
        t0_offset: float | None = None,
        seed: int = 0,
        val_samples: int = 512,
        metric_batch_size: int = 1024,
        priors: Any = None,
    ) -> None:
        super().__init__()
        check_training(
            loss=loss, n_subsets=n_subsets, subset_fraction=subset_fraction, target=target
        )
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net.eval()  # frozen: eval mode for good (see train())
        self.transformer = PatchTransformer(
            image_size,
            in_channels,
            patch=patch,
            depth=depth,
            width=width,
            heads=heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
        )
        self.optimizer_factory = optimizer
        self.loss_mode, self.n_subsets = loss, int(n_subsets)
        self.subset_fraction, self.baseline, self.target = float(subset_fraction), baseline, target
        self.schedule = AlphaSchedule(window, var_eps, C, t0_offset)
        self.seed, self.val_samples = int(seed), int(val_samples)
        self.metric_batch_size = int(metric_batch_size)
        self.strict_loading = False  # checkpoints hold the transformer only
        self._val_seen = 0
        self.best_val_l_lc = float("inf")
        self.set_priors(priors)

    @property
    def patch(self) -> int:
        return self.transformer.patch

    @property
    def num_patches(self) -> int:
        return self.transformer.grid**2

    def set_priors(self, priors: Any) -> None:
        """Hold ``priors`` (a ``PriorSet`` or None) as non-persistent buffers."""
        if priors is None or len(priors.index) == 0:
            index, maps, kept = None, None, None
        else:
            g = self.transformer.grid
            if tuple(priors.maps.shape[-2:]) != (g, g) or priors.maps.dim() != 5:
                raise ValueError(
                    f"prior maps {tuple(priors.maps.shape)} must be (M, K, 1, {g}, {g}): "
                    f"the patch grid of explainer.patch={self.patch}"
                )
            index = priors.index.to(torch.int64)
            if len(index) > 1 and not bool((index[1:] > index[:-1]).all()):
                raise ValueError("PriorSet.index must be strictly ascending")
            maps = priors.maps.flatten(2).float()  # (M, K, 1, g, g) -> (M, K, P)
            kept = priors.kept.to(torch.bool)
        self.register_buffer("prior_index", index, persistent=False)
        self.register_buffer("prior_maps", maps, persistent=False)
        self.register_buffer("prior_kept", kept, persistent=False)

    def lookup_priors(self, index: Tensor) -> tuple[Tensor, Tensor] | None:
        """Priors ``(B, K, P)`` and kept ``(B, K)`` of the samples ``index (B,)``; None without priors.

        A sample absent from the PriorSet gets no kept prior.
        """
        if self.prior_index is None:
            return None
        index = index.to(self.prior_index.device, torch.int64)
        pos = torch.searchsorted(self.prior_index, index).clamp(max=len(self.prior_index) - 1)
        found = self.prior_index[pos] == index
        return self.prior_maps[pos], self.prior_kept[pos] & found[:, None]

    def train(self, mode: bool = True) -> DeepFaithModule:
        """Only the transformer follows ``mode``; the classifier stays in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    def explain(self, images: Tensor) -> Tensor:
        """Heatmaps ``(N, 1, H, W)`` in [0, 1]: the patch saliency, bilinearly upsampled."""
        low = self.transformer(images)
        full = F.interpolate(low, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return full.clamp(0.0, 1.0)

    def forward(self, images: Tensor) -> Tensor:
        return self.explain(images)

    # -- training ---------------------------------------------------------------------------
    def _targets(self, images: Tensor, labels: Tensor) -> Tensor:
        if self.target == "label":
            return labels
        with torch.no_grad(), eval_mode(self.net):
            return self.net(images).argmax(1)

    def _lc(self, phi: Tensor, images: Tensor, targets: Tensor, subsets: Tensor) -> Tensor:
        """Per-sample ``L_LC`` ``(B,)`` for ``subsets (B, k, P)``."""
        subsets = subsets.to(images.device)
        delta = perturbation_effects(
            self.net,
            images,
            targets,
            subsets,
            self.patch,
            baseline=self.baseline,
            batch_size=self.metric_batch_size,
        )
        return local_correlation_loss(phi, delta, subsets, reduction="none")

    def losses(self, batch, step: int = 0) -> dict[str, Tensor | float]:
        """The training losses of one batch at training step ``step`` (advances the α schedule).

        Returns:
            ``loss`` (None in ``pc`` mode when no sample of the batch has a kept
            prior: nothing to fit), ``alpha``, ``kept_priors`` (mean kept priors
            per sample) and, where computed, ``l_pc`` and ``l_lc`` (detached).
        """
        b = unpack_batch(batch)
        n = len(b.labels)
        phi = self.transformer(b.images).flatten(1)  # (B, 1, g, g) -> (B, P)
        out: dict[str, Tensor | float | None] = {"kept_priors": 0.0}
        found = self.lookup_priors(b.index)
        has = torch.zeros(n, dtype=torch.bool, device=phi.device)
        pc_b = phi.new_zeros(n)
        if found is not None:
            maps, kept = found
            l_pc, pc_b = pattern_consistency_loss(phi, maps.to(phi.dtype), kept)
            has = kept.any(1)
            out["kept_priors"] = kept.sum(1).to(phi.dtype).mean()
            if bool(has.any()):
                out["l_pc"] = l_pc.detach()
        if self.loss_mode == "pc":
            out["alpha"] = 1.0
            out["loss"] = l_pc if bool(has.any()) else None
            return out
        g = torch.Generator().manual_seed(sample_seed(self.seed, step))
        subsets = draw_subsets(n, self.n_subsets, self.num_patches, self.subset_fraction, g)
        lc_b = self._lc(phi, b.images, self._targets(b.images, b.labels), subsets)
        out["l_lc"] = lc_b.detach().mean()
        if self.loss_mode == "lc":
            alpha = 0.0
        elif "l_pc" in out:
            alpha = self.schedule.step(float(out["l_pc"]))
        else:
            alpha = self.schedule.alpha
        # per sample: α·L_PC + (1-α)·L_LC with a kept prior, L_LC alone without one
        w_pc = has.to(phi.dtype) * alpha
        out["alpha"] = float(alpha)
        out["loss"] = (w_pc * pc_b + (1.0 - w_pc) * lc_b).mean()
        return out

    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        out = self.losses(batch, self.global_step)
        loss = out["loss"]
        if loss is None:
            return None  # pc mode, no prior in this batch: skip the step
        logs = {f"train/{k}": v for k, v in out.items() if k != "loss"}
        logs["train/loss"] = loss.detach()
        n = len(unpack_batch(batch).labels)
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=n)
        return loss

    def configure_optimizers(self):
        return self.optimizer_factory(params=self.transformer.parameters())

    # -- validation: L_LC on fixed subsets --------------------------------------------------------
    def val_subsets(self, index: Tensor) -> Tensor:
        """``(B, k, P)`` bool subsets of the samples ``index``, from ``(seed, index)`` only."""
        u = per_sample_rand(self.seed, index.cpu(), (self.n_subsets, self.num_patches))
        return u < self.subset_fraction

    def on_validation_epoch_start(self) -> None:
        self._val_seen = 0

    def validation_step(self, batch, batch_idx: int) -> None:
        b = unpack_batch(batch)
        take = min(len(b.labels), self.val_samples - self._val_seen)
        if take <= 0:
            return
        self._val_seen += take
        images, labels, index = b.images[:take], b.labels[:take], b.index[:take]
        phi = self.transformer(images).flatten(1)
        lc = self._lc(phi, images, self._targets(images, labels), self.val_subsets(index))
        self.log(
            "val/l_lc", lc.mean(), on_epoch=True, prog_bar=True, batch_size=take, sync_dist=True
        )

    def on_validation_epoch_end(self) -> None:
        val = self.trainer.callback_metrics.get("val/l_lc")
        if val is not None and not self.trainer.sanity_checking:
            self.best_val_l_lc = min(self.best_val_l_lc, float(val))
            self.log("val/l_lc_best", self.best_val_l_lc, sync_dist=False)

    # -- test: heatmaps for the EvaluationCallback --------------------------------------------
    def test_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        return {"heatmaps": self.explain(unpack_batch(batch).images)}

    # -- transformer-only checkpoints ----------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k.startswith(TRANSFORMER_PREFIX)
        }
        checkpoint["deepfaith_alpha_schedule"] = self.schedule.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = set(self.transformer_state_dict(prefixed=True)) - set(
            checkpoint.get("state_dict", {})
        )
        if missing:
            raise ValueError(
                f"checkpoint lacks DeepFaith transformer weights {sorted(missing)[:3]}…; "
                "was it written by DeepFaithModule?"
            )
        if "deepfaith_alpha_schedule" in checkpoint:
            self.schedule.load_state_dict(checkpoint["deepfaith_alpha_schedule"])

    def transformer_state_dict(self, prefixed: bool = False) -> dict[str, Tensor]:
        """The transformer's weights (optionally with the ``transformer.`` checkpoint prefix)."""
        sd = self.transformer.state_dict()
        return {TRANSFORMER_PREFIX + k: v for k, v in sd.items()} if prefixed else sd

    def load_transformer(self, path: str | Path) -> None:
        """Load weights from a ``save`` file or a Lightning checkpoint (``weights_only=True``)."""
        obj = torch.load(path, map_location="cpu", weights_only=True)
        sd = obj.get("state_dict", obj)
        if any(k.startswith(TRANSFORMER_PREFIX) for k in sd):
            sd = {
                k[len(TRANSFORMER_PREFIX) :]: v
                for k, v in sd.items()
                if k.startswith(TRANSFORMER_PREFIX)
            }
        try:
            self.transformer.load_state_dict(sd)
        except RuntimeError as e:
            raise ConfigError(
                f"{path} does not hold weights for this DeepFaith transformer "
                f"(patch/depth/width/heads differ?): {e}"
            ) from e


def check_training(*, loss: str, n_subsets: int, subset_fraction: float, target: str) -> None:
    """``ConfigError`` naming the ``explainer.*`` key of a bad training setting."""
    if loss not in LOSS_MODES:
        raise ConfigError(f"explainer.loss={loss!r} must be one of {list(LOSS_MODES)}")
    if not (isinstance(n_subsets, int) and n_subsets >= 3):
        raise ConfigError(
            f"explainer.n_subsets={n_subsets!r} must be an integer >= 3 (a correlation over "
            "the subsets needs a few of them)"
        )
    if not (0.0 < subset_fraction < 1.0):
        raise ConfigError(f"explainer.subset_fraction={subset_fraction!r} must be in (0, 1)")
    if target not in ("label", "predicted"):
        raise ConfigError(f"explainer.target={target!r} must be 'label' or 'predicted'")
