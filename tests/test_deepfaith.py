"""DeepFaith: losses on tensors of known correlation, the α schedule on a scripted loss
sequence, the patch Transformer, the frozen classifier, priors looked up by index, the
perturbation effects against a direct computation, and fits through the explainer."""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from dataclasses import dataclass, field

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from xaibench.explainers import DeepFaithExplainer, get_explainer
from xaibench.metrics.seeding import sample_seed
from xaibench.models import AlphaSchedule, DeepFaithModule, PatchTransformer, resnet18
from xaibench.models.deepfaith import (
    local_correlation_loss,
    pattern_consistency_loss,
    pearson,
    perturbation_effects,
    subset_keep,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class FakePriorSet:
    """The fields of ``xaibench.explainers.priors.PriorSet`` that DeepFaith reads."""

    index: Tensor
    maps: Tensor
    kept: Tensor
    methods: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def tiny_net(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return resnet18(5, width=0.125, stem="stride2", **kw)


def tiny_module(net=None, size: int = 32, **kw) -> DeepFaithModule:
    torch.manual_seed(0)
    kw = {"patch": 8, "depth": 1, "width": 16, "heads": 2, "n_subsets": 6, **kw}
    return DeepFaithModule(net if net is not None else tiny_net(), image_size=size, **kw)


# -- pearson and the losses ----------------------------------------------------------------------
def test_pearson_by_hand():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([2.0, 1.0, 4.0, 3.0])
    # centred: (-1.5, -.5, .5, 1.5) and (-.5, -1.5, 1.5, .5): 3 / sqrt(5 * 5)
    torch.testing.assert_close(pearson(a, b), torch.tensor(0.6))
    torch.testing.assert_close(pearson(torch.stack([a, -a]), b), torch.tensor([0.6, -0.6]))
    torch.testing.assert_close(pearson(a[:, None], b[:, None], dim=0), torch.tensor([0.6]))


def test_pearson_of_a_constant_is_zero_with_finite_gradients():
    a = torch.full((5,), 0.7, requires_grad=True)
    b = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3], requires_grad=True)
    r = pearson(a, b)
    assert float(r.detach()) == 0.0
    r.backward()
    assert bool(a.grad.isfinite().all()) and bool(b.grad.isfinite().all())


def _subsets_and_sums(phi: Tensor, k: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    subsets = torch.rand(phi.shape[0], k, phi.shape[1], generator=g) < 0.5
    return subsets, torch.einsum("bkp,bp->bk", subsets.double(), phi)


def test_local_correlation_loss_known_correlations():
    phi = torch.rand(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    subsets, sums = _subsets_and_sums(phi)
    assert float(local_correlation_loss(phi, 2.0 * sums + 0.3, subsets)) == pytest.approx(0.0)
    assert float(local_correlation_loss(phi, -sums, subsets)) == pytest.approx(1.0)
    per = local_correlation_loss(phi, torch.stack([sums[0], -sums[1], sums[2]]), subsets, "none")
    torch.testing.assert_close(per, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


def test_local_correlation_loss_of_a_constant_phi_is_one_half_not_nan():
    phi = torch.full((2, 16), 0.5, requires_grad=True)
    subsets = torch.ones(2, 4, 16, dtype=torch.bool)  # every subset the same: constant sums
    loss = local_correlation_loss(phi, torch.rand(2, 4), subsets)
    assert float(loss.detach()) == 0.5
    loss.backward()
    assert bool(phi.grad.isfinite().all())


def test_pattern_consistency_loss_known_correlations():
    phi = torch.rand(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    same = torch.stack([3.0 * phi + 1.0, phi], dim=1)  # (B, K=2, P)
    kept = torch.ones(2, 2, dtype=torch.bool)
    loss, per = pattern_consistency_loss(phi, same, kept)
    assert float(loss) == pytest.approx(0.0, abs=1e-12)
    loss, per = pattern_consistency_loss(phi, -same, kept)  # 1 - (-1) = 2 per prior
    assert float(loss) == pytest.approx(2.0)
    torch.testing.assert_close(per, torch.full((2,), 2.0, dtype=torch.float64))
    # sample 0 keeps one correlated and one anti-correlated prior; sample 1 keeps only an
    # anti-correlated one (its correlated prior is dropped): pairs (0, 2, 2) -> mean 4/3
    mixed = torch.stack([phi, -phi], dim=1)
    kept = torch.tensor([[True, True], [False, True]])
    loss, per = pattern_consistency_loss(phi, mixed, kept)
    assert float(loss) == pytest.approx(4.0 / 3.0)
    torch.testing.assert_close(per, torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_pattern_consistency_loss_without_kept_priors_is_zero_with_zero_gradient():
    phi = torch.rand(2, 16, requires_grad=True)
    priors = torch.rand(2, 3, 16)
    kept = torch.tensor([[False, False, False], [True, False, False]])
    loss, per = pattern_consistency_loss(phi, priors, kept)
    assert float(per[0].detach()) == 0.0  # sample 0 has no kept prior
    torch.testing.assert_close(loss, 1.0 - pearson(phi[1], priors[1, 0]))
    loss, _ = pattern_consistency_loss(phi, priors, torch.zeros(2, 3, dtype=torch.bool))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert float(phi.grad.abs().sum()) == 0.0
    constant, _ = pattern_consistency_loss(torch.full((1, 16), 0.3), priors[:1], kept[1:])
    assert float(constant) == 1.0  # ρ = 0 for a constant φ, not NaN


# -- the α schedule --------------------------------------------------------------------------------
def expected_alpha(t: int, t_start: int, c: float, offset: float) -> float:
    return 1.0 - 1.0 / (1.0 + math.exp(-(t - (t_start + offset)) / c))


def test_alpha_schedule_decays_after_a_flat_window_and_resets_on_a_spike():
    c, eps = 2.0, 1e-3
    s = AlphaSchedule(window=3, eps=eps, C=c)
    assert s.t0_offset == 6.0  # default 3·C
    # steps 0-4: the window is not full or its variance is large (step 4: 0.0089 > eps)
    for value in (0.5, 0.9, 0.1, 0.3):
        assert s.step(value) == 1.0
    assert s.step(0.3) == 1.0 and not s.decaying
    # step 5: window (0.3, 0.3, 0.3), variance 0 < eps: decay starts at t_start = 5
    alpha = s.step(0.3)
    assert s.decaying and s.t_start == 5
    assert alpha == pytest.approx(expected_alpha(5, 5, c, 6.0)) and alpha == pytest.approx(
        1.0 - 1.0 / (1.0 + math.exp(3.0))
    )
    for t in range(6, 14):  # small noise (variance < C·eps) keeps decaying
        value = 0.3 + (0.01 if t % 2 else 0.0)
        assert s.step(value) == pytest.approx(expected_alpha(t, 5, c, 6.0))
    assert s.alpha < 0.5  # past t0 = 11
    # a spike: variance 0.0089 > C·eps = 0.002 -> α = 1, monitoring again
    assert s.step(0.5) == 1.0 and not s.decaying
    assert s.step(0.3) == 1.0 and s.step(0.3) == 1.0  # spike still in the window
    assert s.step(0.3) < 1.0 and s.t_start == 17  # flat again: a new decay from step 17


def test_alpha_schedule_state_round_trip():
    s = AlphaSchedule(window=3, eps=1e-3, C=2.0, t0_offset=1.0)
    for v in (0.3, 0.3, 0.3, 0.3):
        s.step(v)
    r = AlphaSchedule(window=3, eps=1e-3, C=2.0, t0_offset=1.0)
    r.load_state_dict(s.state_dict())
    assert r.step(0.3) == s.step(0.3) < 1.0


# -- the patch Transformer ---------------------------------------------------------------------
def test_patch_transformer_shape_range_and_gradients():
    net = PatchTransformer(64, 3, patch=8, depth=2, width=32, heads=4)
    x = torch.rand(3, 3, 64, 64)
    out = net(x)
    assert out.shape == (3, 1, 8, 8)
    assert float(out.detach().min()) >= 0.0 and float(out.detach().max()) <= 1.0
    (out * torch.randn_like(out)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"{name} got no gradient"


def test_patch_must_divide_the_image_size():
    with pytest.raises(ValueError, match=r"explainer\.patch=8 does not divide the image size 60"):
        PatchTransformer(60, patch=8)
    with pytest.raises(ValueError, match=r"explainer\.width=30 must be divisible"):
        PatchTransformer(64, patch=8, width=30, heads=4)
    with pytest.raises(ValueError, match=r"explainer\.patch=5 does not divide the image size 32"):
        get_explainer("deepfaith", patch=5).attach(tiny_net(), 32)


# -- the module --------------------------------------------------------------------------------
def test_priors_are_looked_up_by_dataset_index():
    g = 4  # 32px / 8px patches
    maps = torch.rand(3, 2, 1, g, g)
    kept = torch.tensor([[True, False], [True, True], [False, True]])
    priors = FakePriorSet(torch.tensor([1, 4, 7]), maps, kept)
    module = tiny_module(priors=priors)
    got_maps, got_kept = module.lookup_priors(torch.tensor([4, 0, 7, 9, 1]))
    torch.testing.assert_close(got_maps[0], maps[1].flatten(1))
    torch.testing.assert_close(got_maps[2], maps[2].flatten(1))
    torch.testing.assert_close(got_maps[4], maps[0].flatten(1))
    expected = torch.tensor(
        [[True, True], [False, False], [False, True], [False, False], [True, False]]
    )
    assert torch.equal(got_kept, expected)
    assert tiny_module().lookup_priors(torch.tensor([0])) is None


def test_samples_without_priors_train_on_local_correlation_only():
    module = tiny_module(
        priors=FakePriorSet(
            torch.tensor([2]), torch.rand(1, 3, 1, 4, 4), torch.ones(1, 3, dtype=torch.bool)
        )
    )
    module.schedule.t, module.schedule.t_start = 100, 0  # decaying; the window is not full
    x, y, idx = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2]), torch.tensor([0, 2, 5])
    with torch.no_grad():
        out = module.losses((x, y, idx), step=3)
        phi = module.transformer(x).flatten(1)
        gen = torch.Generator().manual_seed(sample_seed(0, 3))  # the draw of step 3
        subsets = torch.rand(3, 6, 16, generator=gen) < 0.5
        lc = module._lc(phi, x, y, subsets)
        maps, kept = module.lookup_priors(idx)
        _, pc = pattern_consistency_loss(phi, maps, kept)
    a = out["alpha"]
    assert a == pytest.approx(expected_alpha(100, 0, 20.0, 60.0)) and a < 0.2
    expected = (lc[0] + (a * pc[1] + (1 - a) * lc[1]) + lc[2]) / 3
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["l_lc"], lc.mean())
    assert float(out["kept_priors"]) == pytest.approx(1.0)  # 3 kept priors over 3 samples


def test_perturbation_effects_equal_a_direct_computation():
    net = tiny_net().double().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.tensor([1, 4])
    subsets = torch.rand(2, 3, 4, generator=g) < 0.5  # 2x2 grid of 8px patches
    subsets[0, 0] = False  # removes nothing: Δ = 0
    subsets[1, 1] = True  # removes everything
    got = perturbation_effects(net, x, y, subsets, 8, batch_size=3)
    expected = torch.empty(2, 3, dtype=torch.float64)
    with torch.no_grad():
        for b in range(2):
            p0 = net(x[b : b + 1]).softmax(1)[0, y[b]]
            for j in range(3):
                xm = x[b].clone()
                for i in range(4):
                    if subsets[b, j, i]:
                        r, c = divmod(i, 2)  # row-major patch grid
                        xm[:, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = 0.0
                expected[b, j] = p0 - net(xm[None]).softmax(1)[0, y[b]]
    torch.testing.assert_close(got, expected)
    assert float(got[0, 0]) == 0.0 and not got.requires_grad
    assert subset_keep(subsets[1, 1:2], 8).sum() == 0


def _loaders(n: int = 24, size: int = 32):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 3, size, size, generator=g), torch.randint(0, 5, (n,), generator=g)
    ds = TensorDataset(x, y, torch.arange(n))
    return DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8)


def _trainer(tmp_path, callbacks=(), max_epochs: int = 2) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        logger=False,
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        inference_mode=False,
        default_root_dir=tmp_path,
    )


def test_training_leaves_classifier_bitwise_identical_and_checkpoints_hold_transformer(tmp_path):
    net = tiny_net().train()  # BatchNorm would update its statistics in train mode
    before = {k: v.clone() for k, v in net.state_dict().items()}
    priors = FakePriorSet(
        torch.arange(0, 24, 2), torch.rand(12, 2, 1, 4, 4), torch.ones(12, 2, dtype=torch.bool)
    )
    module = tiny_module(net, priors=priors)
    start = {k: v.clone() for k, v in module.transformer_state_dict().items()}
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="val/l_lc", mode="min")
    trainer = _trainer(tmp_path, [ckpt])
    trainer.fit(module, *_loaders())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "classifier changed"
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert any(not torch.equal(start[k], v) for k, v in module.transformer_state_dict().items())
    for key in ("train/alpha", "train/l_pc", "train/l_lc", "train/loss", "train/kept_priors"):
        assert key in trainer.callback_metrics, key
    assert float(trainer.callback_metrics["train/kept_priors_epoch"]) == pytest.approx(1.0)
    assert "val/l_lc" in trainer.callback_metrics
    sd = torch.load(ckpt.best_model_path, weights_only=True)
    assert sd["state_dict"] and all(k.startswith("transformer.") for k in sd["state_dict"])
    fresh = tiny_module(tiny_net(seed=5))
    fresh.load_transformer(ckpt.best_model_path)
    x = torch.rand(2, 3, 32, 32)
    best = tiny_module(net)
    best.load_transformer(ckpt.best_model_path)
    torch.testing.assert_close(fresh.explain(x), best.explain(x))


def test_validation_subsets_depend_on_the_sample_index_only():
    module = tiny_module()
    a = module.val_subsets(torch.tensor([3, 8]))
    b = module.val_subsets(torch.tensor([8, 5, 3]))
    assert torch.equal(a[0], b[2]) and torch.equal(a[1], b[0]) and a.shape == (2, 6, 16)


# -- the explainer -----------------------------------------------------------------------------
def _digits(tmp_path, n_train: int = 32):
    from xaibench.data import SyntheticDigitsDataModule

    return SyntheticDigitsDataModule(
        tmp_path / "data", n_train=n_train, n_val=16, n_test=16, batch_size=16, seed=0
    )


def _small(**kw) -> DeepFaithExplainer:
    return DeepFaithExplainer(depth=1, width=16, heads=2, n_subsets=4, max_epochs=1, **kw)


def test_fit_hands_the_priors_to_the_module_and_saves_the_transformer_only(tmp_path, monkeypatch):
    calls = {}

    def build_priors(classifier, datamodule, *, methods, grid, cache_dir, **kw):
        datamodule.setup("fit")
        calls.update(methods=methods, grid=grid, cache_dir=cache_dir, **kw)
        m = 8
        return FakePriorSet(
            torch.arange(m),
            torch.rand(m, 2, 1, *grid),
            torch.ones(m, 2, dtype=torch.bool),
            list(methods),
            {"kept_per_method": torch.tensor([8, 8]), "nan": float("nan")},
        )

    fake = types.ModuleType("xaibench.explainers.priors")
    fake.build_priors = build_priors
    monkeypatch.setitem(sys.modules, "xaibench.explainers.priors", fake)
    dm = _digits(tmp_path)
    net = resnet18(10, width=0.125, stem="stride2")
    explainer = _small(
        prior_methods=["saliency", "gradcam"],
        prior_samples=8,
        prior_cache_dir=str(tmp_path / "priors"),
    )
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val/l_lc", mode="min")
    info = explainer.fit(dm, net, _trainer(tmp_path, [ckpt], max_epochs=1))
    assert calls["methods"] == ["saliency", "gradcam"] and calls["grid"] == (8, 8)
    assert calls["max_samples"] == 8 and calls["cache_dir"] == str(tmp_path / "priors")
    assert info["priors"] == {"kept_per_method": [8, 8], "nan": None}
    assert info["monitor"] == "val/l_lc" and info["best_checkpoint"]
    assert explainer.module.prior_index is not None and len(explainer.module.prior_index) == 8
    path = explainer.save(tmp_path / "deepfaith.pt", info)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert set(saved) == set(explainer.module.transformer.state_dict())
    again = _small(prior_methods=[])
    again.attach(net, 64)
    again.load(path)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(again(net, x, 0), explainer(net, x, 0))


def test_fit_with_local_correlation_only_needs_no_priors(tmp_path):
    dm = _digits(tmp_path)
    net = resnet18(10, width=0.125, stem="stride2")
    explainer = _small(loss="lc", prior_methods=["saliency"])
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val/l_lc", mode="min")
    info = explainer.fit(dm, net, _trainer(tmp_path, [ckpt], max_epochs=1))
    assert info["priors"] is None and explainer.module.prior_index is None


def test_pc_loss_without_prior_methods_is_a_config_error():
    with pytest.raises(ValueError, match=r"explainer\.loss=pc fits prior explanations"):
        DeepFaithExplainer(loss="pc", prior_methods=[])
    with pytest.raises(ValueError, match=r"explainer\.loss='both' must be one of"):
        DeepFaithExplainer(loss="both")


@pytest.mark.skipif(
    importlib.util.find_spec("xaibench.explainers.priors") is None,
    reason="xaibench/explainers/priors.py (build_priors) is not written yet",
)
def test_end_to_end_fit_with_real_priors(tmp_path):
    dm = _digits(tmp_path)
    net = resnet18(10, width=0.125, stem="stride2").eval()
    explainer = _small(
        prior_methods=["saliency", "gradcam"],
        prior_samples=16,
        prior_cache_dir=str(tmp_path / "priors"),
    )
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val/l_lc", mode="min")
    info = explainer.fit(dm, net, _trainer(tmp_path, [ckpt], max_epochs=1))
    assert info["best_checkpoint"] and info["priors"] is not None
    assert len(explainer.module.prior_index) <= 16
    h = explainer(net, torch.rand(2, 3, 64, 64), 0)
    assert h.shape == (2, 1, 64, 64) and 0.0 <= float(h.min()) <= float(h.max()) <= 1.0


def test_priors_on_another_grid_are_refused_and_pc_mode_skips_batches_without_priors():
    with pytest.raises(ValueError, match=r"prior maps \(2, 1, 1, 8, 8\) must be \(M, K, 1, 4, 4\)"):
        tiny_module(
            priors=FakePriorSet(torch.arange(2), torch.rand(2, 1, 1, 8, 8), torch.ones(2, 1))
        )
    priors = FakePriorSet(
        torch.tensor([5]), torch.rand(1, 1, 1, 4, 4), torch.ones(1, 1, dtype=torch.bool)
    )
    module = tiny_module(priors=priors, loss="pc")
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    out = module.losses((x, y, torch.tensor([0, 1])))
    assert out["loss"] is None and "l_lc" not in out  # no prior, and L_LC is never computed
    out = module.losses((x, y, torch.tensor([0, 5])))
    assert out["alpha"] == 1.0 and float(out["loss"].detach()) == pytest.approx(float(out["l_pc"]))
