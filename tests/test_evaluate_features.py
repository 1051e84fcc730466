"""evaluate_features: FPFH and an FCGF checkpoint compared on the same ground-truth pairs, with the
3DMatch protocol; register_scans runs with ``features: fcgf``; bad checkpoints fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from capture3d.errors import ParamsError
from capture3d.stages import evaluate_features, register_scans
from capture3d.tasks.fcgf.checkpoint import (
    FcgfModelConfig,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from capture3d.tasks.fcgf.model import extract_features
from capture3d.tasks.registration import capture as registration_capture
from capture3d.tasks.synthesis.scans import render_scans, write_scan_capture


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scans") / "ring"
    scans, poses = render_scans(num_scans=4, seed=0, width=120, height=90)
    write_scan_capture(scans, poses, root)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = FcgfModelConfig("ResUNetBN2C", 1, 32, 5, 0.05, True)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, build_model(config).eval(), config)
    return path


def test_fpfh_and_fcgf_side_by_side_on_3dmatch(
    shared_data: Path, checkpoint: Path, base_params: dict, tmp_path: Path
) -> None:
    params = dict(base_params)
    params["evaluate_features"] = {**base_params["evaluate_features"], "device": "cpu"}
    pair = shared_data / "registration" / "3dmatch_pair"
    out = evaluate_features.run(
        evaluate_features.EvaluateFeaturesInputs(pair, "3dmatch", checkpoint),
        tmp_path / "ev",
        evaluate_features.load_config(params),
    )
    metrics = json.loads((out / "metrics.json").read_text())
    fpfh, fcgf = metrics["features"]["fpfh"], metrics["features"]["fcgf"]
    assert fpfh["dimension"] == 33 and fcgf["dimension"] == 32
    assert fpfh["num_pairs"] == fcgf["num_pairs"] == 1
    # FPFH + RANSAC + ICP registers the pair; an untrained FCGF matches at chance level.
    assert fpfh["registration_recall"] == 1.0 and fpfh["median_rotation_error_deg"] < 3.0
    assert fpfh["inlier_ratio"] > 3 * fcgf["inlier_ratio"]
    pairs = json.loads((out / "pairs.json").read_text())["pairs"]
    assert [(p["source"], p["target"]) for p in pairs] == [("ref", "src")] * 2 or [
        (p["source"], p["target"]) for p in pairs
    ] == [("src", "ref")] * 2
    assert all(0.0 <= p["inlier_ratio"] <= 1.0 and p["overlap"] >= 0.3 for p in pairs)


def test_register_scans_takes_fcgf_from_params(capture: Path, checkpoint: Path, base_params: dict) -> None:
    params = dict(base_params)
    params["register_scans"] = {
        **base_params["register_scans"],
        "features": "fcgf",
        "fcgf": {**base_params["register_scans"]["fcgf"], "checkpoint": str(checkpoint), "device": "cpu"},
    }
    config = register_scans.load_config(params)
    registry = registration_capture.feature_registry_for(config, "ring")
    scans, voxel, prepared, _, _ = registration_capture.prepare_scans(capture, "ring", config.preprocess)
    feats = registration_capture.compute_features("ring", prepared, voxel, registry["fcgf"])
    model, _, _ = load_checkpoint(checkpoint)
    for p, f in zip(prepared, feats):
        pts = np.asarray(p.pcd.points)
        assert f.shape == (len(pts), 32)
        np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(f, extract_features(model, pts, voxel))
    params["register_scans"]["features"] = "shot"
    with pytest.raises(ParamsError, match="unknown feature 'shot'.*fcgf, fpfh"):
        register_scans.load_config(params)


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing", "checkpoint '{ck}' not found"),
        ("garbage", "checkpoint '{ck}': cannot be read safely"),
        ("shape", "weight 'conv1.weight' has shape (27, 1, 32)"),
    ],
)
def test_bad_checkpoint_is_one_line_and_writes_nothing(
    case: str, expected: str, capture: Path, base_params: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ck = tmp_path / "model.pt"
    if case == "garbage":
        ck.write_bytes(b"not a checkpoint")
    elif case == "shape":
        small = FcgfModelConfig("ResUNetBN2C", 1, 32, 3, 0.05, True)
        save_checkpoint(ck, build_model(small), FcgfModelConfig("ResUNetBN2C", 1, 32, 5, 0.05, True))
    params = dict(base_params)
    params["register_scans"] = {
        **base_params["register_scans"],
        "features": "fcgf",
        "fcgf": {**base_params["register_scans"]["fcgf"], "checkpoint": str(ck), "device": "cpu"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = register_scans.main(
        ["--capture", str(capture), "--out", str(tmp_path / "out"), "--params", str(tmp_path / "params.yaml")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1, err
    assert "capture 'ring'" in err[0] and expected.format(ck=ck) in err[0], err
    assert not (tmp_path / "out").exists()


def test_fcgf_feature_refuses_clouds_too_small_for_the_network(
    checkpoint: Path, tmp_path: Path, base_params: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):  # 200 points in a 4 cm cube: a handful of voxels at stride 8
        np.save(tiny / f"s{i}.npy", rng.uniform(0.0, 0.04, size=(200, 3)))
    params = dict(base_params)
    params["register_scans"] = json.loads(json.dumps(base_params["register_scans"]))
    params["register_scans"].update(
        features="fcgf", fcgf={**base_params["register_scans"]["fcgf"], "checkpoint": str(checkpoint), "device": "cpu"}
    )
    params["register_scans"]["preprocess"].update(voxel_size=0.005, min_points=10)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = register_scans.main(
        ["--capture", str(tiny), "--out", str(tmp_path / "out"), "--params", str(tmp_path / "params.yaml")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "cloud too small for FCGF" in err[0], err
