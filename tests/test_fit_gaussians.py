"""3DGS fitting: held-out PSNR rises well above the initialisation, resumes exactly, stops on NaN."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from capture3d.tasks.nvs.fit_gaussians import (
    GaussianFitConfig,
    fit_gaussians,
    render_views,
)
from capture3d.tasks.nvs.gaussians.model import LearningRates, init_gaussians
from capture3d.tasks.nvs.gaussians.render import render
from capture3d.tasks.nvs.gaussians.strategy import DensifyConfig
from capture3d.tasks.nvs.image_metrics import psnr
from capture3d.tasks.nvs.scene import NvsScene, holdout_split
from tests.gaussian_helpers import camera, random_splats, ring_cameras, views_of

W, H = 64, 48


@pytest.fixture(scope="module")
def scene() -> NvsScene:
    """A ring of 16 views of 300 ground-truth Gaussians; the init gets their centres jittered, in grey."""
    gt = {k: v.float() for k, v in random_splats(300, 1, 11, torch.float32, spread=0.8, size=0.15).items()}
    gt["opacities"] = gt["opacities"].abs() + 1.0
    cams = ring_cameras(16, W, H, radius=3.5, height_z=1.2)
    images = [
        render(gt, camera(K, pose, W, H, torch.float32), 1, torch.zeros(3), "cpu").image.clamp(0, 1) for K, pose in cams
    ]
    rng = np.random.default_rng(0)
    pts = gt["means"].numpy() + rng.normal(0, 0.05, (300, 3))
    return NvsScene(
        tuple(views_of(images, cams)), pts.astype(np.float32), np.full((300, 3), 0.5, np.float32), None, "test"
    )


def _config(**kw) -> GaussianFitConfig:
    base = dict(
        iterations=240,
        sh_degree=1,
        sh_degree_interval=100,
        init_opacity=0.1,
        init_random_points=0,
        lambda_dssim=0.2,
        background="black",
        lr=LearningRates(1.6e-4, 1.6e-6, 5e-3, 1e-3, 5e-2, 2.5e-3, 1.25e-4),
        densify=DensifyConfig(
            grad_threshold=0.0002,
            percent_dense=0.01,
            split_scale_factor=1.6,
            prune_opacity=0.005,
            prune_scale3d=0.1,
            prune_scale2d=0.15,
            refine_start=50,
            refine_stop=200,
            refine_every=50,
            reset_every=3000,
            reset_opacity=0.01,
            max_gaussians=5000,
        ),
        backend="cpu",
        tile_size=8,
        cpu_compile=False,
        checkpoint_every=40,
        log_every=10,
        max_seconds=0.0,
    )
    return GaussianFitConfig(**{**base, **kw})


def _heldout_psnr(splats, views, degree) -> float:
    renders = render_views(splats, views, degree, "black", "cpu", 8)
    return float(np.mean([float(psnr(r, torch.tensor(v.image))) for r, v in zip(renders, views)]))


def test_fit_raises_heldout_psnr_by_5db(scene):
    train_idx, test_idx = holdout_split(len(scene.views))
    train, test = scene.subset(train_idx), scene.subset(test_idx)
    config = _config()
    init = init_gaussians(scene.points, scene.colors, 1, 0.1, 4.0, 0, 0, torch.device("cpu"))
    before = _heldout_psnr(init, test, 0)
    result = fit_gaussians(train, scene, config, 0, "cpu")
    after = _heldout_psnr(result.splats, test, result.sh_degree)
    assert result.iterations == 240 and result.stopped == "iterations"
    assert after > before + 5.0, (before, after)
    assert any(r["split"] + r["cloned"] > 0 for r in result.densify_log)
    assert result.curve[-1]["loss"] < result.curve[0]["loss"]


def test_resume_continues_the_same_loss_curve(scene, tmp_path):
    train = scene.subset(holdout_split(len(scene.views))[0])
    config = _config(iterations=120)
    full = fit_gaussians(train, scene, config, 3, "cpu")
    state = tmp_path / "state.pt"

    class Interrupt(Exception):
        pass

    def stop_at_70(row):
        if row["iteration"] == 70:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit_gaussians(train, scene, config, 3, "cpu", state, on_log=stop_at_70)
    resumed = fit_gaussians(train, scene, config, 3, "cpu", state)
    assert resumed.resumed_from == 40  # the last checkpoint before the interruption
    assert [r["loss"] for r in resumed.curve] == [r["loss"] for r in full.curve]
    for k in full.splats:
        assert torch.equal(full.splats[k], resumed.splats[k]), k


def test_non_finite_loss_stops_with_clear_error_and_keeps_state(scene, tmp_path):
    train = scene.subset(holdout_split(len(scene.views))[0])
    bad = _config(iterations=60, checkpoint_every=1, lr=dataclasses.replace(_config().lr, sh0=1e30, opacities=1e30))
    state = tmp_path / "state.pt"
    with pytest.raises(ValueError, match="loss became") as err:
        fit_gaussians(train, scene, bad, 0, "cpu", state)
    assert "\n" not in str(err.value) and str(state) in str(err.value)
    saved = torch.load(state, weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["splats"].values())
