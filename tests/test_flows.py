"""Folder runs of the Prefect `batch` flow (`capture3d reconstruct`, `register-batch`) under Prefect's
test harness: a batch with good and bad captures, every stage a task of its own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect.testing.utilities import prefect_test_harness

from capture3d.config import load_params
from capture3d.flows.batch import run_folder
from capture3d.stages import synthesize

SMALL = ["synthesize.num_images=12", "synthesize.width=320", "synthesize.height=240"]
NVS_TOKEN = [
    "fit_gaussians.iterations=20",
    "fit_gaussians.cpu_compile=false",
    "fit_gaussians.orbit_frames=2",
    "fit_nerf.iterations=20",
    "fit_nerf.orbit_frames=2",
]


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_reconstruct_batch_isolates_failures(harness, tmp_path: Path, repo_root: Path) -> None:
    captures = tmp_path / "captures"
    params = load_params(repo_root / "params.yaml", SMALL)
    synthesize.run(synthesize.Inputs(), captures / "scene", synthesize.load_config(params))
    (captures / "empty").mkdir(parents=True)
    few = captures / "few" / "images"
    few.mkdir(parents=True)
    for name in ("0000.png", "0001.png"):
        (few / name).write_bytes((captures / "scene" / "images" / name).read_bytes())
    (captures / ".hidden").mkdir()

    statuses = run_folder(
        "photos",
        captures,
        tmp_path / "results",
        None,
        repo_root / "params.yaml",
        ["sfm.max_image_size=640", *NVS_TOKEN],
    )
    by_name = {s.name: s for s in statuses}
    assert sorted(by_name) == ["empty", "few", "scene"]

    scene = by_name["scene"]
    assert scene.ok, scene.reason
    assert scene.metrics["registered_fraction"] == 1.0
    assert scene.metrics["rotation_error_deg_median"] < 0.5
    assert scene.metrics["auc_rel_pose_5deg"] > 0.8
    # the flow continued into both NVS fits on the SfM output
    assert scene.metrics["gaussians_psnr"] > 5 and scene.metrics["nerf_psnr"] > 5, scene.metrics
    assert (tmp_path / "results" / "scene" / "fit_gaussians" / "gaussians.ply").is_file()
    assert (tmp_path / "results" / "scene" / "sfm" / "sparse" / "0" / "images.bin").is_file()

    assert not by_name["empty"].ok and by_name["empty"].failed_stage == "sfm"
    assert "empty folder" in by_name["empty"].reason
    assert not by_name["few"].ok and "only 2 readable image(s)" in by_name["few"].reason
    for bad in ("empty", "few"):
        assert not (tmp_path / "results" / bad).exists() or not any((tmp_path / "results" / bad).iterdir())
    rows = [s.row() for s in statuses]
    assert [r["status"] for r in rows] == ["failed (sfm)", "failed (sfm)", "ok"]


@pytest.mark.slow
def test_register_scans_batch_isolates_failures(harness, tmp_path: Path, repo_root: Path) -> None:
    from capture3d.stages import synthesize_scans

    captures = tmp_path / "scan_captures"
    params = load_params(repo_root / "params.yaml", ["synthesize_scans.num_scans=5"])  # all 5 placed
    synthesize_scans.run(synthesize_scans.Inputs(), captures / "ring", synthesize_scans.load_config(params))
    single = captures / "single" / "scans"
    single.mkdir(parents=True)
    (single / "scan_000.ply").write_bytes((captures / "ring" / "scans" / "scan_000.ply").read_bytes())

    statuses = run_folder(
        "scans", captures, tmp_path / "results", None, repo_root / "params.yaml", ["batch.max_workers=2"]
    )
    by_name = {s.name: s for s in statuses}
    assert sorted(by_name) == ["ring", "single"]
    ring = by_name["ring"]
    assert ring.ok, ring.reason
    assert ring.metrics["num_placed"] == 5 and ring.metrics["num_within_tolerance"] == 5
    assert ring.metrics["ape_translation_max"] < 0.02
    assert ring.row()["status"] == "ok"  # every scan placed with high confidence
    assert (tmp_path / "results" / "ring" / "register_scans" / "fused.ply").is_file()
    single_status = by_name["single"]
    assert not single_status.ok and single_status.failed_stage == "register_scans"
    assert "only 1 readable scan" in single_status.reason
    assert not (tmp_path / "results" / "single" / "register_scans").exists()


def test_partial_status_in_rows_and_manifests() -> None:
    """A stage that flags part of its result (unplaced or low-confidence scans) makes the capture partial:
    in the flow's row and in the batch manifest, and partial work still counts as finished."""
    from capture3d.flows.status import CaptureStatus
    from capture3d.ops.manifest import MANIFEST_VERSION, finished_status, is_current

    assert CaptureStatus("scans", True, metrics={"partial": True, "num_placed": 7}).row()["status"] == "partial"
    assert CaptureStatus("scans", True, metrics={"partial": False}).row()["status"] == "ok"
    assert CaptureStatus("scans", False, "register_scans", "bad").row()["status"] == "failed (register_scans)"
    assert finished_status({"partial": True}) == "partial" and finished_status({}) == "ok"
    manifest = {"status": "partial", "work_key": "k", "manifest_version": MANIFEST_VERSION}
    assert is_current(manifest, "k") and not is_current({**manifest, "status": "failed"}, "k")
