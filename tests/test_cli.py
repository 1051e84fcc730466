"""The `capture3d` command: sfm and evaluate on temporary folders, one-line errors naming the capture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "capture3d")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_sfm_then_evaluate_on_own_photos(tmp_path: Path, repo_root: Path, make_textured_images) -> None:
    images = tmp_path / "garden"
    make_textured_images(images, n=7)
    params = str(repo_root / "params.yaml")
    proc = _run(
        [
            "sfm",
            "--images",
            str(images),
            "--out",
            str(tmp_path / "out" / "sfm"),
            "--params",
            params,
            "--matcher",
            "sequential",
            "--set",
            "sfm.sequential_overlap=3",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "registered_fraction" in proc.stdout and "garden" in proc.stdout
    metrics = json.loads((tmp_path / "out" / "sfm" / "metrics.json").read_text())
    assert metrics["attempts"][0]["matcher"] == "sequential"
    assert metrics["registered_fraction"] >= 0.9

    proc = _run(["evaluate", "sfm", "--model", str(tmp_path / "out" / "sfm"), "--params", params], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "out" / "evaluate_sfm" / "metrics.json").read_text())
    assert evaluated["num_images"] == 7 and evaluated["num_models"] == 1
    assert evaluated["mean_reprojection_error_px"] < 1.0
    assert "mean_track_length" in proc.stdout


def test_errors_are_one_line_naming_the_capture(tmp_path: Path, repo_root: Path) -> None:
    empty = tmp_path / "empty_capture"
    empty.mkdir()
    params = str(repo_root / "params.yaml")
    proc = _run(["sfm", "--images", str(empty), "--out", str(tmp_path / "o"), "--params", params], tmp_path)
    assert proc.returncode != 0
    assert _error_lines(proc.stderr) == [f"error: capture 'empty_capture': no images in '{empty}' (empty folder)"]

    proc = _run(
        [
            "sfm",
            "--images",
            str(empty),
            "--out",
            str(tmp_path / "o"),
            "--params",
            params,
            "--set",
            "sfm.min_registered_fraction=lots",
        ],
        tmp_path,
    )
    assert proc.returncode != 0
    (line,) = _error_lines(proc.stderr)
    assert line.startswith("error: capture 'empty_capture': params: 'sfm.min_registered_fraction' must be a number")
    assert not (tmp_path / "o").exists()

    # a source that does not exist: one line, no traceback, for the batch and for a folder run
    missing = tmp_path / "no_such_inbox"
    proc = _run(["batch", str(missing), "--work", str(tmp_path / "w"), "--params", params], tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert _error_lines(proc.stderr) == [f"error: inbox folder '{missing}' not found"]
    proc = _run(["reconstruct", "--captures", str(missing), "--out", str(tmp_path / "r"), "--params", params], tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert _error_lines(proc.stderr) == [f"error: captures folder '{missing}' not found"]


def test_register_then_evaluate_registration(tmp_path: Path, repo_root: Path) -> None:
    params = str(repo_root / "params.yaml")
    capture = tmp_path / "scans5"
    # a 5-scan ring: every scan placed (the 8-scan default is registered in test_register_scans_stage)
    proc = _run(["synthesize-scans", "--out", str(capture), "--params", params, "--num-scans", "5"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run(
        [
            "register",
            "--scans",
            str(capture),
            "--out",
            str(tmp_path / "r" / "register_scans"),
            "--params",
            params,
            "--global-method",
            "fgr_then_ransac",
            "--icp",
            "point_to_plane",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "num_placed" in proc.stdout
    assert "status: ok (free-space test: used)" in proc.stdout
    registered = json.loads((tmp_path / "r" / "register_scans" / "metrics.json").read_text())
    assert registered["global_method"] == "fgr_then_ransac" and registered["num_scans"] == 5
    proc = _run(
        [
            "evaluate",
            "registration",
            "--result",
            str(tmp_path / "r" / "register_scans"),
            "--scans",
            str(capture),
            "--params",
            params,
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "r" / "evaluate_registration" / "metrics.json").read_text())
    assert evaluated["placed_beyond_tolerance"] == []
    assert evaluated["num_within_tolerance"] == registered["num_placed"] == 5
    assert "ape_rotation_deg_max" in proc.stdout


def test_train_fcgf_flow_then_evaluate_features(tmp_path: Path, repo_root: Path) -> None:
    """`capture3d train fcgf --captures` trains (a token run) and evaluates through the Prefect flow;
    `capture3d evaluate features` prints the FPFH / FCGF table for the same capture."""
    params = str(repo_root / "params.yaml")
    small = [
        "--set",
        "synthesize_scans.num_scans=4",
        "--set",
        "synthesize_scans.width=80",
        "--set",
        "synthesize_scans.height=60",
    ]
    proc = _run(
        ["synthesize-scans", "--out", str(tmp_path / "captures" / "ring"), "--params", params, *small], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    token = [
        "--set",
        "train_fcgf.data.synthetic_seeds=[1]",
        "--set",
        "train_fcgf.data.validation_seeds=[]",
        "--set",
        "train_fcgf.data.num_scans=4",
        "--set",
        "train_fcgf.data.width=80",
        "--set",
        "train_fcgf.data.height=60",
        "--set",
        "train_fcgf.data.auto_target_points=1500",
        "--set",
        "evaluate_features.global_method=fgr",
        "--set",
        "evaluate_features.device=cpu",
    ]
    proc = _run(
        [
            "train",
            "fcgf",
            "--out",
            str(tmp_path / "models" / "fcgf"),
            "--iterations",
            "2",
            "--device",
            "cpu",
            "--captures",
            str(tmp_path / "captures"),
            "--results",
            str(tmp_path / "results"),
            "--params",
            params,
            *token,
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loss_last_50" in proc.stdout and "ring" in proc.stdout and "ok" in proc.stdout
    trained = json.loads((tmp_path / "models" / "fcgf" / "metrics.json").read_text())
    assert trained["iterations"] == 2 and trained["train_data"] == ["seed1"]
    evaluated = json.loads((tmp_path / "results" / "ring" / "evaluate_features" / "metrics.json").read_text())
    assert set(evaluated["features"]) == {"fpfh", "fcgf"} and evaluated["features"]["fcgf"]["num_pairs"] >= 3
    proc = _run(
        [
            "evaluate",
            "features",
            "--scans",
            str(tmp_path / "captures" / "ring"),
            "--features",
            "fpfh",
            "--checkpoint",
            str(tmp_path / "models" / "fcgf" / "model.pt"),
            "--out",
            str(tmp_path / "ev"),
            "--params",
            params,
            *token,
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "feature_match_recall" in proc.stdout and "fpfh" in proc.stdout
    proc = _run(
        [
            "evaluate",
            "features",
            "--scans",
            str(tmp_path / "captures" / "ring"),
            "--out",
            str(tmp_path / "ev2"),
            "--params",
            params,
            *token,
        ],
        tmp_path,
    )
    assert proc.returncode != 0 and _error_lines(proc.stderr) == [
        "error: capture 'ring': descriptor 'fcgf' needs --checkpoint"
    ], proc.stderr[-2000:]
