"""The register_scans and evaluate_registration stages: real scans, synthetic scans, bad input.

Real-data tests use ../shared/data/registration and skip when it is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from capture3d.errors import CaptureError
from capture3d.stages import evaluate_registration as evaluate_stage
from capture3d.stages import register_scans as register_stage
from capture3d.stages import synthesize_scans
from capture3d.tasks.registration.capture import scan_dir
from capture3d.tasks.registration.scan_io import (
    read_gt_poses,
    read_scans,
    write_point_cloud,
    write_poses_json,
)


def _params(
    base: dict[str, Any], register: dict[str, Any] | None = None, evaluate: dict[str, Any] | None = None
) -> dict[str, Any]:
    params = json.loads(json.dumps(base))
    for key, value in (register or {}).items():
        node = params["register_scans"]
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    params["evaluate_registration"].update(evaluate or {})
    return params


def _register_and_evaluate(
    params: dict[str, Any], capture: Path, tmp_path: Path, gt: Path | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    result = register_stage.run(
        register_stage.RegisterScansInputs(capture), tmp_path / "reg", register_stage.load_config(params)
    )
    registered = json.loads((result / "metrics.json").read_text())
    inputs = evaluate_stage.EvaluateRegistrationInputs(result, capture, gt)
    evaluated = evaluate_stage.read_metrics(
        evaluate_stage.run(inputs, tmp_path / "eval", evaluate_stage.load_config(params))
    )
    return registered, evaluated


def _random_rigid(rng: np.random.Generator, max_translation: float) -> np.ndarray:
    q = rng.normal(size=4)
    x, y, z, w = q / np.linalg.norm(q)
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = rng.uniform(-max_translation, max_translation, 3)
    return T


@pytest.mark.slow
def test_bunny_from_random_perturbations(shared_data: Path, base_params: dict, tmp_path: Path) -> None:
    """10 real range scans, each moved by a seeded random rigid motion: all 10 within 2 deg and 2 mm.

    No sensor origins (PLY meshes in a common scanner frame): verified by cycles of agreeing links.
    Measured: 10/10, at most 0.21 deg and 0.7 mm, status ok."""
    bunny = shared_data / "registration" / "bunny"
    scans = read_scans(bunny)
    gt = read_gt_poses(bunny / "bun.conf", [s.name for s in scans], "stanford")
    rng = np.random.default_rng(2024)
    capture = tmp_path / "bunny"
    perturbed_gt = {}
    for scan in scans:
        P = _random_rigid(rng, 0.1)  # the scan's points are moved by P: its pose becomes gt @ inv(P)
        write_point_cloud(capture / "scans" / f"{scan.name}.ply", scan.points @ P[:3, :3].T + P[:3, 3])
        perturbed_gt[scan.name] = gt[scan.name] @ np.linalg.inv(P)
    write_poses_json(capture / "gt" / "poses.json", perturbed_gt)
    params = _params(
        base_params,
        {"preprocess.voxel_size": 0.002, "pair.global_method": "fgr"},
        {"threshold_scale": 0.01, "ape_translation_threshold": 0.2},
    )  # 2 mm
    registered, evaluated = _register_and_evaluate(params, capture, tmp_path)
    per_scan = {
        n: (round(e["rotation_error_deg"], 3), round(e["translation_error"] * 1000, 3))
        for n, e in evaluated["per_scan"].items()
    }
    print("bunny per-scan errors (deg, mm):", per_scan, "unplaced:", registered["unplaced"])
    assert evaluated["num_within_tolerance"] == 10, per_scan
    assert registered["status"] == "ok" and "not possible" in registered["verification"]["free_space_test"]
    # Nothing placed wrongly in silence: every scan is within tolerance or reported unplaced.
    assert evaluated["placed_beyond_tolerance"] == [], per_scan
    assert set(registered["unplaced"]) | set(evaluated["per_scan"]) == {s.name for s in scans}
    assert evaluated["fused_fscore"] > 0.9


@pytest.mark.slow
def test_3dmatch_pair_recovered(shared_data: Path, base_params: dict, tmp_path: Path) -> None:
    """The 3DMatch fragment pair: ground truth recovered within 5 deg and 10 cm."""
    pair = shared_data / "registration" / "3dmatch_pair"
    params = _params(base_params, {"preprocess.voxel_size": 0.025, "pair.min_fitness": 0.2})
    registered, evaluated = _register_and_evaluate(params, pair, tmp_path, gt=pair / "gt.npy")
    assert registered["num_placed"] == 2
    (record,) = evaluated["pairs"]
    print("3dmatch pair:", record, json.loads((tmp_path / "reg" / "pairs.json").read_text())["pairs"][0]["method"])
    assert record["rotation_error_deg"] < 5.0
    assert record["translation_error"] < 0.10
    # Two fused fragments: no sensor origin and no cycle can confirm the one link, and the capture says so.
    assert registered["status"] == "partial" and registered["confidence"]["src"] == "low"
    assert "single link" in registered["low_confidence"]["src"]


@pytest.mark.slow
def test_synthetic_scans_registered(base_params: dict, tmp_path: Path) -> None:
    capture = synthesize_scans.run(
        synthesize_scans.Inputs(), tmp_path / "demo_scans", synthesize_scans.load_config(base_params)
    )
    registered, evaluated = _register_and_evaluate(base_params, capture, tmp_path)
    assert registered["num_placed"] == registered["num_scans"] == base_params["synthesize_scans"]["num_scans"]
    assert evaluated["num_within_tolerance"] == registered["num_scans"]
    assert evaluated["ape_rotation_deg_max"] < 0.5
    assert evaluated["ape_translation_max"] < 0.01
    assert evaluated["fused_fscore"] > 0.9


# ----------------------------------------------------------------------------- bad input


def _stage(args: list[str], cwd: Path, repo_root: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "capture3d.stages.register_scans", *args, "--params", str(repo_root / "params.yaml")]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def _sphere(n: int, seed: int, centre: tuple[float, float, float] = (0, 0, 0), radius: float = 0.5) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True) * radius + np.asarray(centre)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("empty", "no points"),
        ("nan", "NaN"),
        ("single", "only 1 readable scan"),
        ("tiny", "points after"),
    ],
)
def test_bad_scans_one_line_error_and_no_output(case: str, expected: str, tmp_path: Path, repo_root: Path) -> None:
    capture = tmp_path / "cap"
    capture.mkdir()
    good = _sphere(4000, 0)
    np.save(capture / "a.npy", good)
    if case == "empty":
        (capture / "b.xyz").write_text("")
    elif case == "nan":
        bad = _sphere(4000, 1)
        bad[::100] = np.nan
        np.save(capture / "b.npy", bad)
    elif case == "tiny":
        np.save(capture / "b.npy", _sphere(20, 1))
    out = tmp_path / "results" / "register_scans"
    proc = _stage(["--capture", str(capture), "--out", str(out)], tmp_path, repo_root)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0
    assert len(errors) == 1 and errors[0].startswith("error: capture 'cap': "), proc.stderr[-2000:]
    assert expected.lower() in errors[0].lower(), errors[0]
    assert not out.exists() and not any((tmp_path / "results").glob(".*tmp*"))


def test_no_overlap_is_flagged_not_posed(tmp_path: Path, base_params: dict) -> None:
    """Two spheres sharing nothing: refused (low fitness), and a third unrelated scan is unplaced."""
    capture = tmp_path / "cap"
    capture.mkdir()
    np.save(capture / "a.npy", _sphere(5000, 0))
    plane = np.random.default_rng(3).uniform(-0.5, 0.5, size=(5000, 3)) * [1, 1, 0] + [5, 5, 5]
    np.save(capture / "b.npy", plane)
    params = _params(base_params, {"preprocess.voxel_size": 0.03})
    with pytest.raises(CaptureError, match="no two scans could be registered confidently"):
        register_stage.run(
            register_stage.RegisterScansInputs(capture), tmp_path / "out", register_stage.load_config(params)
        )
    assert not (tmp_path / "out").exists()


def test_ground_truth_that_does_not_match(tmp_path: Path, base_params: dict) -> None:
    """Also the bad-input policy: an unreadable scan among good ones is skipped and listed, not fatal."""
    small = _params(base_params)
    small["synthesize_scans"]["num_scans"] = 4
    capture = synthesize_scans.run(synthesize_scans.Inputs(), tmp_path / "scans4", synthesize_scans.load_config(small))
    (scan_dir(capture) / "broken.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 5\nend_header\n1 2\n")
    result = register_stage.run(
        register_stage.RegisterScansInputs(capture), tmp_path / "reg", register_stage.load_config(base_params)
    )
    registered = json.loads((result / "metrics.json").read_text())
    assert registered["num_scans"] == 4 and registered["num_skipped_scans"] == 1
    assert (
        list(registered["skipped_scans"]) == ["broken.ply"] and "no points" in registered["skipped_scans"]["broken.ply"]
    )
    poses = json.loads((capture / "gt" / "poses.json").read_text())
    del poses["poses"]["scan_002"]
    bad = tmp_path / "bad_gt.json"
    bad.write_text(json.dumps(poses))
    with pytest.raises(CaptureError, match="ground truth does not match the scans"):
        evaluate_stage.run(
            evaluate_stage.EvaluateRegistrationInputs(result, capture, bad),
            tmp_path / "eval",
            evaluate_stage.load_config(base_params),
        )
    assert not (tmp_path / "eval").exists()
