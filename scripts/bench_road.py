"""ROAD throughput: xaibench's ``road`` vs pytorch-grad-cam 1.5.7 vs Quantus 0.6, same inputs.

``python scripts/bench_road.py [--n 4] [--size 64] [--model demo|tiny] [--device cpu]``

* **ours**: ``xaibench.metrics.road`` (MoRF and LeRF at the 9 percentiles,
  noise 0.01), batched imputation on the model's device.
* **grad-cam**: ``ROADMostRelevantFirst(p)`` and ``ROADLeastRelevantFirst(p)``
  for each percentile, i.e. the work of ``ROADCombined``; their imputers run
  with noise 0 so that the same run gives the maximum absolute difference to
  ours (the noise is one ``randn`` per call, no measurable time).
* **Quantus**: ``quantus.ROAD`` at the same percentages, which computes the
  MoRF curve only (half of the imputations of the other two). Quantus 0.6
  fails on RGB inputs with one heatmap per image (it broadcasts the heatmap
  to ``C·H·W`` positions, then indexes an ``H·W`` mask: ``IndexError``); it
  runs here with that one-line fix from upstream (Quantus commit 9bb1d1c,
  unreleased), the imputation and model calls unchanged.

Models: ``demo`` = ``resnet18(10, width=0.25, stem="stride2")`` (the demo
classifier's architecture), ``tiny`` = a 2-layer conv net (the imputation
then dominates). Random weights and images, smooth random heatmaps; the
forward floor is the time of the ``N·(1 + 2K)`` forward passes ROAD needs.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from xaibench.metrics.road import PERCENTILES, removal_masks, road, solve_imputation
from xaibench.models import resnet18


def make_model(name: str, classes: int = 10) -> nn.Module:
    """``demo`` (ResNet-18 width 0.25, stride-2 stem) or ``tiny`` (two convolutions), eval mode."""
    if name == "demo":
        return resnet18(classes, width=0.25, stem="stride2").eval()
    if name == "tiny":
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes),
        ).eval()  # fmt: skip
    raise ValueError(f"model={name!r} is unknown; choose 'demo' or 'tiny'")


def make_inputs(n: int, size: int, device: str) -> tuple[Tensor, Tensor]:
    """Random images ``(n, 3, size, size)`` in [0, 1] and smooth heatmaps ``(n, 1, size, size)`` in [0, 1]."""
    images = torch.rand(n, 3, size, size, device=device)
    low = torch.rand(n, 1, 6, 6, device=device)
    heat = nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    lo, hi = heat.amin((2, 3), keepdim=True), heat.amax((2, 3), keepdim=True)
    return images, (heat - lo) / (hi - lo)


def _timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def run_gradcam(
    model: nn.Module, images: Tensor, heatmaps: Tensor, targets: Tensor, percentiles
) -> tuple[np.ndarray, np.ndarray, Tensor, Tensor]:
    """grad-cam's ROAD at every percentile, noise 0: MoRF/LeRF curves ``(N, K)`` and imputed images."""
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    cams = heatmaps[:, 0].cpu().numpy()
    tg = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    curves, imputed = [], []
    for cls in (ROADMostRelevantFirst, ROADLeastRelevantFirst):
        rows, ims = [], []
        for p in percentiles:
            metric = cls(percentile=p)
            metric.perturbation.imputer.noise = 0.0
            score, vis = metric(images, cams, tg, model, return_visualization=True)
            rows.append(score)
            ims.append(vis)
        curves.append(np.stack(rows, axis=1))
        imputed.append(torch.stack(ims, dim=1))  # (N, K, C, H, W)
    return curves[0], curves[1], imputed[0], imputed[1]


def run_quantus(
    model: nn.Module, images: Tensor, heatmaps: Tensor, targets: Tensor, percentiles, device: str
) -> dict:
    """Quantus 0.6 ``ROAD`` (MoRF, its own top-p% selection, noise 0.01) with the upstream shape fix."""
    import quantus

    class FixedROAD(quantus.ROAD):
        def evaluate_batch(self, model, x_batch, y_batch, a_batch, **kwargs):
            # Quantus 0.6 less its broadcast of a_batch to x_batch's shape (upstream 9bb1d1c)
            order = np.argsort(-a_batch.reshape(a_batch.shape[0], -1), axis=1)
            results = []
            for p in self.percentages:
                top = order[:, : int(self.a_size * p / 100)]
                perturbed = np.stack(
                    [self.perturb_func(arr=x, indices=i) for x, i in zip(x_batch, top, strict=True)]
                )
                x_in = model.shape_input(perturbed, x_batch.shape, channel_first=True, batched=True)
                results.append(y_batch == np.argmax(model.predict(x_in), axis=-1))
            return [np.stack(results, axis=1).astype(int)]

    metric = FixedROAD(
        percentages=list(percentiles), noise=0.01, disable_warnings=True, display_progressbar=False
    )
    x, y, a = (t.detach().cpu().numpy() for t in (images, targets, heatmaps))
    return metric(model=model, x_batch=x, y_batch=y, a_batch=a, device=device, batch_size=len(x))


def bench_road(
    device: str = "cpu",
    n: int = 4,
    size: int = 64,
    *,
    model: str = "demo",
    percentiles=PERCENTILES,
    quantus_ok: bool = True,
    gradcam_ok: bool = True,
    threads: int | None = 1,
) -> dict:
    """Time ROAD three ways on one model and batch; print and return the numbers.

    ``threads``: torch intra-op threads for all three (None: leave as is). One by
    default: the references' SciPy solves are single-threaded, and on a shared
    2-core machine more threads add contention, not speed.

    Returns:
        ``{"ours_img_s", "gradcam_img_s", "quantus_img_s", "forward_floor_img_s",
        "speedup_vs_gradcam", "speedup_vs_quantus", "max_abs_diff_scores",
        "max_abs_diff_images", ...}`` (reference entries absent when skipped).
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Quantus and SciPy advise on every call
            return _bench(device, n, size, model, percentiles, quantus_ok, gradcam_ok)
    finally:
        torch.set_num_threads(before)


def _bench(device, n, size, model, percentiles, quantus_ok, gradcam_ok) -> dict:
    torch.manual_seed(0)
    net = make_model(model).to(device)
    images, heatmaps = make_inputs(n, size, device)
    with torch.inference_mode():
        targets = net(images).argmax(1)
        net(images[:1])  # warm-up
    k = len(percentiles)
    res: dict = {"device": device, "n": n, "size": size, "model": model, "percentiles": k}
    res["threads"] = torch.get_num_threads()

    def ours(noise: float) -> dict[str, Tensor]:
        return road(net, images, heatmaps, targets, percentiles=percentiles, noise=noise)

    t, _ = _timed(lambda: ours(0.01), device)
    res["ours_s"], res["ours_img_s"] = t, n / t
    big = images.repeat(1 + 2 * k, 1, 1, 1)
    with torch.inference_mode():
        t, _ = _timed(lambda: [net(big[i : i + 256]) for i in range(0, len(big), 256)], device)
    res["forward_floor_img_s"] = n / t
    if gradcam_ok:
        t, (morf, lerf, im_morf, im_lerf) = _timed(
            lambda: run_gradcam(net, images, heatmaps, targets, percentiles), device
        )
        res["gradcam_s"], res["gradcam_img_s"] = t, n / t
        res["speedup_vs_gradcam"] = res["ours_img_s"] / res["gradcam_img_s"]
        mine = ours(0.0)
        diff = max(
            float(np.abs(mine["road_morf_curve"].cpu().numpy() - morf).max()),
            float(np.abs(mine["road_lerf_curve"].cpu().numpy() - lerf).max()),
        )
        res["max_abs_diff_scores"] = diff
        worst = 0.0
        for order, ref in (("morf", im_morf), ("lerf", im_lerf)):
            masks = removal_masks(heatmaps, percentiles, order)  # (N, K, H, W)
            imputed, _ = solve_imputation(
                images.repeat_interleave(k, 0), masks.flatten(0, 1)
            )  # fmt: skip
            worst = max(worst, float((imputed.cpu() - ref.flatten(0, 1).cpu()).abs().max()))
        res["max_abs_diff_images"] = worst
    if quantus_ok:
        t, _ = _timed(
            lambda: run_quantus(net, images, heatmaps, targets, percentiles, device), device
        )
        res["quantus_s"], res["quantus_img_s"] = t, n / t
        res["speedup_vs_quantus"] = res["ours_img_s"] / res["quantus_img_s"]
    _print(res)
    return res


def _print(res: dict) -> None:
    print(
        f"ROAD, {res['model']} model, {res['n']} images {res['size']}x{res['size']}, "
        f"{res['percentiles']} percentiles, {res['device']}, {res['threads']} threads"
    )
    print(
        f"  ours     {res['ours_img_s']:8.2f} img/s  (forward floor {res['forward_floor_img_s']:.2f} "
        f"img/s: ours/floor time {res['forward_floor_img_s'] / res['ours_img_s']:.2f})"
    )
    if "gradcam_img_s" in res:
        print(
            f"  grad-cam {res['gradcam_img_s']:8.2f} img/s  -> ours {res['speedup_vs_gradcam']:.1f}x; "
            f"max |diff| (noise 0): scores {res['max_abs_diff_scores']:.2e}, "
            f"imputed pixels {res['max_abs_diff_images']:.2e}"
        )
    if "quantus_img_s" in res:
        print(
            f"  Quantus  {res['quantus_img_s']:8.2f} img/s  (MoRF only) -> ours "
            f"{res['speedup_vs_quantus']:.1f}x"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="demo", choices=["demo", "tiny"])
    parser.add_argument("--no-quantus", action="store_true")
    parser.add_argument("--no-gradcam", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    args = parser.parse_args(argv)
    return bench_road(
        args.device, args.n, args.size, model=args.model, quantus_ok=not args.no_quantus,
        gradcam_ok=not args.no_gradcam, threads=args.threads or None,
    )  # fmt: skip


if __name__ == "__main__":
    main()
