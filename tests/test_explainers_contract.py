"""The explainer contract, for every registered explainer and every config file.

Parametrised over ``list_explainers()`` (a new explainer is tested without
editing this file): shape, range, finiteness, device, dtype, determinism,
batch sizes 1 and 16, the model unchanged afterwards (also after a mid-forward
error and a bad target), inference-mode handling, and a Lightning ``test_step``.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from xaibench.explainers import (
    EXPLAINERS,
    Explainer,
    LearnedExplainer,
    count_hooks,
    get_explainer,
    list_explainers,
)
from xaibench.models import resnet18

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "explainer"
# configs/explainer files that are not registry entries: `none` (no explainer,
# classifier-only runs)
NON_REGISTRY_CONFIGS = {"none"}
# cheap settings for the slow methods; anything else runs with its defaults
FAST: dict[str, dict] = {
    "lime": {"n_samples": 16, "patch": 8},
    "kernel_shap": {"n_samples": 16, "patch": 8},
    "occlusion": {"window": 8, "stride": 8},
    "integrated_gradients": {"n_steps": 8},
    "gradient_shap": {"n_samples": 4, "n_baselines": 4},
    "deeplift_shap": {"n_baselines": 2},
    "ablationcam": {"forward_batch_size": 64},
}
NAMES = list_explainers()
SIZE = 32


def fast(name: str, model: nn.Module, **kw) -> Explainer:
    """The explainer with cheap settings, ready for ``model``: a learned one is attached to
    it with its seeded initial weights (its contract does not depend on training)."""
    explainer = get_explainer(name, **{**FAST.get(name, {}), **kw})
    if isinstance(explainer, LearnedExplainer):
        explainer.attach(model, SIZE)
    return explainer


LEARNED = [n for n in NAMES if issubclass(EXPLAINERS.get(n), LearnedExplainer)]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return resnet18(10, width=0.125, stem="stride2")


def batch(n: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g), torch.arange(n) % 10


def model_state(model: nn.Module) -> dict:
    """Everything an explainer must leave as it found it."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": count_hooks(model),
        "modules": [(n, type(m)) for n, m in model.named_modules()],
        "attrs": [sorted(vars(m)) for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = model_state(model)
    for key in ("training", "requires_grad", "hooks", "modules", "attrs"):
        assert after[key] == before[key], f"model {key} changed"
    assert all(a is b for a, b in zip(after["grads"], before["grads"], strict=True)), (
        ".grad changed"
    )
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"model parameter/buffer {k} changed"


def prepared_model() -> nn.Module:
    """A model in a state explainers like to change: train mode, a frozen layer, stored grads."""
    model = tiny_model().train()
    model.layer1.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    return model


def check_maps(h: Tensor, images: Tensor) -> None:
    n, _, hh, ww = images.shape
    assert h.shape == (n, 1, hh, ww)
    assert h.dtype == images.dtype and h.device == images.device
    assert bool(h.isfinite().all())
    assert float(h.min()) >= 0.0 and float(h.max()) <= 1.0
    assert not h.requires_grad


def test_registry_matches_config_files():
    files = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    missing_yaml = set(NAMES) - files
    missing_registry = files - set(NAMES) - NON_REGISTRY_CONFIGS
    assert not missing_yaml, (
        f"registered explainers without configs/explainer/<name>.yaml: {missing_yaml}"
    )
    assert not missing_registry, (
        f"configs/explainer files with no registered explainer: {missing_registry}"
    )


@pytest.mark.parametrize("name", NAMES)
def test_config_instantiates_registered_class(name):
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    obj = instantiate(cfg)
    assert type(obj) is EXPLAINERS.get(name)
    assert obj.name == name


@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    model = prepared_model()
    explainer = fast(name, model)  # attaching a learned explainer freezes the classifier
    before = model_state(model)
    rng, np_rng = torch.get_rng_state(), np.random.get_state()[1].copy()
    images, targets = batch(16)
    images_copy = images.clone()

    h16 = explainer(model, images, targets)
    check_maps(h16, images)
    assert torch.equal(images, images_copy), "the caller's images were modified"
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng), "torch's global RNG state changed"
    assert (np.random.get_state()[1] == np_rng).all(), "numpy's global RNG state changed"

    again = fast(name, model)(model, images, targets)  # a fresh instance, same settings/seed
    assert torch.equal(again, h16), "not deterministic"

    h1 = explainer(model, images[:1], targets[:1])
    check_maps(h1, images[:1])
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", NAMES)
def test_float64_and_scalar_target(name):
    model = tiny_model().double()
    images, _ = batch(2)
    h = fast(name, model, batch_size=1)(model, images.double(), 3)  # chunked, one target for all
    check_maps(h, images.double())


class Exploding(nn.Module):
    """Wraps a block; raises in forward while ``armed``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.armed = inner, True

    def forward(self, x: Tensor) -> Tensor:
        if self.armed:
            raise RuntimeError("boom mid-forward")
        return self.inner(x)


@pytest.mark.parametrize("name", [n for n in NAMES if EXPLAINERS.get(n).uses_model])
def test_model_restored_after_mid_forward_error(name):
    model = prepared_model()
    explainer = fast(name, model)
    model.layer3 = Exploding(model.layer3)
    before = model_state(model)
    images, targets = batch(2)
    with pytest.raises(Exception, match="boom mid-forward"):
        explainer(model, images, targets)
    assert_unchanged(model, before)
    model.layer3.armed = False  # still usable, same answer as a pristine model
    assert explainer(model, images, targets).shape == (2, 1, SIZE, SIZE)


class NoClassCount(nn.Module):
    """A classifier without ``num_classes``: a bad target fails inside the method."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @property
    def target_layer(self) -> nn.Module:
        return self.net.layer4[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@pytest.mark.parametrize("name", [n for n in NAMES if EXPLAINERS.get(n).uses_model])
def test_bad_target(name):
    model = prepared_model()
    images, _ = batch(2)
    with pytest.raises(
        ValueError, match=r"targets must be class indices in \[0, 10\); got values in \[0, 99\]"
    ):
        fast(name, model)(model, images, torch.tensor([0, 99]))
    if name in LEARNED:
        return  # explains only the classifier it was attached to (tested in test_lax.py)
    wrapped = NoClassCount(model)
    before = model_state(wrapped)
    if EXPLAINERS.get(name).uses_targets:  # the method itself trips over the target
        with pytest.raises((IndexError, RuntimeError, ValueError)):
            fast(name, wrapped)(wrapped, images, torch.tensor([0, 99]))
    else:  # class-agnostic (eigencam, kpcacam): the target is never read
        check_maps(fast(name, wrapped)(wrapped, images, torch.tensor([0, 99])), images)
    assert_unchanged(wrapped, before)


@pytest.mark.parametrize("name", NAMES)
def test_inference_mode(name):
    model = tiny_model()
    images, targets = batch(2)
    explainer = fast(name, model)
    with torch.inference_mode():
        if explainer.needs_grad:
            with pytest.raises(RuntimeError, match=r"inference_mode\(\).*inference_mode=False"):
                explainer(model, images, targets)
        else:
            check_maps(explainer(model, images, targets), images)
        frozen = images.clone()  # an inference tensor, as a Lightning test loop yields
    check_maps(explainer(model, frozen, targets), images)


class ExplainInTest(pl.LightningModule):
    """Runs every explainer inside ``test_step`` (no_grad there, as Lightning sets it)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.maps: dict[str, Tensor] = {}
        self.grad_enabled: list[bool] = []

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.grad_enabled.append(torch.is_grad_enabled())
        for name in NAMES:
            self.maps[name] = fast(name, self.net)(self.net, x, y)


def test_inside_lightning_test_step(tmp_path):
    images, targets = batch(4)
    module = ExplainInTest(tiny_model())
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, targets), batch_size=4, num_workers=0
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        inference_mode=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.test(module, dataloaders=loader, verbose=False)
    assert module.grad_enabled == [False]  # the explainers had to switch gradients on
    assert set(module.maps) == set(NAMES)
    for name, h in module.maps.items():
        check_maps(h, images)
        direct = fast(name, module.net)(module.net, images, targets)
        assert torch.allclose(h, direct, atol=1e-5), f"{name}: differs inside the test loop"


def test_unknown_name_suggests_closest():
    with pytest.raises(ValueError, match=r"unknown explainer 'gradcm'\. Did you mean 'gradcam'\?"):
        get_explainer("gradcm")


def test_input_errors_name_the_problem():
    model = tiny_model()
    images, targets = batch(1)
    gradcam = get_explainer("gradcam")
    with pytest.raises(ValueError, match="images must be floating point"):
        gradcam(model, (images * 255).to(torch.uint8), targets)
    with pytest.raises(ValueError, match=r"targets \(2,\) must be \(N,\) = \(1,\)"):
        gradcam(model, images, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="targets must be integer class indices"):
        gradcam(model, images, torch.tensor([1.0]))
    # a device mismatch, without a GPU: the images on the meta device
    with pytest.raises(ValueError, match=r"images are on meta but the model is on cpu"):
        gradcam(model, images.to("meta"), targets)
    with pytest.raises(
        ValueError, match=r"images are torch.float64 but the model's parameters are torch.float32"
    ):
        gradcam(model, images.double(), targets)


@pytest.mark.parametrize("name", ["saliency", "guided_backprop", "gradcam", "lime"])
def test_non_finite_images_are_refused(name):
    model = tiny_model()
    images, targets = batch(2)
    images[1] = float("nan")
    with pytest.raises(ValueError, match=rf"images contain {3 * SIZE * SIZE} non-finite values"):
        fast(name, model)(model, images, targets)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_device(name):
    model = tiny_model().cuda()
    images, targets = batch(4)
    h = fast(name, model)(model, images.cuda(), targets.cuda())
    check_maps(h, images.cuda())
