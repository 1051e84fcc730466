"""The shipped FCGF model loads (from the working directory or beside the installed package) and gives
unit-norm 32-d features; self-supervised adaptation raises the validation FMR on a small real scan
within a short budget; register_scans with ``fcgf.adapt: true`` writes the adapted model and the
FMR before and after."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from capture3d.stages import register_scans
from capture3d.tasks.fcgf.adapt import AdaptConfig, adapt_model
from capture3d.tasks.fcgf.checkpoint import FcgfModelConfig, build_model, load_checkpoint
from capture3d.tasks.fcgf.model import extract_features
from capture3d.tasks.fcgf.self_supervised import SelfSupervisedConfig
from capture3d.tasks.registration.capture import PACKAGE_PARENT, resolve_checkpoint
from capture3d.tasks.registration.preprocess import auto_voxel_size
from capture3d.tasks.registration.scan_io import read_scan


def test_shipped_checkpoint_loads_and_gives_unit_norm_32d_features(
    base_params: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = base_params["register_scans"]["fcgf"]["checkpoint"]
    path = resolve_checkpoint(default)
    assert path.is_file(), f"the shipped model {default} is missing"
    assert path.stat().st_size <= 20 * 2**20
    monkeypatch.chdir(tmp_path)  # outside the repository: found beside the package
    assert resolve_checkpoint(default) == PACKAGE_PARENT / default
    model, config, extras = load_checkpoint(resolve_checkpoint(default))
    assert extras["storage_dtype"] == "float16" and config.out_channels == 32
    rng = np.random.default_rng(0)
    u, v = rng.uniform(0, 1.0, size=(2, 4000))
    pts = np.stack([u, v, 0.1 * np.sin(6 * u)], 1)
    feats = extract_features(model, pts, 0.02)
    assert feats.shape == (4000, 32) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)


def test_adaptation_raises_validation_fmr_on_a_small_real_scan(shared_data: Path) -> None:
    scan = read_scan(shared_data / "registration" / "bunny" / "bun000.ply")
    voxel = auto_voxel_size([scan], 1000)  # ~1000 voxels: a short budget
    torch.manual_seed(0)
    model = build_model(FcgfModelConfig("ResUNetBN2C", 1, 32, 5, 0.05, True)).eval()
    views = SelfSupervisedConfig(0.3, 0.7, "mixed", 30.0, 0.5, 0.5, 0.05, 0.3, 0.0)
    config = AdaptConfig(
        max_seconds=120.0,
        max_iterations=25,
        learning_rate=1e-3,
        val_pairs=8,
        val_inlier_voxels=2.0,
        inlier_ratio=0.05,
        views=views,
    )
    before_weights = {k: v.clone() for k, v in model.state_dict().items()}
    result = adapt_model(model, [(scan.name, scan.points)], voxel, config, seed=0)
    assert result.iterations == 25 and result.num_val_pairs == 8
    assert result.fmr_after > result.fmr_before and result.improved, (result.fmr_before, result.fmr_after)
    assert result.inlier_ratio_after > result.inlier_ratio_before
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_weights.items()), "input model untouched"


def test_register_scans_adapts_the_model_and_records_fmr(base_params: dict, tmp_path: Path) -> None:
    capture = tmp_path / "wave"  # one surface seen twice, the second copy slightly moved
    capture.mkdir()
    rng = np.random.default_rng(0)
    u, v = rng.uniform(0, 2.0, size=(2, 6000))
    pts = np.stack([u, v, 0.2 * np.sin(3 * u) * np.cos(2 * v) + 0.3 * ((u > 1.2) & (u < 1.6) & (v > 0.5))], 1)
    c, s = np.cos(0.1), np.sin(0.1)
    np.save(capture / "a.npy", pts)
    np.save(capture / "b.npy", pts @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + [0.05, -0.02, 0.01])
    params = json.loads(json.dumps(base_params))
    fcgf = params["register_scans"]["fcgf"]
    fcgf.update(adapt=True, adapt_max_iterations=2, adapt_val_pairs=2, device="cpu")
    params["register_scans"].update(features="fcgf")
    params["register_scans"]["preprocess"]["auto_target_points"] = 1500
    params["register_scans"]["sensor_origin"] = "none"
    out = register_scans.run(
        register_scans.RegisterScansInputs(capture), tmp_path / "out", register_scans.load_config(params)
    )
    info = json.loads((out / "fcgf_adapted" / "info.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fcgf_adaptation"] == info and info["adapted"] and info["iterations"] == 2
    assert info["num_val_pairs"] == 2 and 0.0 <= info["val_fmr_before"] <= 1.0 and 0.0 <= info["val_fmr_after"] <= 1.0
    assert info["checkpoint"].endswith("fcgf_default.pt")
    # the adapted model is written exactly when it was used
    assert (out / "fcgf_adapted" / "model.pt").is_file() == (info["used"] == "adapted")
    if info["used"] == "adapted":
        _, _, extras = load_checkpoint(out / "fcgf_adapted" / "model.pt")
        assert extras["adapted_from"] == info["checkpoint"]
