"""The ``sfm`` stage's command line, run as a subprocess on small temporary captures.

Every bad input must give exactly one ``error: ...`` line on stderr (besides COLMAP's glog lines
and Python logging lines), a non-zero exit code, and no output folder nor temporary leftovers.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from capture3d.stages import sfm as sfm_stage
from capture3d.tasks.sfm.reconstruct import resolve

GLOG_PREFIXES = ("I20", "W20", "E20", "F20")
FAST = ["--set", "sfm.max_image_size=640", "--set", "sfm.max_num_features=2048"]


def run_stage(
    repo_root: Path, cwd: Path, capture: Path, out: Path, *extra: str, params: Path | None = None
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "capture3d.stages.sfm",
        "--capture",
        str(capture),
        "--out",
        str(out),
        "--params",
        str(params or repo_root / "params.yaml"),
        *FAST,
        *extra,
    ]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def message_lines(stderr: str) -> list[str]:
    """stderr without COLMAP's glog lines and Python logging lines."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.startswith(GLOG_PREFIXES) and " INFO " not in line and " WARNING " not in line
    ]


def assert_one_error(proc: subprocess.CompletedProcess, prefix: str, out: Path) -> str:
    lines = message_lines(proc.stderr)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert len(lines) == 1, f"expected one error line, got {lines!r}"
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists(), f"a failed run left {out}"
    stray = sorted(p.name for p in out.parent.iterdir())
    assert stray == [], f"leftovers beside the output: {stray}"
    return lines[0]


def out_path(tmp_path: Path) -> Path:
    """``<tmp>/results/sfm``, its parent created (so temporary siblings would be visible there)."""
    (tmp_path / "results").mkdir(exist_ok=True)
    return tmp_path / "results" / "sfm"


def noise_images(folder: Path, n: int, seed: int = 100) -> list[Path]:
    """``n`` independent random-noise photos (nothing in common between them)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        path = folder / f"noise_{i}.jpg"
        Image.fromarray((rng.random((240, 320, 3)) * 255).astype(np.uint8)).save(path, quality=95)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- bad inputs


def test_empty_folder(repo_root, tmp_path):
    capture = tmp_path / "empty_cap"
    (capture / "images").mkdir(parents=True)
    out = out_path(tmp_path)
    proc = run_stage(repo_root, tmp_path, capture, out)
    line = assert_one_error(proc, "error: capture 'empty_cap'", out)
    assert "no images" in line


def test_two_images(repo_root, tmp_path, make_textured_images):
    capture = tmp_path / "two_cap"
    make_textured_images(capture / "images", n=2)
    out = out_path(tmp_path)
    proc = run_stage(repo_root, tmp_path, capture, out)
    line = assert_one_error(proc, "error: capture 'two_cap'", out)
    assert "only 2 readable image(s)" in line and "at least 3" in line


def test_missing_capture_folder(repo_root, tmp_path):
    out = out_path(tmp_path)
    proc = run_stage(repo_root, tmp_path, tmp_path / "no_such_capture", out, "--name", "mine")
    line = assert_one_error(proc, "error: capture 'mine'", out)
    assert "does not exist" in line


def expected_attempts(sfm: dict, num_images: int) -> int:
    """Attempts the ladder makes when every one fails: the base, then each rung that changes the work
    done (settings with matcher/mapper ``auto`` resolved for ``num_images``, as ``run_sfm`` does)."""
    base = sfm_stage.load_config({"sfm": sfm})
    count, accumulated, current = 1, {}, resolve(base, num_images, [])
    for rung in sfm["fallback"]:
        accumulated = {**accumulated, **rung}
        new = resolve(dataclasses.replace(base, **accumulated), num_images, [])
        count += new != current
        current = new
    return count


def test_no_overlap_fails_after_the_ladder(repo_root, tmp_path, base_params):
    capture = tmp_path / "noise_cap"
    noise_images(capture / "images", 4)
    out = out_path(tmp_path)
    proc = run_stage(repo_root, tmp_path, capture, out)
    line = assert_one_error(proc, "error: capture 'noise_cap'", out)
    n = expected_attempts(base_params["sfm"], 4)
    assert n >= 2, "params.yaml should have a fallback ladder"
    assert f"SfM failed after {n} attempt(s)" in line
    assert "no model" in line  # the reason: nothing could be initialised
    logged = [ln for ln in proc.stderr.splitlines() if "capture3d.tasks.sfm.reconstruct: attempt" in ln]
    assert len(logged) == n, logged
    last_mapper = {**base_params["sfm"], **{k: v for r in base_params["sfm"]["fallback"] for k, v in r.items()}}[
        "mapper"
    ]
    assert f", {last_mapper}, " in logged[-1]


def test_unknown_params_key(repo_root, tmp_path, make_textured_images):
    capture = tmp_path / "cap"
    make_textured_images(capture / "images", n=3)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["sfm"]["max_num_featurez"] = 10
    params_path = tmp_path / "params_copy.yaml"
    params_path.write_text(yaml.safe_dump(params))
    out = out_path(tmp_path)
    proc = run_stage(repo_root, tmp_path, capture, out, params=params_path)
    line = assert_one_error(proc, "error: capture 'cap': params", out)
    assert "max_num_featurez" in line


def test_wrong_type_override(repo_root, tmp_path, make_textured_images):
    capture = tmp_path / "cap"
    make_textured_images(capture / "images", n=3)
    out = out_path(tmp_path)
    proc = run_stage(repo_root, tmp_path, capture, out, "--set", "sfm.max_num_features=many")
    line = assert_one_error(proc, "error: capture 'cap': params", out)
    assert "sfm.max_num_features" in line and "many" in line


def test_unknown_override_key(repo_root, tmp_path, make_textured_images):
    capture = tmp_path / "cap"
    make_textured_images(capture / "images", n=3)
    out = out_path(tmp_path)
    proc = run_stage(repo_root, tmp_path, capture, out, "--set", "sfm.max_features=10")
    line = assert_one_error(proc, "error: capture 'cap': override 'sfm.max_features=10'", out)
    assert "unknown key 'sfm.max_features'" in line


def test_missing_params_file(repo_root, tmp_path, make_textured_images):
    capture = tmp_path / "cap"
    make_textured_images(capture / "images", n=3)
    out = out_path(tmp_path)
    proc = run_stage(repo_root, tmp_path, capture, out, params=tmp_path / "nope.yaml")
    line = assert_one_error(proc, "error: capture 'cap': params file", out)
    assert "not found" in line


# ----------------------------------------------------------------------------- a good run


def test_good_run_with_junk_files(repo_root, tmp_path, make_textured_images):
    capture = tmp_path / "plane"
    views = make_textured_images(capture / "images", n=7, width=320, height=240)
    (capture / "images" / "corrupt.jpg").write_bytes(np.random.default_rng(1).bytes(5000))
    (capture / "images" / "notes.txt").write_text("taken on a cloudy day\n")
    out = out_path(tmp_path)

    proc = run_stage(repo_root, tmp_path, capture, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert message_lines(proc.stderr) == []
    assert [p.name for p in out.parent.iterdir()] == ["sfm"]  # no temporary leftovers

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert metrics["capture"] == "plane"
    assert metrics["num_images"] == len(views)
    assert metrics["registered_fraction"] >= 0.9
    assert metrics["num_models"] == 1
    assert metrics["num_points3d"] > 200
    assert metrics["mean_reprojection_error_px"] < 1.5
    assert metrics["intrinsics"] == "self-calibrated"
    assert metrics["attempts"][metrics["chosen_attempt"]]["healthy"] is True
    skipped = {s["file"]: s["reason"] for s in metrics["skipped_files"]}
    assert set(skipped) == {"corrupt.jpg", "notes.txt"}
    assert metrics["num_skipped_files"] == 2
    assert "unreadable image" in skipped["corrupt.jpg"]
    assert "not an image file" in skipped["notes.txt"]

    for rel in ("sparse/0/cameras.bin", "sparse/0/images.bin", "sparse/0/points3D.bin", "points.ply"):
        assert (out / rel).is_file(), rel
    assert not (out / "_work").exists()
    ply_header = (out / "points.ply").read_bytes()[:300]
    assert f"element vertex {metrics['num_points3d']}".encode() in ply_header
    undistorted = sorted(p.name for p in (out / "undistorted" / "images").iterdir())
    assert len(undistorted) == metrics["num_registered"]
    assert set(undistorted) <= {v.name for v in views}

    transforms = json.loads((out / "transforms.json").read_text())
    assert len(transforms["frames"]) == metrics["num_registered"]
    for frame in transforms["frames"]:
        assert (out / frame["file_path"]).is_file(), frame["file_path"]
        assert np.asarray(frame["transform_matrix"]).shape == (4, 4)
    # the views were rendered with focal 0.9 * width = 288 px: self-calibration should find it
    assert transforms["fl_x"] == pytest.approx(0.9 * 320, rel=0.1)

    # A failing rerun into the same folder keeps the previous result and leaves no temp folders.
    before = (out / "metrics.json").read_text()
    proc = run_stage(
        repo_root, tmp_path, capture, out, "--set", "sfm.min_registered_fraction=1.01", "--set", "sfm.fallback=[]"
    )
    lines = message_lines(proc.stderr)
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: capture 'plane': SfM failed after 1 attempt(s)"), lines
    assert "images registered" in lines[0]  # says why: too few registered for the gate
    assert (out / "metrics.json").read_text() == before
    assert [p.name for p in out.parent.iterdir()] == ["sfm"]
