"""Forward passes and wall time of a run's metric entries, entry by entry versus shared.

``python scripts/bench_shared.py [overrides...]`` composes ``experiment=demo``
with ``dataset.n_test=200`` and ``metric=[paper,qge,faithfulness]`` (then the
given overrides), builds the Grad-CAM explainer (``configs/explainer/gradcam.yaml``),
takes the demo classifier from the cache (training it if missing), and for
every test batch scores the Grad-CAM heatmaps with every metric entry twice:
on the bare classifier (entry by entry, today's evaluation) and through one
:class:`~xaibench.metrics.shared_forward.SharedForward` per batch (each
distinct perturbed input forwarded once per batch). Rows are counted by a
forward pre-hook on the classifier, so both counts are rows the classifier
computed. The two ways alternate entry by entry (the shared one keeps its
store across the entries of a batch), so a busy machine slows both alike.
Prints and returns :func:`measure_sharing`'s dict (``--json PATH`` writes it too).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn

from xaibench.build import build_datamodule, build_explainer, build_metrics, explainer_configs
from xaibench.data.datasets import unpack_batch
from xaibench.metrics.registry import entry_spec
from xaibench.metrics.shared_forward import ForwardStats, SharedForward, row_counter
from xaibench.pipeline import base_classifier

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = [
    "experiment=demo",
    "dataset.n_test=200",
    "metric=[paper,qge,faithfulness]",
]
EXPLAINER = "gradcam"
"""The heatmaps scored (an explainer config of configs/explainer/, as in ``compare_with``)."""


def _kwargs(fn: Any, batch: Any) -> dict[str, Tensor]:
    """The inputs entry ``fn`` declares beyond the common four (as the evaluation passes them)."""
    needs = entry_spec(fn).needs
    kw = {}
    if "indices" in needs:
        kw["indices"] = batch.index
    if "masks" in needs:
        kw["masks"] = batch.masks
    return kw


def _score(model: nn.Module, net: nn.Module, fn: Any, b: Any, heat: Tensor, rec: dict) -> dict:
    """One entry on one batch with ``model``; adds the rows ``net`` computed and the seconds to ``rec``."""
    with row_counter(net) as counts:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(model, b.images, heat, b.labels, **_kwargs(fn, b))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    for key, value in (
        ("rows", counts[0]),
        ("calls", counts[1]),
        ("seconds", seconds),
        ("cpu_s", cpu),
    ):
        rec[key] = rec.get(key, 0) + value
    return out


def _max_diff(a: Tensor, b: Tensor) -> tuple[float, int]:
    """Max abs difference (NaN where both are NaN counts as equal) and how many values differ."""
    a, b = a.double(), b.double()
    both_nan = a.isnan() & b.isnan()
    diff = (a - b).abs().masked_fill(both_nan, 0.0).nan_to_num(nan=float("inf"))
    return float(diff.max()) if diff.numel() else 0.0, int((diff != 0).sum())


def explainer_config(cfg: DictConfig, name: str) -> DictConfig:
    """``configs/explainer/<name>.yaml`` in the run's context (as ``compare_with`` loads it)."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.compare_with = [name]
    return explainer_configs(cfg)[name]


def measure_sharing(cfg: DictConfig, *, max_batches: int | None = None) -> dict[str, Any]:
    """Rows forwarded, calls and seconds of ``cfg``'s metric entries on its test set, both ways.

    Args:
        cfg: a composed run config (``dataset``, ``model``, ``explainer``, ``metric``).
        max_batches: stop after this many test batches (all if None).

    Returns:
        ``images``; ``entry_by_entry`` and ``shared``: ``{rows, calls, seconds,
        cpu_s, per_entry}`` (wall and process CPU seconds; ``per_entry``: entry →
        the same); ``shared_stats`` (:class:`~xaibench.metrics.shared_forward.ForwardStats`,
        ``peak_bytes`` the most memory the stored rows held in one batch);
        ``rows_saved`` (fraction), ``speedup`` and ``cpu_speedup`` (time ratios);
        ``max_abs_diff`` and ``values_differing`` over every tensor every entry
        returned (per-sample values and curves).
    """
    dm = build_datamodule(cfg)
    dm.setup()
    net, _ = base_classifier(cfg, dm)
    explainer = build_explainer(explainer_config(cfg, EXPLAINER), EXPLAINER)
    metrics = build_metrics(cfg)
    per_entry: dict[str, dict[str, dict]] = {"entry_by_entry": {}, "shared": {}}
    stats = ForwardStats()
    worst, differing, images = 0.0, 0, 0
    for i, batch in enumerate(dm.test_dataloader()):
        if max_batches is not None and i >= max_batches:
            break
        b = unpack_batch(batch)
        heat = explainer(net, b.images, b.labels).detach()
        images += len(b.labels)
        shared = SharedForward(net)
        for j, (entry, fn) in enumerate(metrics.items()):  # the two ways alternate entry by entry
            res = {}
            for mode in (
                ("entry_by_entry", "shared") if (i + j) % 2 == 0 else ("shared", "entry_by_entry")
            ):
                model = shared if mode == "shared" else net
                res[mode] = _score(model, net, fn, b, heat, per_entry[mode].setdefault(entry, {}))
            for key, value in res["entry_by_entry"].items():
                d, k = _max_diff(value, res["shared"][key])
                worst, differing = max(worst, d), differing + k
        shared.clear()
        stats += shared.stats
    totals = {
        mode: {
            "rows": sum(r["rows"] for r in recs.values()),
            "calls": sum(r["calls"] for r in recs.values()),
            "seconds": sum(r["seconds"] for r in recs.values()),
            "cpu_s": sum(r["cpu_s"] for r in recs.values()),
            "per_entry": recs,
        }
        for mode, recs in per_entry.items()
    }
    base, shared_t = totals["entry_by_entry"], totals["shared"]
    return {
        "images": images,
        "entries": list(metrics),
        **totals,
        "shared_stats": stats.as_dict(),
        "rows_saved": 1 - shared_t["rows"] / max(base["rows"], 1),
        "speedup": base["seconds"] / max(shared_t["seconds"], 1e-12),
        "cpu_speedup": base["cpu_s"] / max(shared_t["cpu_s"], 1e-12),
        "max_abs_diff": worst,
        "values_differing": differing,
    }


def compose_config(overrides: list[str], out_dir: Path) -> DictConfig:
    """The run config of ``DEFAULTS + overrides`` (outputs under ``out_dir``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train.yaml", overrides=[*DEFAULTS, *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(out_dir)
    return cfg


def _row(name: str, a: dict, s: dict) -> str:
    cells = [a["rows"], s["rows"], *(f"{d[k]:.1f}" for k in ("seconds", "cpu_s") for d in (a, s))]
    return f"| {name} | " + " | ".join(str(c) for c in cells) + " |"


def format_report(r: dict[str, Any]) -> str:
    """A markdown table: rows and seconds per entry, both ways, then the totals."""
    lines = [
        f"{r['images']} images; rows forwarded and seconds, entry by entry vs shared",
        "",
        "| entry | rows (entry) | rows (shared) | s (entry) | s (shared) | cpu s (entry) | cpu s (shared) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    a, s = r["entry_by_entry"], r["shared"]
    for e in r["entries"]:
        pa, ps = a["per_entry"][e], s["per_entry"][e]
        lines.append(_row(e, pa, ps))
    lines.append(_row("**all**", a, s))
    lines += [
        "",
        f"rows saved {r['rows_saved']:.1%}, speedup {r['speedup']:.2f}x wall, "
        f"{r['cpu_speedup']:.2f}x CPU, evicted {r['shared_stats']['evicted']}, "
        f"peak stored {r['shared_stats']['peak_bytes'] / 2**20:.0f} MiB, "
        f"max abs diff {r['max_abs_diff']:.3g} ({r['values_differing']} values differ)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides after the defaults")
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the dict here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(args.overrides, Path(tmp))
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
        result = measure_sharing(cfg, max_batches=args.max_batches)
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
