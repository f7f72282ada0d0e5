"""The metric-throughput table: xaibench vs Quantus 0.6 vs Captum, each against its bare forward passes.

``python scripts/bench.py`` (``make bench``) writes ``bench.json`` and
``bench.md`` into ``--out`` (default ``outputs/bench/<timestamp>/``) and prints
the table. ``--quick``: a tiny smoke run (tests). Sections:

* **metrics**: images/s per metric (MSI, the paper columns, pixel flipping =
  ``faithfulness_deletion``, region perturbation, faithfulness correlation,
  infidelity, IROF, ROAD) for xaibench, Quantus 0.6 (``quantus.*`` on the same
  model, inputs and heatmaps, as tests/test_metrics_faithfulness_quantus.py
  calls it) and Captum's ``infidelity``. Every implementation's forward rows
  are counted by a pre-hook on the model; ``ratio`` = its time / the time of
  the model alone on that many rows (chunks of ``batch_size`` pre-built
  inputs), so 1.0 means "as fast as its own forward passes allow". A reference
  that cannot run on these inputs gets its reason instead of a number.
* **explainers**: images/s per explainer on the demo model
  (``scripts/bench_explainers.py``; LAX and DeepFaith attached untrained).
* **fast forward**: img/s of the demo model and of ResNet18 width 1 at 224 px
  (or of ``--model`` when it is not the demo) plain, with ``channels_last``,
  with ``torch.compile`` and, on CUDA, under bf16 autocast
  (``xaibench.eval.fast``), and the flipped argmax / max logit difference each
  flag causes.
* **shared** (``--shared N``, off by default: it trains the demo classifier
  if missing): ``scripts/bench_shared.py``'s ``measure_sharing`` on
  ``metric=[paper,qge,faithfulness]``.

``--device cuda --model resnet18|resnet50 --size 224`` runs the metric table on
a torchvision model (random weights) and reports each metric as a percentage
of the model's own forward img/s (the roofline); ``scripts/bench_gpu.sh``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xaibench.metrics import msi, paper_columns
from xaibench.metrics.faithfulness import (
    faithfulness_correlation,
    faithfulness_deletion,
    infidelity,
    irof,
    region_perturbation,
)
from xaibench.metrics.road import road
from xaibench.metrics.shared_forward import row_counter
from xaibench.models import resnet18

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent


@dataclass
class Setup:
    """A model and a batch to benchmark on."""

    name: str
    model: nn.Module
    images: Tensor
    heatmaps: Tensor
    targets: Tensor
    batch_size: int
    device: str


def build_model(model: str, size: int) -> nn.Module:
    """``demo`` (ResNet18 width 0.25, stride-2 stem), ``resnet18w1`` (ours, ImageNet stem) or torchvision ``resnet18``/``resnet50``."""
    if model == "demo":
        return resnet18(10, width=0.25, stem="stride2")
    if model == "resnet18w1":
        return resnet18(10, width=1.0, stem="imagenet")
    import torchvision

    if model in ("resnet18", "resnet50"):
        return getattr(torchvision.models, model)(weights=None, num_classes=1000)
    raise SystemExit(f"--model {model!r} is unknown; choose demo, resnet18w1, resnet18, resnet50")


def make_setup(model: str, size: int, n: int, batch_size: int, device: str) -> Setup:
    """Random-weight model in eval mode, random images, smooth random heatmaps ``(n, 1, size, size)`` in [0, 1]."""
    torch.manual_seed(0)
    net = build_model(model, size).to(device).eval()
    images = torch.rand(n, 3, size, size, device=device)
    low = torch.rand(n, 1, 8, 8, device=device)  # blob-like maps, as CAMs/LAX give
    heat = nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    lo, hi = heat.amin((2, 3), keepdim=True), heat.amax((2, 3), keepdim=True)
    with torch.inference_mode():
        targets = net(images).argmax(1)
    return Setup(
        f"{model} {size}px", net, images, (heat - lo) / (hi - lo), targets, batch_size, device
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    """Wall time of one call (CUDA-synchronised on GPU)."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def bare_seconds(s: Setup, rows: int) -> float:
    """Time of ``rows`` forward passes in chunks of ``batch_size`` on pre-built inputs: the floor."""
    reps = math.ceil(s.batch_size / s.images.shape[0])
    chunk = s.images.repeat(reps, 1, 1, 1)[: s.batch_size]

    def run() -> None:
        with torch.inference_mode():
            for start in range(0, rows, s.batch_size):
                s.model(chunk[: min(s.batch_size, rows - start)])

    return timed(run, s.device)[0]


def measure(s: Setup, call: Callable[[], object], n: int) -> dict[str, Any]:
    """img/s of ``call`` on ``n`` images, its forward rows and its ratio to the bare forward time."""
    with row_counter(s.model) as rows:
        t, _ = timed(call, s.device)
    bare = bare_seconds(s, rows[0]) if rows[0] else float("nan")
    return {
        "img_s": n / t, "seconds": t, "rows": rows[0], "bare_s": bare,
        "ratio": t / bare, "roofline_pct": 100 * bare / t,
    }  # fmt: skip


# --- the metrics: (ours, Quantus, Captum) per row ------------------------------------------------


def numpy_batch(s: Setup, n: int) -> dict[str, np.ndarray]:
    x, y, a = (t[:n].detach().cpu().numpy() for t in (s.images, s.targets, s.heatmaps))
    return {"x_batch": x, "y_batch": y, "a_batch": a}


def quantus_call(s: Setup, metric: Any, n: int, **call: Any) -> Callable[[], object]:
    """A Quantus 0.6 metric on the first ``n`` images, channel-first, batch size as ours."""
    batch = numpy_batch(s, n)
    return lambda: metric(
        model=s.model, device=s.device, channel_first=True, batch_size=s.batch_size, **batch, **call
    )


def metric_cases(s: Setup, p: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per table row: a label, the settings, our call, and the references' calls or reasons."""
    import quantus

    m, x, h, y, b = s.model, s.images, s.heatmaps, s.targets, s.batch_size
    kw = {"disable_warnings": True, "display_progressbar": False}
    fis, patch, regions = p["features_in_step"], p["patch"], p["regions"]
    runs, subset = p["nr_runs"], p["subset_size"]
    nq = p["n_ref"]
    cases = [
        {
            "metric": "msi", "settings": f"alpha_min 0.5, step {p['step']}",
            "ours": lambda: msi(m, x, h, y, step=p["step"], batch_size=b),
            "quantus": "no Quantus metric", "captum": "no Captum metric",
        },
        {
            "metric": "paper columns", "settings": f"MSI + ins/del value & percent, step {p['step']}",
            "ours": lambda: paper_columns(m, x, h, y, step=p["step"], batch_size=b),
            "quantus": "no Quantus metric", "captum": "no Captum metric",
        },
        {
            "metric": "pixel flipping", "settings": f"faithfulness_deletion, {fis} elements/step, black",
            "ours": lambda: faithfulness_deletion(
                m, x, h, y, features_in_step=fis, baseline="black", batch_size=b
            ),
            "quantus": (nq, quantus_call(s, quantus.PixelFlipping(
                features_in_step=fis, perturb_baseline="black", return_auc_per_sample=True, **kw
            ), nq)),
            "captum": "no Captum metric",
        },
        {
            "metric": "region perturbation", "settings": f"patch {patch}, {regions} regions, morf",
            "ours": lambda: region_perturbation(
                m, x, h, y, patch_size=patch, regions_evaluation=regions, batch_size=b
            ),
            "quantus": (nq, quantus_call(s, quantus.RegionPerturbation(
                patch_size=patch, regions_evaluation=regions, **kw
            ), nq)),
            "captum": "no Captum metric",
        },
        {
            "metric": "faithfulness correlation", "settings": f"{runs} runs of {subset} elements",
            "ours": lambda: faithfulness_correlation(
                m, x, h, y, nr_runs=runs, subset_size=subset, batch_size=b
            ),
            "quantus": (nq, quantus_call(s, quantus.FaithfulnessCorrelation(
                nr_runs=runs, subset_size=subset, return_aggregate=False, **kw
            ), nq)),
            "captum": "no Captum metric",
        },
        {
            "metric": "infidelity", "settings": f"patch {patch}, black, 1 sample (Captum: 10 noise draws)",
            "ours": lambda: infidelity(m, x, h - 0.5, y, perturb_patch_sizes=(patch,), batch_size=b),
            "quantus": (nq, quantus_call(s, quantus.Infidelity(
                perturb_patch_sizes=[patch], n_perturb_samples=1, **kw
            ), nq)),
            "captum": (s.images.shape[0], lambda: captum_infidelity(s)),
        },
        {
            "metric": "irof", "settings": "SLIC segments, mean baseline",
            "ours": lambda: irof(m, x, h, y, batch_size=b),
            "quantus": "Quantus 0.6 IROF runs for 1-channel inputs only (RGB: shape error)",
            "captum": "no Captum metric",
        },
        {
            "metric": "road", "settings": "MoRF+LeRF at 9 percentiles, noise 0.01",
            "ours": lambda: road(m, x, h, y, batch_size=b),
            "quantus": (p["n_road_ref"], lambda: quantus_road(s, p["n_road_ref"])),
            "captum": "no Captum metric",
        },
    ]  # fmt: skip
    return cases


def captum_infidelity(s: Setup) -> Tensor:
    """Captum's ``infidelity`` with its tutorial's Gaussian perturbation (std 0.003), 10 draws."""
    from captum.metrics import infidelity as captum_inf

    def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
        noise = torch.randn_like(inputs) * 0.003
        return noise, inputs - noise

    attributions = s.heatmaps.expand_as(s.images) - 0.5
    with torch.no_grad():
        return captum_inf(
            s.model, perturb, s.images, attributions, target=s.targets, n_perturb_samples=10,
            max_examples_per_batch=max(1, s.batch_size // 10),
        )  # fmt: skip


def quantus_road(s: Setup, n: int) -> object:
    """Quantus 0.6 ROAD (MoRF only) with ``scripts/bench_road.py``'s one-line upstream fix."""
    from bench_road import run_quantus

    from xaibench.metrics.road import PERCENTILES

    x, h, y = s.images[:n], s.heatmaps[:n], s.targets[:n]
    return run_quantus(s.model, x, h, y, PERCENTILES, s.device)


def bench_metrics(s: Setup, p: dict[str, Any], quantus_ok: bool) -> list[dict[str, Any]]:
    """Time every metric row; returns one dict per (metric, implementation)."""
    n = s.images.shape[0]
    with torch.inference_mode():
        s.model(s.images[:2])  # warm-up
    rows = []
    for case in metric_cases(s, p):
        rec = {"metric": case["metric"], "impl": "xaibench", "settings": case["settings"], "n": n}
        rec |= measure(s, case["ours"], n)
        rows.append(rec)
        _print_row(rec)
        for impl in ("quantus", "captum"):
            ref = case[impl]
            rec = {"metric": case["metric"], "impl": impl, "settings": case["settings"]}
            if isinstance(ref, str) or (impl == "quantus" and not quantus_ok):
                rec["skipped"] = ref if isinstance(ref, str) else "--no-quantus"
                rows.append(rec)
                continue
            nref, call = ref
            rec["n"] = nref
            try:
                rec |= measure(s, call, nref)
            except Exception as err:  # a reference library failing on these inputs is a result
                rec["skipped"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
            rows.append(rec)
            _print_row(rec)
    ours = {r["metric"]: r for r in rows if r["impl"] == "xaibench"}
    for r in rows:
        if r["impl"] != "xaibench" and "img_s" in r:
            r["ours_speedup"] = ours[r["metric"]]["img_s"] / r["img_s"]
    return rows


def _print_row(r: dict[str, Any]) -> None:
    if "img_s" in r:
        print(
            f"  {r['metric']:24s} {r['impl']:8s} {r['img_s']:9.2f} img/s  rows {r['rows']:6d}  "
            f"ratio {r['ratio']:.2f}  ({r['n']} images, {r['seconds']:.1f}s)",
            flush=True,
        )


# --- fast forward flags ---------------------------------------------------------------------------


def bench_fast(device: str, variants: list[tuple[str, int, int]], compile_ok: bool) -> list[dict]:
    """img/s of each model plain / channels_last / compile, and what each flag changes."""
    import copy

    from xaibench.errors import ConfigError
    from xaibench.eval.fast import compare_predictions, fast_forward

    out = []
    for model, size, n in variants:
        torch.manual_seed(0)
        plain = build_model(model, size).to(device).eval()
        x = torch.rand(n, 3, size, size, device=device)
        flags = [("plain", {}), ("channels_last", {"channels_last": True})]
        if device.startswith("cuda"):
            flags.append(("bf16 autocast", {"autocast_bf16": True}))
        if compile_ok:
            flags.append(("compile", {"compile": True}))  # each build ~1-2 min on a busy CPU
        for label, kw in flags:
            rec: dict[str, Any] = {"model": f"{model} {size}px", "flags": label, "n": n}
            try:
                t_build, net = timed(
                    lambda kw=kw, p=plain, x=x: fast_forward(copy.deepcopy(p), example=x, **kw),
                    device,
                )
            except ConfigError as err:
                rec["skipped"] = str(err)
                out.append(rec)
                print(f"  {rec['model']:18s} {label:22s} skipped: {err}")
                continue
            with torch.inference_mode():
                net(x)  # warm-up
                t, _ = timed(lambda net=net, x=x: net(x), device)
            rec |= {"img_s": n / t, "build_s": t_build, **compare_predictions(plain, net, x)}
            out.append(rec)
            print(
                f"  {rec['model']:18s} {label:22s} {rec['img_s']:8.1f} img/s  "
                f"max |logit diff| {rec['max_abs_logit_diff']:.1e}  flipped {rec['flipped']}/{n}"
                f"  (build {t_build:.0f}s)",
                flush=True,
            )
    return out


# --- sections from sibling scripts ----------------------------------------------------------------


def _sibling(name: str) -> Any | None:
    path = SCRIPTS / f"{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def bench_shared(n_test: int) -> dict[str, Any] | str:
    """``measure_sharing`` of scripts/bench_shared.py on ``n_test`` demo images, or why not."""
    import tempfile

    module = _sibling("bench_shared")
    if module is None or not hasattr(module, "measure_sharing"):
        return "scripts/bench_shared.py has no measure_sharing yet"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = module.compose_config([f"dataset.n_test={n_test}"], Path(tmp))
        result = module.measure_sharing(cfg)
    print(module.format_report(result))
    return result


# --- the table ------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    """``bench.md``: the metric table, then explainers and fast-forward tables."""
    s = result["setup"]
    lines = [
        f"# Metric throughput ({s['model']}, {s['size']}px, {s['device']}, {s['threads']} threads, "
        f"batch {s['batch_size']}, {result['wall_s']:.0f}s wall)",
        "",
        f"Roofline (the model's own forward): {result['roofline_img_s']:.1f} img/s. "
        "ratio = time / bare forward time of the rows that implementation forwards (1.0 = no overhead); "
        "% roofline = bare / time.",
        "",
        "| metric | impl | settings | img/s | forward rows/img | ratio to bare forwards | % of own forwards | xaibench speedup |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["metrics"]:
        if "img_s" in r:
            speed = f"{r['ours_speedup']:.1f}x" if "ours_speedup" in r else ""
            lines.append(
                f"| {r['metric']} | {r['impl']} | {r['settings']} | {r['img_s']:.2f} | "
                f"{r['rows'] / r['n']:.0f} | {r['ratio']:.2f} | {r['roofline_pct']:.0f}% | {speed} |"
            )
        elif not r["skipped"].startswith("no "):  # "no Quantus/Captum metric": nothing to compare
            lines.append(f"| {r['metric']} | {r['impl']} | | n/a: {r['skipped']} | | | | |")
    if result.get("explainers"):
        lines += ["", "| explainer | img/s |", "|---|---:|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in result["explainers"].items()]
    if result.get("fast_forward"):
        lines += ["", "| model | flags | img/s | max abs logit diff | flipped argmax |", "|---|---|---:|---:|---:|"]  # fmt: skip
        for r in result["fast_forward"]:
            if "img_s" in r:
                lines.append(
                    f"| {r['model']} | {r['flags']} | {r['img_s']:.1f} | "
                    f"{r['max_abs_logit_diff']:.1e} | {r['flipped']}/{r['n']} |"
                )
            else:
                lines.append(f"| {r['model']} | {r['flags']} | n/a: {r['skipped']} | | |")
    return "\n".join(lines) + "\n"


PARAMS = {
    "quick": {"n": 2, "n_ref": 2, "n_road_ref": 1, "step": 0.25, "features_in_step": 2048,
              "patch": 16, "regions": 4, "nr_runs": 4, "subset_size": 224},
    "cpu": {"n": 16, "n_ref": 4, "n_road_ref": 2, "step": 0.02, "features_in_step": 256,
            "patch": 8, "regions": 16, "nr_runs": 20, "subset_size": 224},
    "cuda": {"n": 64, "n_ref": 4, "n_road_ref": 1, "step": 0.02, "features_in_step": 6272,
             "patch": 16, "regions": 32, "nr_runs": 20, "subset_size": 224},
}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sections, write bench.json and bench.md, print the table; returns the result dict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (tests)")
    parser.add_argument("--no-quantus", action="store_true", help="skip the Quantus comparison")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="demo", help="demo, resnet18w1, resnet18, resnet50")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=None, help="images per metric (default by device)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    parser.add_argument("--no-explainers", action="store_true")
    parser.add_argument("--no-fast", action="store_true", help="skip the fast-forward section")
    parser.add_argument("--no-compile", action="store_true", help="fast-forward without compile")
    parser.add_argument(
        "--shared", type=int, default=0, metavar="N", help="bench_shared on N images"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench.py: --device cuda but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Quantus prints per-call advice as warnings
    sys.path.insert(0, str(SCRIPTS))  # bench_road, bench_shared
    quantus_ok = not args.no_quantus and importlib.util.find_spec("quantus") is not None
    p = dict(PARAMS["quick" if args.quick else "cuda" if args.device.startswith("cuda") else "cpu"])
    p["n"] = args.n or p["n"]
    out = args.out or ROOT / "outputs" / "bench" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    start = time.perf_counter()
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    s = make_setup(args.model, args.size, p["n"], args.batch_size, args.device)
    roofline = s.images.shape[0] * 4 / bare_seconds(s, s.images.shape[0] * 4)
    print(f"[{s.name}] roofline (bare forward) {roofline:.1f} img/s; metrics on {p['n']} images")
    result: dict[str, Any] = {
        "setup": {"model": args.model, "size": args.size, "device": args.device,
                  "threads": torch.get_num_threads(), "batch_size": args.batch_size,
                  "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                  "params": p},
        "roofline_img_s": roofline,
        "metrics": bench_metrics(s, p, quantus_ok),
    }  # fmt: skip
    if not args.quick and not args.no_explainers and args.model == "demo":
        module = _sibling("bench_explainers")
        result["explainers"] = module.bench_explainers(device=args.device) if module else {}
    if not args.no_fast:
        variants = [("demo", 32, 4)] if args.quick else [("demo", 64, 64), ("resnet18w1", 224, 8)]
        if args.model != "demo":
            variants = [(args.model, args.size, p["n"])]
        result["fast_forward"] = bench_fast(
            args.device, variants, compile_ok=not (args.quick or args.no_compile)
        )
    if args.shared:
        result["shared"] = bench_shared(args.shared)
    result["wall_s"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = markdown(result)
    (out / "bench.md").write_text(table)
    print(table)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'} ({result['wall_s']:.0f}s wall)")
    return result


if __name__ == "__main__":
    main()
