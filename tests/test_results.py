"""capture3d.results: the tidy DataFrame of a work area or a project, ``capture3d results``, and the
80-column status tables."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from capture3d import catalog, results
from capture3d.cli import main
from capture3d.cli_tables import print_statuses
from capture3d.ops.report import build_report

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A batch work area: two runs of photos capture 'a' (PSNR down by 2 dB in the second), a failed
    scans capture, and the latest results of 'a'."""
    w = tmp_path / "work"
    row = {"capture": "a", "kind": "photos", "status": "ok", "seconds": 10.0, "fetched": 3, "registered_fraction": 1.0}
    _write(
        w / "runs" / "r1.json",
        {
            "run_id": "r1",
            "code_version": "0.1.0+src1",
            "finished": "2026-01-01T00:00:00",
            "params_hashes": {"a": "p1"},
            "captures": [{**row, "gaussians_psnr": 25.0, "nerf_psnr": 22.0}],
        },
    )
    _write(
        w / "runs" / "r2.json",
        {
            "run_id": "r2",
            "code_version": "0.1.0+src2",
            "finished": "2026-01-02T00:00:00",
            "captures": [
                {**row, "gaussians_psnr": 23.0, "nerf_psnr": 22.1},
                {"capture": "s", "kind": "scans", "status": "failed", "reason": "stage register_scans: boom"},
            ],
        },
    )
    _write(
        w / "manifests" / "a.json",
        {"capture": "a", "kind": "photos", "status": "ok", "run_id": "r2", "params": {"hash": "p2"},
         "code_version": "0.1.0+src2", "finished": "2026-01-02T00:00:00", "metrics": {}},
    )  # fmt: skip
    _write(w / "results" / "a" / "fit_gaussians" / "metrics.json", {"psnr": 23.0, "ssim": 0.8, "iterations": 500,
           "device": "cpu", "per_view": [{"view": 1, "psnr": 22.0}], "timings": {"fit_s": 40.0}})  # fmt: skip
    return w


def test_work_area_frame(work: Path) -> None:
    df = results.load(work)
    assert list(df.columns) == list(results.COLUMNS)
    psnr = df[(df.metric == "gaussians_psnr")].sort_values("run")
    assert psnr.value.tolist() == [25.0, 23.0]
    assert psnr.run.tolist() == ["r1", "r2"]
    assert psnr.stage.tolist() == ["fit_gaussians"] * 2  # the catalog step whose summary key it is
    assert psnr.code_version.tolist() == ["0.1.0+src1", "0.1.0+src2"]
    assert psnr.params_hash.tolist() == ["p1", "p2"]  # the run's own record, then the manifest's
    # registered_fraction is a summary key of sfm and evaluate_sfm: the later step's, as the flows merge
    assert set(df[df.metric == "registered_fraction"].stage) == {"evaluate_sfm"}
    assert set(df[df.metric == "seconds"].stage) == {""}
    # the latest results add every other number (dotted), not the summary's sources again
    detail = df[df.stage.eq("fit_gaussians") & df.run.eq("r2")].set_index("metric").value.to_dict()
    assert detail == {"gaussians_psnr": 23.0, "gaussians_ssim": 0.8, "iterations": 500.0, "timings.fit_s": 40.0}
    assert "s" not in set(df.capture)  # failed: no numbers
    assert results.by_capture(df[df.run == "r1"])["a"]["nerf_psnr"] == 22.0


def test_regression_check_reads_the_frame(work: Path, tmp_path: Path) -> None:
    report = build_report(work, tmp_path / "r.html", previous=work / "runs" / "r1.json")
    assert [(r.capture, r.metric, r.old, r.new) for r in report.regressions] == [("a", "gaussians_psnr", 25.0, 23.0)]


def test_project_and_folder_run(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    _write(project / "results" / "demo" / "sfm" / "metrics.json", {"registered_fraction": 0.5, "num_images": 8})
    _write(project / "results" / "demo_scans" / "register_scans" / "metrics.json", {"num_placed": 7, "partial": True})
    df = results.load(project)
    assert set(df.run) == {results.WORKSPACE}
    got = df.set_index(["capture", "stage", "metric"]).value.to_dict()
    assert got == {
        ("demo", "sfm", "registered_fraction"): 0.5,
        ("demo", "sfm", "num_images"): 8.0,
        ("demo_scans", "register_scans", "num_placed"): 7.0,
    }
    assert df[df.capture == "demo_scans"].status.tolist() == ["partial"]
    assert df.params_hash.str.len().eq(64).all() and df.code_version.str.startswith("0.1.0").all()
    # a folder run's results root: its work area is .capture3d
    out = tmp_path / "out"
    _write(out / ".capture3d" / "runs" / "r.json", {"run_id": "r", "captures": [
        {"capture": "x", "status": "ok", "num_placed": 3}]})  # fmt: skip
    assert results.load(out).value.tolist() == [3.0]
    with pytest.raises(results.Capture3dError, match="not a work area"):
        results.load(tmp_path / "nothing")


def test_results_command(work: Path, tmp_path: Path, capsys) -> None:
    assert main(["results", str(work), "--format", "csv"]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)
    assert len(df) == len(results.load(work)) and "gaussians_psnr" in set(df.metric)
    assert main(["results", str(work)]) == 0
    assert "gaussians_psnr" in capsys.readouterr().out
    out = tmp_path / "r.parquet"
    try:
        import pyarrow  # noqa: F401, ICN001
    except ImportError:
        assert main(["results", str(work), "--format", "parquet", "--out", str(out)]) != 0
        assert "parquet needs pyarrow" in capsys.readouterr().err
    else:
        assert main(["results", str(work), "--format", "parquet", "--out", str(out)]) == 0
        assert len(pd.read_parquet(out)) == len(results.load(work))


def test_status_tables_fit_80_columns() -> None:
    """A batch of every kind, each row holding every summary metric (what the batch returns): each
    kind's table shows only its terminal metrics, with whole titles, within 80 columns."""
    every = dict.fromkeys(catalog.summary_keys(), 0.123456)
    rows = [
        {"capture": "garden_north_courtyard", "kind": "photos", "status": "ok", "seconds": 1.0, **every},
        {"capture": "room", "kind": "scans", "status": "partial", **every},
        {"capture": "people", "kind": "bodies", "status": "ok", **every},
        {"capture": "bad", "kind": "scans", "status": "failed", "reason": "stage register_scans: " + "x " * 60},
    ]
    console = Console(width=80, record=True)
    print_statuses(rows, "batch: captures", out=console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for p in catalog.PIPELINES:
        if p.batch:
            for title in p.terminal.values():
                assert title in text, title
    assert "garden_north_courtyard" in text and "bad: stage register_scans: x x" in text
    assert "rotation_error_deg_median" not in text and "body_error_norm" not in text
