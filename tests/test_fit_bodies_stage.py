"""The fit_bodies / evaluate_bodies stages and CLI: synthetic multi-view capture against 3D ground
truth, the real COCO photos and the SPIN OpenPose example, bad input, and the SMPL model path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from capture3d.cli import main as cli_main
from capture3d.config import load_params
from capture3d.errors import CaptureError, ParamsError
from capture3d.stages import evaluate_bodies, fit_bodies, synthesize_bodies


@pytest.fixture(scope="module")
def anny():
    torch.set_num_threads(1)
    from capture3d.tasks.body.anny_model import AnnyBody

    return AnnyBody()


@pytest.fixture(scope="module")
def params(repo_root: Path) -> dict:
    return load_params(repo_root / "params.yaml")


def _config(params: dict, **changes) -> fit_bodies.FitBodiesConfig:
    section = {**params["fit_bodies"], "overlays": False, **changes}
    return fit_bodies.load_config({"fit_bodies": section})


def test_synthetic_multiview_capture_meets_3d_target(anny, params, tmp_path: Path) -> None:
    syn_config = synthesize_bodies.SynthesizeBodiesConfig(
        count=4, views=3, width=320, height=240, fov_deg=55.0, noise_px=2.0, seed=3
    )
    capture = synthesize_bodies.run(synthesize_bodies.Inputs(), tmp_path / "bodies", syn_config, anny)
    out = fit_bodies.run(
        fit_bodies.BodyInputs.from_capture(capture), tmp_path / "fit", _config(params, overlays=True), anny
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["people_fitted"] == 4 and metrics["views_max"] == 3
    assert metrics["reference_2d"] == "ground truth"
    assert metrics["median_mpjpe_mm"] < 30.0, metrics["per_body"]
    assert metrics["median_error_px"] < 3.0, metrics["per_body"]
    assert len(list((out / "meshes").glob("*.ply"))) == 4 and len(list((out / "params").glob("*.npz"))) == 4
    assert len(list((out / "overlays").glob("*.png"))) == 12
    saved = np.load(out / "params" / "frame000_0.npz")
    assert saved["body_pose"].shape == (len(anny.pose_joint_names), 3)
    ev = evaluate_bodies.run(
        evaluate_bodies.Inputs(out, capture), tmp_path / "ev", evaluate_bodies.EvaluateBodiesConfig(0.1)
    )
    again = json.loads((ev / "metrics.json").read_text())
    assert again["median_mpjpe_mm"] == pytest.approx(metrics["median_mpjpe_mm"])


def test_real_coco_people_fitted(anny, params, shared_data: Path, tmp_path: Path) -> None:
    coco = shared_data / "body" / "coco"
    inputs = fit_bodies.BodyInputs(keypoints=coco / "test_coco.json", images=coco, name="coco")
    out = fit_bodies.run(inputs, tmp_path / "coco", _config(params), anny)
    metrics = json.loads((out / "metrics.json").read_text())
    labelled = json.loads((coco / "test_coco.json").read_text())["annotations"]
    enough = [a for a in labelled if sum(v > 0 for v in a["keypoints"][2::3]) >= 8]
    assert metrics["people_fitted"] == len(enough) == 12
    assert metrics["people_skipped"] == len(labelled) - len(enough)
    assert all("confident keypoints" in s["reason"] for s in metrics["skipped"])
    assert metrics["median_error_norm"] < 0.05, metrics["per_body"]


def test_spin_openpose_example_cli(shared_data: Path, tmp_path: Path) -> None:
    spin = shared_data / "body" / "spin_example"
    out = tmp_path / "spin"
    code = cli_main(
        ["fit", "bodies", "--images", str(spin), "--keypoints", str(spin), "--out", str(out), "--name", "spin"]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["people_fitted"] == 1 and "left_big_toe" in metrics["keypoints_used"]
    assert metrics["median_error_norm"] < 0.05
    overlay = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "overlays" / "im1010.png"))
    photo = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(spin / "im1010.jpg").convert("RGB"))
    assert overlay.shape == photo.shape and np.abs(overlay.astype(int) - photo).mean() > 2.0


def test_bad_inputs_fail_in_one_line_without_output(anny, params, shared_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with pytest.raises(CaptureError, match="cap1.*no such file"):
        fit_bodies.run(
            fit_bodies.BodyInputs(keypoints=tmp_path / "missing.json", name="cap1"), out, _config(params), anny
        )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CaptureError, match="cap2"):
        fit_bodies.run(fit_bodies.BodyInputs(keypoints=bad, name="cap2"), out, _config(params), anny)
    # everybody below min_keypoints: nothing fitted to noise, one line naming why
    coco = shared_data / "body" / "coco"
    with pytest.raises(CaptureError, match="no person has enough keypoints"):
        fit_bodies.run(
            fit_bodies.BodyInputs(keypoints=coco / "test_coco.json", images=coco, name="cap3"),
            out,
            _config(params, min_keypoints=18),
            anny,
        )
    assert not out.exists()
    # keypoints far outside the image are dropped and noted
    spin = shared_data / "body" / "spin_example"
    folder = tmp_path / "outside"
    folder.mkdir()
    shutil.copy(spin / "im1010.jpg", folder)
    data = json.loads((spin / "im1010_openpose.json").read_text())
    data["people"][0]["pose_keypoints_2d"][0:3] = [5000.0, -4000.0, 0.9]  # the nose
    (folder / "im1010_keypoints.json").write_text(json.dumps(data))
    config = _config(params, stages=[{**s, "iterations": 5} for s in params["fit_bodies"]["stages"]])
    done = fit_bodies.run(fit_bodies.BodyInputs(keypoints=folder, images=folder, name="cap4"), out, config, anny)
    assert any("outside" in n and "nose" in n for n in json.loads((done / "metrics.json").read_text())["notes"])
    # a missing SMPL model file: one line from the CLI, nothing written
    code = cli_main(
        [
            "fit",
            "bodies",
            "--keypoints",
            str(folder),
            "--out",
            str(tmp_path / "smpl"),
            "--model",
            "smpl",
            "--model-file",
            str(tmp_path / "SMPL_NEUTRAL.npz"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "SMPL_NEUTRAL.npz" in err[0], err
    assert not (tmp_path / "smpl").exists()
    with pytest.raises(ParamsError, match="model_file"):
        fit_bodies.load_config({"fit_bodies": {**params["fit_bodies"], "model": "smpl", "model_file": ""}})
