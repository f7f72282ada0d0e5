"""QGE as a column everywhere (issue 17, item 5): ``metric=[paper,qge]`` plus a ``qge_<metric>``
entry of other registered metrics (a random one, a localization one) runs through
``pipeline.train`` on synthetic_digits and on a CIFAR-10 fixture; each ``qge_<key>`` column
of ``per_sample.csv`` equals ``Q(h) - Q(inverse(h))`` computed directly from the registered
metric, the cached classifier and the explainer's heatmaps."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_DIGITS
from fixtures import make_cifar

from xaibench import pipeline
from xaibench.build import build_explainer
from xaibench.data import unpack_batch
from xaibench.metrics.qge import inverse
from xaibench.metrics.registry import entry_spec, get_metric

# extra QGE entries, as a user adds them on the CLI: a random metric (its draws seeded by
# the dataset index) and a localization one (needs masks: NaN where a dataset has none)
EXTRA = [
    "+metric.qge_faithfulness_correlation={_target_:xaibench.metrics.quality_gaps,"
    "_partial_:true,metric:faithfulness_correlation,nr_runs:4,subset_size:256}",
    "+metric.qge_relevance_mass={_target_:xaibench.metrics.quality_gaps,"
    "_partial_:true,metric:localization,key:relevance_mass}",
]
FAST = [
    "metric.paper.step=0.1",
    "metric.paper.percent_step=0.1",
    "metric.qge_msi.step=0.1",
    "metric.qge_deletion.step=0.1",
]
GAP_KEYS = ("_target_", "_partial_", "metric", "key", "k", "seed")
DATASETS = {
    "synthetic_digits": [*TINY_DIGITS, "dataset.n_test=8", "dataset.eval_batch_size=8"],
    "cifar10": [
        "dataset=cifar10",
        "dataset.val_size=20",
        "dataset.num_workers=0",
        "dataset.eval_batch_size=20",
        "model.net.width=0.125",
        "model.max_epochs=1",
    ],
}


def direct_gap(cfg, entry: str, net, images, heat, labels, index, masks) -> torch.Tensor:
    """``Q(h) - Q(inverse h)`` of entry ``entry``'s key, from its registered metric alone."""
    node = cfg.metric[entry]
    fn = get_metric(str(node.metric))
    kw = {k: v for k, v in node.items() if k not in GAP_KEYS}
    key = node.get("key") or entry.removeprefix("qge_")
    if "indices" in entry_spec(fn).needs:
        kw["indices"] = index
    if "masks" in entry_spec(fn).needs:
        kw["masks"] = masks
    with torch.no_grad():
        q = fn(net, images, heat, labels, **kw)[key]
        q_inv = fn(net, images, inverse(heat), labels, **kw)[key]
    return (q - q_inv).double()


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_qge_columns_equal_direct_gaps(cfg_factory, tmp_path, shared_cache, one_thread, dataset):
    data = tmp_path / "data"
    if dataset == "cifar10":
        make_cifar(data, n_per_batch=20)
    cfg = cfg_factory(
        [*DATASETS[dataset], f"paths.data_dir={data}", "explainer=gradcam",
         "metric=[paper,qge]", *FAST, *EXTRA],
        cache_dir=shared_cache,
    )  # fmt: skip
    summary = pipeline.train(cfg)
    with open(Path(cfg.paths.output_dir) / "per_sample.csv") as f:
        rows = {int(r["index"]): r for r in csv.DictReader(f)}
    columns = ["qge_msi", "qge_deletion", "qge_faithfulness_correlation", "qge_relevance_mass"]
    stats = summary["test"]["gradcam"]
    assert all(c in stats and c in next(iter(rows.values())) for c in columns)

    dm = pipeline.build_datamodule(cfg)
    dm.setup()
    net, info = pipeline.base_classifier(cfg, dm, train_if_missing=False)
    assert info["cached"]
    split = dm.splits["test"]
    b = unpack_batch(
        [torch.stack([torch.as_tensor(split[i][j]) for i in range(len(split))])
         for j in range(len(split[0]))]
    )  # fmt: skip
    assert sorted(rows) == sorted(b.index.tolist())
    heat = build_explainer(cfg.explainer, "gradcam")(net, b.images, b.labels).detach()
    has_masks = b.masks is not None
    for entry in columns:
        if entry == "qge_relevance_mass" and not has_masks:
            # CIFAR-10 has no masks: the column is there, NaN for every sample, and counted
            assert stats[entry]["n"] == 0 and stats[entry]["n_nan"] == len(rows)
            continue
        want = direct_gap(cfg, entry, net, b.images, heat, b.labels, b.index, b.masks)
        got = torch.tensor([float(rows[int(i)][entry]) for i in b.index], dtype=torch.float64)
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got)), entry
        assert int(finite.sum()) >= len(rows) // 2, entry  # a real check, not all NaN
        # per_sample.csv keeps 6 significant digits
        torch.testing.assert_close(got[finite], want[finite], rtol=2e-5, atol=2e-6)
        assert stats[entry]["mean"] == pytest.approx(float(want[finite].mean()), abs=1e-5)
    # the inverse really is another map: some gap is non-zero (a tiny classifier's MSI may
    # be flat, so any of the columns)
    gaps = [float(r[c]) for r in rows.values() for c in columns]
    assert any(math.isfinite(g) and g != 0 for g in gaps)
