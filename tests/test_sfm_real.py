"""The sfm stage on real photos from ../shared/data (slow: tens of seconds each).

fountain_p11 (Strecha, 11 views, 768x512, exact ground-truth cameras) is reconstructed with the
ground-truth intrinsics and self-calibrated, and evaluated with the evaluate_sfm stage;
sacre_coeur (10 Flickr photos of different sizes, no ground truth) must mostly register.
Each test records its figures in the test's ``record_property`` (see ``--junitxml``) and prints them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from capture3d.errors import CaptureError
from capture3d.stages import evaluate_sfm as evaluate_stage
from capture3d.stages import sfm as sfm_stage
from capture3d.stages.sfm import SfmInputs

pytestmark = pytest.mark.slow

FOUNTAIN_SCALE = 0.25  # the shared images are the originals downscaled by 4 (3072x2048 -> 768x512)


def fountain_pinhole_params(gt_cameras: Path) -> str:
    """ "fx, fy, cx, cy" of the 768x512 fountain images, from ``0000.jpg.camera`` (K scaled by 0.25)."""
    values = np.array((gt_cameras / "0000.jpg.camera").read_text().split(), dtype=np.float64)
    assert values.size == 26, "a Strecha .camera file holds 26 numbers"
    K = values[:9].reshape(3, 3) * FOUNTAIN_SCALE
    return ", ".join(f"{v:.6f}" for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))


def run_sfm_stage(params: dict[str, Any], capture: Path, out: Path, **changes: Any) -> tuple[dict[str, Any], float]:
    """Run the stage's ``run()`` with the ``sfm`` section changed by ``changes``; returns (metrics, seconds)."""
    params = {**params, "sfm": {**params["sfm"], **changes}}
    config = sfm_stage.load_config(params)
    start = time.perf_counter()
    sfm_stage.run(SfmInputs(capture=capture), out, config)
    seconds = time.perf_counter() - start
    for rel in ("sparse/0", "points.ply", "transforms.json", "undistorted/images", "metrics.json"):
        assert (out / rel).exists(), f"sfm output lacks {rel}"
    return json.loads((out / "metrics.json").read_text()), seconds


def evaluate_against_strecha(params: dict[str, Any], model: Path, gt: Path, out: Path) -> dict[str, Any]:
    config = dataclasses.replace(evaluate_stage.load_config(params), gt_format="strecha")
    evaluate_stage.run(evaluate_stage.EvaluateSfmInputs(model=model, gt=gt), out, config)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["has_ground_truth"] is True
    return metrics


def report(record_property: Any, label: str, **figures: Any) -> None:
    for key, value in figures.items():
        record_property(f"{label}.{key}", value)
    print(
        f"\n[{label}] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    )


@pytest.fixture
def fountain(shared_data: Path) -> Path:
    path = shared_data / "sfm" / "fountain_p11"
    if not (path / "images").is_dir() or not (path / "gt_cameras").is_dir():
        pytest.skip(f"{path} lacks images/ or gt_cameras/: real-data test skipped")
    return path


@pytest.fixture
def sacre_coeur(shared_data: Path) -> Path:
    path = shared_data / "sfm" / "sacre_coeur"
    if not (path / "images").is_dir():
        pytest.skip(f"{path}/images is absent: real-data test skipped")
    return path


def test_fountain_known_intrinsics(fountain, base_params, tmp_path, record_property):
    camera_params = fountain_pinhole_params(fountain / "gt_cameras")
    metrics, seconds = run_sfm_stage(
        base_params,
        fountain,
        tmp_path / "sfm",
        intrinsics="known",
        camera_model="PINHOLE",
        camera_params=camera_params,
    )
    assert metrics["intrinsics"] == "known"
    assert metrics["num_images"] == 11
    assert metrics["num_registered"] == 11, metrics["attempts"]
    ev = evaluate_against_strecha(base_params, tmp_path / "sfm", fountain / "gt_cameras", tmp_path / "eval")
    report(
        record_property,
        "fountain_known",
        num_registered=metrics["num_registered"],
        rotation_error_deg_median=ev["rotation_error_deg_median"],
        rotation_error_deg_max=ev["rotation_error_deg_max"],
        position_error_median=ev["position_error_median"],
        auc_rel_pose_5deg=ev["auc_rel_pose_5deg"],
        mean_reprojection_error_px=metrics["mean_reprojection_error_px"],
        runtime_s=seconds,
    )
    assert ev["num_evaluated"] == 11
    assert ev["rotation_error_deg_median"] < 0.1
    assert ev["rotation_error_deg_max"] < 0.5


def test_fountain_self_calibrated(fountain, base_params, tmp_path, record_property):
    metrics, seconds = run_sfm_stage(base_params, fountain, tmp_path / "sfm", intrinsics="self_calibrate")
    assert metrics["intrinsics"] == "self-calibrated"
    assert metrics["num_registered"] == 11, metrics["attempts"]
    ev = evaluate_against_strecha(base_params, tmp_path / "sfm", fountain / "gt_cameras", tmp_path / "eval")
    report(
        record_property,
        "fountain_selfcal",
        num_registered=metrics["num_registered"],
        rotation_error_deg_median=ev["rotation_error_deg_median"],
        rotation_error_deg_max=ev["rotation_error_deg_max"],
        position_error_median=ev["position_error_median"],
        auc_rel_pose_5deg=ev["auc_rel_pose_5deg"],
        mean_reprojection_error_px=metrics["mean_reprojection_error_px"],
        runtime_s=seconds,
    )
    assert ev["num_evaluated"] == 11
    assert ev["rotation_error_deg_median"] < 1.0


def test_sacre_coeur_single_camera_refused(sacre_coeur, base_params, tmp_path):
    """Mixed-size photos cannot share one camera: refused up front with the reason, nothing written."""
    with pytest.raises(CaptureError, match=r"camera_mode 'single' needs images of one size, found \d+ sizes"):
        run_sfm_stage(base_params, sacre_coeur, tmp_path / "sfm", camera_mode="single")
    assert not (tmp_path / "sfm").exists()


def test_sacre_coeur_auto_camera_mode(sacre_coeur, base_params, tmp_path, record_property):
    """The default camera mode (auto: one camera per image size) registers the mixed-size photos."""
    camera_mode = base_params["sfm"]["camera_mode"]
    assert camera_mode == "auto"
    metrics, seconds = run_sfm_stage(
        base_params, sacre_coeur, tmp_path / "sfm", min_registered_fraction=0.8, camera_mode=camera_mode
    )
    report(
        record_property,
        f"sacre_coeur_{camera_mode}",
        num_registered=metrics["num_registered"],
        num_points3d=metrics["num_points3d"],
        mean_track_length=metrics["mean_track_length"],
        mean_reprojection_error_px=metrics["mean_reprojection_error_px"],
        runtime_s=seconds,
    )
    assert metrics["num_images"] == 10
    assert metrics["num_registered"] >= 8, metrics["attempts"]
    assert metrics["num_models"] >= 1
    assert metrics["num_points3d"] > 500
    assert metrics["mean_reprojection_error_px"] < 2.0
