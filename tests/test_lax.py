"""LAX: loss on hand-computed tensors, head shapes per stem, frozen base, head-only checkpoints."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from xaibench.models import LAXHead, LAXModule, entropy_loss, lax_loss, resnet18
from xaibench.models.lax_module import resolve_feature_upsample


def test_entropy_of_uniform_mask_is_log_n():
    m = torch.full((3, 1, 4, 4), 0.7)
    torch.testing.assert_close(
        entropy_loss(m, 0.5), torch.tensor(math.log(16.0)), atol=1e-6, rtol=0
    )


def test_entropy_by_hand():
    m = torch.tensor([[[[1.0, 0.0]]]])  # one sample, two positions
    t = 0.5
    p1 = math.exp(2.0) / (math.exp(2.0) + 1.0)
    expected = -(p1 * math.log(p1 + 1e-8) + (1 - p1) * math.log(1 - p1 + 1e-8))
    torch.testing.assert_close(entropy_loss(m, t), torch.tensor(expected), atol=1e-6, rtol=0)
    # a sharper (peaked) mask has lower entropy than a flat one
    assert entropy_loss(torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]]), 0.1) < entropy_loss(
        torch.full((1, 1, 1, 4), 0.5), 0.1
    )


def test_lax_loss_combines_ce_and_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    m = torch.rand(2, 1, 3, 3)
    out = lax_loss(logits, labels, m, lam=5.0, temperature=0.5)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(out["ce"], ce)
    torch.testing.assert_close(out["loss"], ce + 5.0 * entropy_loss(m, 0.5))


@pytest.mark.parametrize(
    ("stem", "size", "low"),
    [("cifar", 32, 8), ("cifar", 64, 8), ("stride2", 64, 8), ("imagenet", 224, 7)],
)
def test_head_shape_and_range_per_stem(stem, size, low):
    net = resnet18(5, width=0.125, stem=stem).eval()
    module = LAXModule(net, image_size=size, optimizer=torch.optim.Adam)
    with torch.no_grad():
        lo, full = module.lax.masks(torch.rand(2, 3, size, size))
    assert lo.shape == (2, 1, low, low) and full.shape == (2, 1, size, size)
    assert 0 <= float(full.min()) and float(full.max()) <= 1


def test_head_channels_scale_with_width():
    head = LAXHead(128, width=0.25)
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 32, 16, 1]


def test_bad_hparams():
    net = resnet18(5, width=0.125, stem="cifar")
    with pytest.raises(ValueError, match="temperature"):
        LAXModule(net, image_size=32, optimizer=torch.optim.Adam, temperature=0)
    with pytest.raises(ValueError, match="feature_upsample"):
        resolve_feature_upsample("big", 4)


def _tiny_loaders(n: int = 32, size: int = 32):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 3, size, size, generator=g), torch.randint(0, 5, (n,), generator=g)
    ds = TensorDataset(x, y, torch.arange(n))
    return DataLoader(ds, batch_size=16), DataLoader(ds, batch_size=16)


def test_training_leaves_base_bitwise_identical_and_checkpoints_hold_head_only(tmp_path):
    net = resnet18(5, width=0.125, stem="cifar").eval()
    for p in net.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    module = LAXModule(net, image_size=32, optimizer=torch.optim.Adam, val_samples=8, val_step=0.1)
    head_before = {k: v.clone() for k, v in module.head_state_dict().items()}
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, monitor="val/msi", mode="max", save_last=True
    )
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        callbacks=[ckpt],
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        inference_mode=False,
    )
    train, val = _tiny_loaders()
    trainer.fit(module, train, val)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "base classifier changed"
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert any(not torch.equal(head_before[k], v) for k, v in module.head_state_dict().items()), (
        "head did not learn"
    )
    assert "val/msi" in trainer.callback_metrics and "val/mask_mean" in trainer.callback_metrics
    sd = torch.load(ckpt.best_model_path, weights_only=True)["state_dict"]
    assert sd and all(k.startswith("lax.head.") for k in sd)
    fresh = LAXModule(
        resnet18(5, width=0.125, stem="cifar"), image_size=32, optimizer=torch.optim.Adam
    )
    fresh.load_head(ckpt.best_model_path)
    path = tmp_path / "head.pt"
    module.save_head(path, {"note": "x"})
    fresh.load_head(path)
    assert all(
        torch.equal(v, module.head_state_dict()[k]) for k, v in fresh.head_state_dict().items()
    )


def test_load_head_of_another_width_is_a_clear_error(tmp_path):
    a = LAXModule(resnet18(5, width=0.125, stem="cifar"), image_size=32, optimizer=torch.optim.Adam)
    b = LAXModule(resnet18(5, width=0.25, stem="cifar"), image_size=32, optimizer=torch.optim.Adam)
    a.save_head(tmp_path / "h.pt")
    with pytest.raises(ValueError, match="does not hold weights for this LAX head"):
        b.load_head(tmp_path / "h.pt")
