"""Benchmark the metric engine: bare forward passes vs our engine vs Quantus 0.6.

Run ``python scripts/bench.py`` (``make bench``) or ``--quick`` for a smoke run.
Sections (one function each; ``scripts/bench_explainers.py``'s
``bench_explainers(device=...)`` runs too, except with ``--quick``, when that module exists):

* ``bench_paper``: the LAX paper's columns (MSI + insertion/deletion in value
  and percent modes) on one shared call: forward passes without sharing, with
  per-metric de-duplication and shared across metrics; engine time vs the bare
  forward passes it makes.
* ``bench_pixel_flipping``: pixel flipping (Quantus ``PixelFlipping``) by
  our engine (``faithfulness_deletion(variant="quantus")`` when present, else
  percent-mode deletion with the same number of steps) vs bare forwards vs Quantus.

Models: the demo model (``resnet18(10, width=0.25, stem="stride2")``, 64×64) and
a width-1 ResNet18 with the ImageNet stem at 224×224 (CUB's setting); random
weights, eval mode. Peak memory: process max RSS (CPU) or
``torch.cuda.max_memory_allocated`` (GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import math
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from xaibench.metrics import forward_counts, paper_columns, plan_paper
from xaibench.models import resnet18


@dataclass
class Setup:
    """A model and a batch to benchmark on."""

    name: str
    model: nn.Module
    images: Tensor
    heatmaps: Tensor
    targets: Tensor
    batch_size: int


def make_setup(
    name: str, width: float, stem: str, size: int, n: int, batch_size: int, device: str
) -> Setup:
    """Random-weight ResNet18 in eval mode, random images, smooth random heatmaps in [0, 1]."""
    torch.manual_seed(0)
    model = resnet18(10, width=width, stem=stem).to(device).eval()
    images = torch.rand(n, 3, size, size, device=device)
    low = torch.rand(n, 1, 8, 8, device=device)  # blob-like maps, as CAMs/LAX give
    heatmaps = nn.functional.interpolate(
        low, size=(size, size), mode="bilinear", align_corners=False
    )
    heatmaps = (heatmaps - heatmaps.amin((2, 3), keepdim=True)) / heatmaps.flatten(2).amax(2)[
        ..., None, None
    ]
    with torch.inference_mode():
        targets = model(images).argmax(1)
    return Setup(name, model, images, heatmaps.clamp(0, 1), targets, batch_size)


def timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    """Wall time of one call (after a CUDA sync on GPU)."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def bare_forward(s: Setup, total: int) -> None:
    """``total`` forward passes in chunks of ``batch_size`` on pre-built inputs: the floor."""
    chunk = s.images.repeat_interleave(math.ceil(s.batch_size / s.images.shape[0]), 0)[
        : s.batch_size
    ]
    with torch.inference_mode():
        for start in range(0, total, s.batch_size):
            s.model(chunk[: min(s.batch_size, total - start)])


@contextlib.contextmanager
def forward_timer(model: nn.Module, device: str) -> Iterator[list[float]]:
    """Accumulate the seconds spent inside ``model.forward`` (hooks removed on exit)."""
    total, start = [0.0], [0.0]

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def pre(*_: object) -> None:
        sync()
        start[0] = time.perf_counter()

    def post(*_: object) -> None:
        sync()
        total[0] += time.perf_counter() - start[0]

    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    try:
        yield total
    finally:
        for h in handles:
            h.remove()


def timed_engine(call: Callable[[], object], s: Setup, device: str) -> tuple[float, float]:
    """Wall time of an engine call and the share of it spent in the model's forward passes."""
    with forward_timer(s.model, device) as fwd:
        t, _ = timed(call, device)
    return t, fwd[0]


def report(t_engine: float, t_fwd: float, t_bare: float) -> str:
    """The engine/bare ratios: vs a separate bare run, and vs its own forward time (contention-proof)."""
    return (
        f"  bare forward {t_bare:.2f}s | engine {t_engine:.2f}s, of which forward {t_fwd:.2f}s | "
        f"engine/bare {t_engine / t_bare:.2f}, engine/own-forward {t_engine / t_fwd:.2f} (target <= 1.2)"
    )


def warm_up(s: Setup) -> None:
    """One small forward so that neither timed path pays first-call costs."""
    with torch.inference_mode():
        s.model(s.images[:2])


def peak_memory(device: str) -> str:
    """Peak memory so far: CUDA allocator peak, or the process's max RSS."""
    if device == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB (CUDA peak allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (process max RSS)"


def bench_paper(s: Setup, step: float, device: str) -> None:
    """Paper columns: forward passes saved by sharing, engine vs bare forward time."""
    counts = forward_counts(plan_paper(s.heatmaps, alpha_min=0.5, step=step), s.heatmaps)
    total = counts["shared"] + 1  # + the one-image class-count check
    call = functools.partial(
        paper_columns, s.model, s.images, s.heatmaps, s.targets, step=step, batch_size=s.batch_size
    )
    warm_up(s)
    t_engine, t_fwd = timed_engine(call, s, device)
    t_bare, _ = timed(lambda: bare_forward(s, total), device)
    print(
        f"[{s.name}] paper columns (MSI + ins/del value & percent, step {step}), N={s.images.shape[0]}"
    )
    print(
        f"  forward passes: {counts['naive']} one per variant, {counts['per_metric']} with per-metric "
        f"de-dup, {counts['shared']} shared across metrics -> saves {counts['naive'] - counts['shared']} "
        f"({1 - counts['shared'] / counts['naive']:.0%}); vs separate calls saves {counts['per_metric'] - counts['shared']}"
    )
    print(report(t_engine, t_fwd, t_bare))
    print(f"  peak memory: {peak_memory(device)}")


def _our_pixel_flipping() -> tuple[str, Callable[..., dict[str, Tensor]] | None]:
    try:
        from xaibench.metrics.faithfulness import faithfulness_deletion
    except ImportError:
        return "insertion_deletion(mode='percent')", None
    return "faithfulness_deletion(variant='quantus')", faithfulness_deletion


def bench_pixel_flipping(s: Setup, features_in_step: int, device: str, quantus_ok: bool) -> None:
    """Pixel flipping: our engine vs bare forwards vs Quantus 0.6 ``PixelFlipping``."""
    from xaibench.metrics import insertion_deletion

    n, num_features = s.images.shape[0], s.images[0].numel()
    steps = math.ceil(num_features / features_in_step)
    name, ours = _our_pixel_flipping()
    if ours is not None:
        call = lambda: ours(  # noqa: E731
            s.model, s.images, s.heatmaps, s.targets, variant="quantus", features_in_step=features_in_step,
            baseline="black", batch_size=s.batch_size,
        )  # fmt: skip
        forwards = n * steps
    else:
        h = s.heatmaps.expand_as(s.images)
        call = lambda: insertion_deletion(  # noqa: E731
            s.model,
            s.images,
            h,
            s.targets,
            mode="percent",
            step=1 / steps,
            score="logit",
            batch_size=s.batch_size,
        )
        forwards = n * (2 * steps + 3)
    warm_up(s)
    t_engine, t_fwd = timed_engine(call, s, device)
    t_bare, _ = timed(lambda: bare_forward(s, forwards + 1), device)
    print(
        f"[{s.name}] pixel flipping, {steps} steps of {features_in_step} elements, N={n}: ours = {name}"
    )
    line = report(t_engine, t_fwd, t_bare)
    if quantus_ok:
        t_q = _time_quantus(s, features_in_step, device)
        line += f" | Quantus {t_q:.2f}s | Quantus/engine {t_q / t_engine:.1f} (target >= 3)"
    print(line)
    print(f"  peak memory: {peak_memory(device)}")


def _time_quantus(s: Setup, features_in_step: int, device: str) -> float:
    import quantus

    metric = quantus.PixelFlipping(
        features_in_step=features_in_step, perturb_baseline="black", return_auc_per_sample=True,
        disable_warnings=True, display_progressbar=False,
    )  # fmt: skip
    x, y, a = (t.detach().cpu().numpy() for t in (s.images, s.targets, s.heatmaps))
    kw = dict(
        model=s.model, x_batch=x, y_batch=y, a_batch=a, device=device, batch_size=s.batch_size
    )
    t, _ = timed(lambda: metric(channel_first=True, softmax=False, **kw), device)
    return t


def _explainer_section() -> Callable[[bool], None] | None:
    path = Path(__file__).with_name("bench_explainers.py")
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("bench_explainers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return getattr(module, "bench_explainers", None)


def main(argv: list[str] | None = None) -> None:
    """Run every section; ``--quick`` uses tiny sizes and skips the width-1 model and explainers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (tests)")
    parser.add_argument("--no-quantus", action="store_true", help="skip the Quantus comparison")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = args.device
    warnings.filterwarnings("ignore")  # Quantus prints per-call advice as warnings
    quantus_ok = not args.no_quantus and importlib.util.find_spec("quantus") is not None
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.quick:
        demo = make_setup("demo w0.25 stride2 64px", 0.25, "stride2", 64, 2, 64, device)
        bench_paper(demo, 0.25, device)
        bench_pixel_flipping(demo, 2048, device, quantus_ok)
    else:
        n_demo, n_big = (128, 32) if device == "cuda" else (8, 1)
        demo = make_setup("demo w0.25 stride2 64px", 0.25, "stride2", 64, n_demo, 256, device)
        bench_paper(demo, 0.02, device)
        bench_pixel_flipping(demo, 256, device, quantus_ok)
        big = make_setup("resnet18 w1 imagenet 224px", 1.0, "imagenet", 224, n_big, 64, device)
        bench_paper(big, 0.1 if device == "cuda" else 0.25, device)
        bench_pixel_flipping(big, 6272 if device == "cuda" else 12544, device, quantus_ok)
    explainers = _explainer_section()
    if explainers is not None and not args.quick:
        explainers(device=device)


if __name__ == "__main__":
    sys.exit(main())
