"""``logger=wandb``: each job's results (summary, per-method table, per-sample rows, figures)
land in one offline W&B run per job, found on disk without a network.

Offline, W&B writes ``<paths.output_dir>/wandb/offline-run-<time>-<id>/`` holding
``files/media/table/**.table.json`` (each ``wandb.Table``: ``{"columns", "data"}``),
``files/media/images/**.png`` and ``run-<id>.wandb``, a LevelDB-style log of protobuf
records (run, history, summary, ..., exit) that :func:`records` reads back. No
``wandb-summary.json`` is written offline, so the summary is checked in that log.
``wandb.finish()`` returns before W&B's service has written all of it (measured: 3 of 8
runs of 300 steps cut short when read right away); ``wandb.teardown()`` waits for it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import TINY_DIGITS
from lightning.fabric.utilities.rank_zero import rank_zero_only

from xaibench import pipeline
from xaibench.eval.wandb_log import log_results, method_table

TINY = [
    *TINY_DIGITS,
    "dataset.n_test=8",
    "dataset.eval_batch_size=8",
    "metric.paper.step=0.1",
    "metric.paper.percent_step=0.1",
    "logger=wandb",
]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """W&B offline and quiet, its config/cache folders under ``tmp_path``, no API key."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        folder = tmp_path / var.lower()
        folder.mkdir()
        monkeypatch.setenv(var, str(folder))
    yield
    wandb.finish()  # a failed test leaves no run open for the next


@pytest.fixture
def job(cfg_factory, shared_cache, tmp_path_factory, tmp_path):
    """``job(overrides, out=None, entry="train", guarded=False)`` → (summary, output folder) on
    the shared tiny classifier: ``entry`` ``"train"`` (train.yaml, ``pipeline.train``) or
    ``"eval"`` (eval.yaml, ``pipeline.evaluate_only``); ``guarded`` runs it through the entry
    points' ``run_guarded``; ``out`` names a separate output folder (one per job of a sweep)."""
    data = tmp_path_factory.getbasetemp() / "shared_data"
    entries = {"train": pipeline.train, "eval": pipeline.evaluate_only}

    def go(overrides: list[str], out: str | None = None, entry="train", guarded=False):
        cfg = cfg_factory(
            [*TINY, f"paths.data_dir={data}", *overrides], f"{entry}.yaml", cache_dir=shared_cache
        )
        if out is not None:
            cfg.paths.output_dir = str(tmp_path / out)
        fn = entries[entry]
        summary = pipeline.run_guarded(fn, cfg) if guarded else fn(cfg)
        return summary, Path(cfg.paths.output_dir)

    return go


def records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version),
    then 32 KiB blocks of chunks ``crc32 (4) | length (2, little-endian) | type (1) | data``;
    type 1 is a whole record, 2/3/4 its first/middle/last piece."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        n, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            out.append(pb.Record.FromString(buf))
            buf = b""
    return out


def offline_run(out: Path) -> Path:
    """The one offline run folder of a job."""
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def logged(run_dir: Path) -> dict:
    """What a run holds: ``name``, ``id``, ``summary`` (key → value; nested keys joined by
    ``.``), ``history`` keys, ``tables`` (logged key → table JSON), ``images`` (logged keys)."""
    import wandb

    assert wandb.run is None, "the job left its W&B run open"
    wandb.teardown()  # finish() returns before the service has written the whole file
    (log_file,) = run_dir.glob("run-*.wandb")
    recs = records(log_file)
    assert recs[-1].WhichOneof("record_type") == "exit"  # the run's file is complete
    summary, history, name, run_id = {}, set(), None, None
    for r in recs:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            name, run_id = r.run.display_name, r.run.run_id
        elif kind == "summary":
            for u in r.summary.update:
                summary[u.key or ".".join(u.nested_key)] = json.loads(u.value_json)
        elif kind == "history":
            history |= {i.key or i.nested_key[0] for i in r.history.item}
    media = run_dir / "files" / "media"
    tables = {
        logged_key(p, media / "table"): json.loads(p.read_text())
        for p in media.glob("table/**/*.json")
    }
    images = {logged_key(p, media / "images") for p in media.glob("images/**/*.png")}
    return {
        "name": name,
        "id": run_id,
        "summary": summary,
        "history": history,
        "tables": tables,
        "images": images,
    }


def logged_key(path: Path, root: Path) -> str:
    """The key a media file was logged under: ``root/<key>_<step>_<hash>.<ext>`` → ``<key>``."""
    return path.relative_to(root).as_posix().rsplit("_", 2)[0]


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_posthoc_job_logs_table_images_and_summary(offline, job):
    """explainer=gradcam (no training: the classifier is cached) now opens a run, and it holds
    table.csv's rows, every figure and the summary's numbers."""
    job(["explainer=gradcam"], out="warm")  # the shared classifier exists before the job
    summary, out = job(["explainer=gradcam", "compare_with=[saliency]"])
    import wandb

    assert summary["base_classifier"]["cached"]  # nothing trained: no WandbLogger ran
    assert wandb.run is None  # finished by the job itself
    run = logged(offline_run(out))
    assert run["name"] == "train-synthetic_digits-gradcam"

    table = run["tables"]["test/table"]
    header, *rows = read_csv(out / "table.csv")  # written by the evaluation, read independently
    assert table["columns"] == header
    assert [r[0] for r in table["data"]] == ["gradcam", "saliency"] == [r[0] for r in rows]
    for got, want in zip(table["data"], rows, strict=True):
        assert got[1:] == pytest.approx([float(x) for x in want[1:]], rel=1e-5, nan_ok=True)

    per_sample = run["tables"]["test/per_sample"]
    assert per_sample["columns"][:2] == ["method", "index"]
    assert len(per_sample["data"]) == 2 * 8
    main = read_csv(out / "per_sample.csv")
    assert per_sample["columns"][2:] == main[0][1:]
    msi = per_sample["columns"].index("msi")
    want = [float(r[main[0].index("msi")]) for r in main[1:]]
    assert [r[msi] for r in per_sample["data"][:8]] == pytest.approx(want, rel=1e-5)

    written = [*out.glob("figures/*.png"), *out.glob("compare/*/figures/*.png")]
    pngs = {p.relative_to(out).with_suffix("").as_posix() for p in written}
    assert {"figures/overlays", "figures/overlays_compare", "figures/curves"} <= pngs
    assert run["images"] == pngs
    assert {"test/table", "test/per_sample", "figures/overlays"} <= run["history"]

    stats = summary["test"]["saliency"]["msi"]
    assert run["summary"]["test/saliency/msi/mean"] == pytest.approx(stats["mean"])
    assert run["summary"]["test/saliency/msi/ci_high"] == pytest.approx(stats["ci_high"])
    assert run["summary"]["base_classifier/cached"] is True
    assert run["summary"]["base_classifier/test_acc"] == pytest.approx(
        summary["base_classifier"]["test_acc"]
    )


def test_two_jobs_give_two_runs(offline, job):
    """Two jobs in a row, as in a sweep: train.py's then eval.py's, each through the entry
    point's guard (which finishes again, harmlessly): two runs, each with only its method."""
    import wandb

    _, out_a = job(["explainer=gradcam"], out="a", entry="train", guarded=True)
    assert wandb.run is None
    _, out_b = job(["explainer=saliency"], out="b", entry="eval", guarded=True)
    assert wandb.run is None
    a, b = logged(offline_run(out_a)), logged(offline_run(out_b))
    assert a["id"] != b["id"] and b["name"] == "eval-synthetic_digits-saliency"
    assert [r[0] for r in a["tables"]["test/table"]["data"]] == ["gradcam"]
    assert [r[0] for r in b["tables"]["test/table"]["data"]] == ["saliency"]
    assert "test/gradcam/msi/mean" in a["summary"] and "test/saliency/msi/mean" not in a["summary"]
    assert "test/saliency/msi/mean" in b["summary"] and "test/gradcam/msi/mean" not in b["summary"]


def test_learned_explainer_logs_into_its_training_run(offline, job):
    """LAX opens a run for its training curves (Lightning's WandbLogger); the results go into
    that same run, not a second one."""
    _, out = job(["explainer=lax", "explainer.max_epochs=1", "explainer.val_samples=8"])
    run = logged(offline_run(out))
    assert any(k.startswith(("train/", "val/")) for k in run["history"])  # the training curves
    assert [r[0] for r in run["tables"]["test/table"]["data"]] == ["lax"]
    assert "figures/overlays" in run["images"]


def test_no_run_without_wandb_logger_or_off_rank_zero(offline, cfg_factory, monkeypatch):
    """logger=csv, or a DDP rank other than 0: nothing is logged and no run is opened."""
    import wandb

    summary = {"test": {"m": {"msi": {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n_nan": 0}}}}
    cfg = cfg_factory(["logger=csv"])
    out = Path(cfg.paths.output_dir)
    log_results(cfg, out, summary)
    cfg = cfg_factory(["logger=wandb"])
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    log_results(cfg, out, summary)
    assert wandb.run is None and not (out / "wandb").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    log_results(cfg, out, summary)  # the same call on rank 0 does log
    assert logged(offline_run(out))["tables"]["test/table"]["data"] == [["m", 0.5, 0.4, 0.6, 0]]


def test_method_table_columns_follow_table_csv():
    cols, rows = method_table(
        {
            "a": {"msi": {"mean": 1.0, "ci_low": 0.5, "ci_high": 1.5, "n_nan": 0}},
            "b": {"auc": {"mean": 2.0, "ci_low": 1.0, "ci_high": 3.0, "n_nan": 1}},
        }
    )
    assert cols == [
        "method",
        *(f"{c}{s}" for c in ("msi", "auc") for s in ("", "_ci_low", "_ci_high", "_n_nan")),
    ]
    assert rows[0][:5] == ["a", 1.0, 0.5, 1.5, 0] and all(math.isnan(v) for v in rows[0][5:])
    assert all(math.isnan(v) for v in rows[1][1:5]) and rows[1][5:] == [2.0, 1.0, 3.0, 1]


def test_per_sample_rows_beyond_a_table_go_as_an_artifact(offline, cfg_factory, monkeypatch):
    """Per-sample rows that exceed ``wandb.Table.MAX_ROWS`` are logged as the CSV files."""
    import torch
    import wandb

    from xaibench.eval import write_per_sample

    cfg = cfg_factory(["logger=wandb"])
    out = Path(cfg.paths.output_dir)
    for where in (out, out / "compare" / "n"):
        write_per_sample(where / "per_sample.csv", torch.arange(3), {"msi": torch.zeros(3)})
    stats = {"msi": {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n_nan": 0}}
    monkeypatch.setattr(wandb.Table, "MAX_ROWS", 5)  # 6 rows: one too many
    log_results(cfg, out, {"test": {"m": stats, "n": stats}})
    run = logged(offline_run(out))
    assert "test/per_sample" not in run["tables"] and "test/table" in run["tables"]
    log_file = next(offline_run(out).glob("*.wandb"))
    arts = {r.artifact.name: r.artifact for r in records(log_file) if r.HasField("artifact")}
    art = arts[f"per_sample-{run['id']}"]  # the others hold the logged tables
    assert sorted(e.path for e in art.manifest.contents) == ["m/per_sample.csv", "n/per_sample.csv"]


@pytest.mark.slow
def test_ddp_spawn_logs_one_run_of_deduplicated_rows(offline, job):
    """trainer=ddp_cpu (two spawned processes): LAX's training curves and the results share one
    run (Lightning's WandbLogger opens it in the caller before spawning), and the per-sample
    table has each of the 13 test images once although the sampler pads the shards to 14."""
    lax = ["explainer=lax", "explainer.max_epochs=1", "explainer.val_samples=8"]
    job(["explainer=gradcam"], out="warm")  # the classifier, trained in one process
    _, out = job(["trainer=ddp_cpu", "dataset.n_test=13", *lax])
    run = logged(offline_run(out))
    assert {"train/loss", "val/msi", "test/table", "test/per_sample"} <= run["history"]
    assert sorted(r[1] for r in run["tables"]["test/per_sample"]["data"]) == list(range(13))
