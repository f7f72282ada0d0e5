"""Building blocks of the explainers: post-processing, feature masks, baselines,
the model guard, the learned-explainer steps, chunking and config options."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn

from xaibench.explainers import (
    Explainer,
    LearnedExplainer,
    baseline_distribution,
    count_hooks,
    feature_mask,
    get_explainer,
    make_baseline,
    normalize_maps,
    preserve_model,
    reduce_channels,
)
from xaibench.models import resnet18

pytestmark = pytest.mark.usefixtures("one_thread")


def test_reductions_by_hand():
    a = torch.tensor([[1.0, -2.0], [-3.0, 0.5]]).view(1, 2, 1, 2)  # (N=1, C=2, H=1, W=2)
    assert reduce_channels(a, "sum_abs").flatten().tolist() == [4.0, 2.5]
    assert reduce_channels(a, "abs_sum").flatten().tolist() == [2.0, 1.5]
    assert reduce_channels(a, "sum").flatten().tolist() == [-2.0, -1.5]
    assert reduce_channels(a, "max_abs").flatten().tolist() == [3.0, 2.0]
    torch.testing.assert_close(
        reduce_channels(a, "l2").flatten(), torch.tensor([10**0.5, 4.25**0.5])
    )
    with pytest.raises(ValueError, match=r"reduction='mean' is unknown; choose one of \['sum_abs'"):
        reduce_channels(a, "mean")


def test_normalisations_by_hand():
    h = torch.tensor([[-1.0, 0.0, 1.0, 3.0], [2.0, 2.0, 2.0, 2.0]]).view(2, 1, 2, 2)
    mm = normalize_maps(h, "minmax").view(2, 4)
    assert mm[0].tolist() == [0.0, 0.25, 0.5, 1.0] and mm[1].tolist() == [0.0] * 4  # constant -> 0
    am = normalize_maps(h, "abs_max").view(2, 4)
    torch.testing.assert_close(am[0], torch.tensor([1 / 3, 0.0, 1 / 3, 1.0]))
    assert am[1].tolist() == [1.0] * 4
    pc = normalize_maps(h, "percentile", percentile=50.0).view(2, 4)  # median |h| of row 0 = 1
    assert pc[0].tolist() == [1.0, 0.0, 1.0, 1.0]
    ok = torch.rand(2, 1, 3, 3)
    assert normalize_maps(ok, "none") is ok
    with pytest.raises(
        ValueError, match=r"normalize='none' needs heatmaps in \[0, 1\].*use normalize='minmax'"
    ):
        normalize_maps(h, "none")
    with pytest.raises(ValueError, match=r"normalize='sigmoid' is unknown"):
        normalize_maps(h, "sigmoid")


def test_grid_and_slic_masks():
    x = torch.rand(2, 3, 10, 12)
    m = feature_mask(x, "grid", patch=4)
    assert m.shape == (2, 1, 10, 12) and m.dtype == torch.int64
    assert m[0, 0, 0, :].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert int(m.max()) == 8  # 3 rows x 3 cols of cells
    s = feature_mask(torch.rand(2, 3, 32, 32), "slic", n_segments=16)
    assert s.shape == (2, 1, 32, 32) and int(s.min()) == 0 and 4 <= int(s.max()) + 1 <= 40
    with pytest.raises(ValueError, match=r"feature mask kind='quickshift' is unknown"):
        feature_mask(x, "quickshift")


def test_baselines():
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(make_baseline(x, 0.5), torch.full_like(x, 0.5))
    # one definition with the metrics: "mean" is each image's mean over all positions
    torch.testing.assert_close(
        make_baseline(x, "mean")[:, :, 3, 4], x.mean((1, 2, 3))[:, None].expand(2, 3)
    )
    blurred = make_baseline(x, "blur")
    assert blurred.shape == x.shape and blurred.std() < x.std()
    d1, d2 = baseline_distribution(x, 4, seed=3), baseline_distribution(x, 4, seed=3)
    assert d1.shape == (4, 3, 16, 16) and torch.equal(d1, d2)
    assert float(d1.min()) >= float(x.min()) and float(d1.max()) <= float(x.max())
    with pytest.raises(ValueError, match=r"baseline='zeros' is unknown; give a number"):
        make_baseline(x, "zeros")


def test_guard_restores_everything_even_on_error():
    model = resnet18(10, width=0.125, stem="stride2").train()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    grad = model.fc.weight.grad
    layer = model.layer4[-1]
    with pytest.raises(RuntimeError, match="inside"), preserve_model(model):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        model.layer4[-1].register_forward_hook(lambda *a: None)
        model.layer4[-1].register_full_backward_hook(lambda *a: None)
        model.fc.rule = "epsilon"
        model.layer4[1] = nn.Identity()  # a swapped child, as AblationCAM does
        model.zero_grad()
        raise RuntimeError("inside")
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert model.fc.weight.grad is grad and count_hooks(model) == 0
    assert model.layer4[-1] is layer and not hasattr(model.fc, "rule")


class ToyModule(pl.LightningModule):
    """A learned explainer's module: sigmoid of a 1x1 conv (dropout, so eval mode shows)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 1, 1)
        self.drop = nn.Dropout(0.5)

    def explain(self, images: Tensor) -> Tensor:
        return torch.sigmoid(self.drop(self.head(images)))


class ToyLearned(LearnedExplainer):
    def build_module(self, classifier: nn.Module, image_size: int) -> ToyModule:
        return ToyModule()

    def module_state(self) -> dict[str, Tensor]:
        return self.module.head.state_dict()

    def load_module_state(self, path) -> None:
        self.module.head.load_state_dict(torch.load(path, weights_only=True)["state_dict"])


def test_learned_explainer_steps(tmp_path):
    net = resnet18(10, width=0.125, stem="stride2")
    x, t = torch.rand(5, 3, 16, 16), torch.zeros(5, dtype=torch.long)
    learned = ToyLearned(batch_size=2)
    with pytest.raises(RuntimeError, match=r"'explainer' is learned and not trained yet"):
        learned(net, x, t)
    module = learned.attach(net, 16).train()
    h = learned(net, x, t)
    expected = torch.sigmoid(module.head(x)).detach()  # eval mode inside: dropout off
    torch.testing.assert_close(h, expected)
    assert module.training and module.head.weight.requires_grad  # restored afterwards
    # seeded initial weights: a second instance explains identically, global RNG untouched
    rng = torch.get_rng_state()
    torch.testing.assert_close(ToyLearned().attach(net, 16).head.weight, module.head.weight)
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(ValueError, match="was trained on another classifier"):
        learned(resnet18(10, width=0.125, stem="stride2"), x, t)
    # save -> load into a fresh instance: same maps
    with torch.no_grad():
        module.head.weight.add_(1.0)
    path = learned.save(tmp_path / "toy.pt", {"epochs": 3})
    other = ToyLearned()
    other.attach(net, 16)
    other.load(path)
    torch.testing.assert_close(other(net, x, t), learned(net, x, t))
    assert torch.load(path, weights_only=True)["meta"] == {"epochs": 3}
    with pytest.raises(ValueError, match=r"ckpt_path=.*missing.pt is not a file"):
        other.load(tmp_path / "missing.pt")


def test_subclass_plugs_in_with_low_res_output():
    class Blocky(Explainer):
        needs_grad = False

        def explain(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
            return torch.arange(4.0).view(1, 1, 2, 2).expand(images.shape[0], 1, 2, 2)

    h = Blocky()(
        resnet18(10, width=0.125, stem="stride2"),
        torch.rand(3, 3, 8, 8),
        torch.zeros(3, dtype=torch.long),
    )
    assert h.shape == (3, 1, 8, 8) and float(h.min()) == 0.0 and float(h.max()) == 1.0


@pytest.mark.parametrize("name", ["gradcam", "integrated_gradients", "occlusion", "lrp"])
def test_chunk_size_does_not_change_maps(name):
    torch.manual_seed(0)
    net = resnet18(10, width=0.125, stem="stride2")
    x, t = torch.rand(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4])
    kw = {"occlusion": {"window": 8, "stride": 8}, "integrated_gradients": {"n_steps": 8}}.get(
        name, {}
    )
    a = get_explainer(name, batch_size=5, **kw)(net, x, t)
    b = get_explainer(name, batch_size=2, **kw)(net, x, t)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_target_layer_option_and_errors():
    net = resnet18(10, width=0.125, stem="stride2")
    x, t = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    deep = get_explainer("gradcam")(net, x, t)
    same = get_explainer("gradcam", target_layer="layer4.1")(net, x, t)
    torch.testing.assert_close(deep, same)
    assert get_explainer("gradcam", target_layer="layer3")(net, x, t).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"target_layer='layer9' is not a submodule of ResNet"):
        get_explainer("gradcam", target_layer="layer9")(net, x, t)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    plain(x)
    with pytest.raises(
        ValueError, match=r"Sequential has no `target_layer` attribute; pass target_layer="
    ):
        get_explainer("gradcam")(plain, x, t)


def test_finercam_targets_differ_from_gradcam_and_validate():
    torch.manual_seed(0)
    net = resnet18(10, width=0.125, stem="stride2")
    x, t = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    fin = get_explainer("finercam")(net, x, t)
    zero_alpha = get_explainer("finercam", alpha=0.0)(net, x, t)
    torch.testing.assert_close(zero_alpha, get_explainer("gradcam")(net, x, t), atol=1e-5, rtol=0)
    assert not torch.allclose(fin, zero_alpha)
    with pytest.raises(
        ValueError, match=r"comparison_categories=\[0\] must be similarity ranks >= 1"
    ):
        get_explainer("finercam", comparison_categories=[0])
