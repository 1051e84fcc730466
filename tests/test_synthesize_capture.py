"""Tests for capture3d.tasks.synthesis.photos: determinism, geometry, files, texture, SfM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from PIL import Image

from capture3d.tasks.cameras import PinholeCamera, read_transforms_json
from capture3d.tasks.synthesis.photos import (
    SyntheticCapture,
    render_capture,
    write_capture,
)


@pytest.fixture(scope="module")
def capture() -> SyntheticCapture:
    """Eight 320x240 views: enough resolution for photometric checks, quick to render."""
    return render_capture(num_images=8, width=320, height=240, seed=3)


@pytest.fixture(scope="module")
def full_size_capture() -> SyntheticCapture:
    """Two views at the default 640x480, for texture-richness checks."""
    return render_capture(num_images=2, seed=0)


@pytest.fixture(scope="module")
def raycaster(capture: SyntheticCapture) -> o3d.t.geometry.RaycastingScene:
    """Ray casting scene built from the capture's own output mesh."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(capture.mesh))
    return scene


# --------------------------------------------------------------------------- helpers


def _pixel_rays(cam: PinholeCamera, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays through pixels uv (N, 2) (centres at +0.5) -> ((N, 6) float32 rays, (N, 3) world directions)."""
    d_cam = np.linalg.inv(cam.K) @ np.vstack([uv.T, np.ones(len(uv))])
    d_world = (cam.R.T @ d_cam).T
    origins = np.broadcast_to(cam.center, d_world.shape)
    return np.hstack([origins, d_world]).astype(np.float32), d_world


def _project(cam: PinholeCamera, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points X (N, 3) -> pixel positions (N, 2) and depths (N,)."""
    x = cam.K @ (cam.R @ X.T + cam.t[:, None])
    return (x[:2] / x[2]).T, x[2]


def _grey(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float64 grey."""
    return img.astype(np.float64).mean(axis=2)


def _bilinear(grey: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample grey (H, W) at continuous pixel positions uv (N, 2) (centres at +0.5) -> (N,)."""
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    return (
        grey[y0, x0] * (1 - fx) * (1 - fy)
        + grey[y0, x0 + 1] * fx * (1 - fy)
        + grey[y0 + 1, x0] * (1 - fx) * fy
        + grey[y0 + 1, x0 + 1] * fx * fy
    )


def _pixel_grid(cam: PinholeCamera, step: int = 3, margin: int = 4) -> np.ndarray:
    """Pixel centres on a regular grid, (N, 2)."""
    u, v = np.meshgrid(
        np.arange(margin, cam.width - margin, step) + 0.5, np.arange(margin, cam.height - margin, step) + 0.5
    )
    return np.stack([u.ravel(), v.ravel()], axis=1)


def _surface_points(
    raycaster: o3d.t.geometry.RaycastingScene, cam: PinholeCamera, uv: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cast rays through uv (N, 2); returns the hit mask (N,) and world hit points (N, 3) (inf where missed)."""
    rays, d_world = _pixel_rays(cam, uv)
    t_hit = raycaster.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy().astype(np.float64)
    hit = np.isfinite(t_hit)
    return hit, cam.center + t_hit[:, None] * d_world


def _photometric_agreement(
    capture: SyntheticCapture, raycaster: o3d.t.geometry.RaycastingScene, cam1: PinholeCamera
) -> tuple[int, float, float]:
    """Transfer view-0 pixels to view 1 through the mesh with the given pose of view 1.

    Returns (number of co-visible samples, grey-level correlation, mean absolute grey difference).
    """
    cam0 = capture.cameras[0]
    uv0 = _pixel_grid(cam0)
    hit, X = _surface_points(raycaster, cam0, uv0)
    true1 = capture.cameras[1]
    uv1, depth = _project(cam1, X)
    inside = hit & (depth > 0) & np.all((uv1 > 2) & (uv1 < np.array([cam1.width, cam1.height]) - 2), axis=1)
    # occlusion test against the ground-truth position of view 1
    to_x = X - true1.center
    dist = np.linalg.norm(to_x, axis=1)
    rays = np.hstack([np.broadcast_to(true1.center, to_x.shape), to_x / dist[:, None]]).astype(np.float32)
    t1 = raycaster.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    visible = inside & (np.abs(t1 - dist) < 1e-3 * dist)
    a = _grey(capture.images[0])[(uv0[visible, 1] - 0.5).astype(int), (uv0[visible, 0] - 0.5).astype(int)]
    b = _bilinear(_grey(capture.images[1]), uv1[visible])
    return int(visible.sum()), float(np.corrcoef(a, b)[0, 1]), float(np.abs(a - b).mean())


def _rotated_about_camera_y(cam: PinholeCamera, degrees: float) -> PinholeCamera:
    """The camera turned by ``degrees`` about its own y axis (same centre)."""
    a = np.deg2rad(degrees)
    Ry = np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])
    return PinholeCamera(cam.name, cam.width, cam.height, cam.K, Ry @ cam.R, Ry @ cam.t)


# --------------------------------------------------------------------------- structure


def test_images_and_cameras_have_expected_shapes(capture: SyntheticCapture) -> None:
    assert len(capture.images) == len(capture.cameras) == 8
    assert [c.name for c in capture.cameras] == [f"{i:04d}.png" for i in range(8)]
    for img, cam in zip(capture.images, capture.cameras):
        assert img.shape == (240, 320, 3) and img.dtype == np.uint8
        assert (cam.width, cam.height) == (320, 240)
        np.testing.assert_allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(cam.R) == pytest.approx(1.0)
    K = capture.cameras[0].K
    expected_f = 160.0 / np.tan(np.deg2rad(30.0))  # fov_deg=60 is horizontal
    np.testing.assert_allclose(K, [[expected_f, 0, 160.0], [0, expected_f, 120.0], [0, 0, 1]])
    assert all(np.array_equal(c.K, K) for c in capture.cameras)


def test_cameras_orbit_the_scene_and_look_at_its_centre(capture: SyntheticCapture) -> None:
    centers = np.array([c.center for c in capture.cameras])
    azimuths = np.sort(np.arctan2(centers[:, 1], centers[:, 0]))
    gaps = np.diff(np.concatenate([azimuths, azimuths[:1] + 2 * np.pi]))
    assert gaps.max() < 2.0 * (2 * np.pi / len(centers))  # evenly spread over 360 degrees
    assert np.all(centers[:, 2] > 1.0)  # above the ground
    for cam in capture.cameras:
        uv, depth = _project(cam, np.array([[0.0, 0.0, 0.4]]))
        assert depth[0] > 0
        np.testing.assert_allclose(uv[0], [160.0, 120.0], atol=15.0)


def test_mesh_has_colours_and_metre_scale(capture: SyntheticCapture) -> None:
    mesh = capture.mesh
    assert isinstance(mesh, o3d.geometry.TriangleMesh)
    assert mesh.has_vertex_colors() and len(mesh.triangles) > 1000
    colours = np.asarray(mesh.vertex_colors)
    assert colours.min() >= 0.0 and colours.max() <= 1.0 and colours.std() > 0.05
    extent = mesh.get_axis_aligned_bounding_box().get_extent()
    assert 5.0 < extent[0] < 50.0 and 5.0 < extent[1] < 50.0 and 1.0 < extent[2] < 10.0


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_capture() -> None:
    a = render_capture(num_images=3, width=96, height=72, seed=5)
    b = render_capture(num_images=3, width=96, height=72, seed=5)
    for img_a, img_b in zip(a.images, b.images):
        assert np.array_equal(img_a, img_b)
    for cam_a, cam_b in zip(a.cameras, b.cameras):
        assert np.array_equal(cam_a.R, cam_b.R) and np.array_equal(cam_a.t, cam_b.t)
    assert np.array_equal(np.asarray(a.mesh.vertices), np.asarray(b.mesh.vertices))
    assert np.array_equal(np.asarray(a.mesh.vertex_colors), np.asarray(b.mesh.vertex_colors))


def test_different_seed_gives_different_capture() -> None:
    a = render_capture(num_images=2, width=96, height=72, seed=5)
    b = render_capture(num_images=2, width=96, height=72, seed=6)
    assert not np.array_equal(a.images[0], b.images[0])
    assert np.abs(a.images[0].astype(int) - b.images[0].astype(int)).mean() > 10
    assert not np.allclose(a.cameras[0].t, b.cameras[0].t)


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        render_capture(num_images=0)
    with pytest.raises(ValueError):
        render_capture(num_images=2, supersample=0)
    with pytest.raises(ValueError):
        render_capture(num_images=2, texture_scale=0.0)
    with pytest.raises(ValueError):
        render_capture(num_images=2, texture_detail=1.0)


def test_texture_scale_and_detail_make_the_texture_coarser() -> None:
    """The demo's texture (scale 3, detail 0.2): same scene and cameras, less fine detail for a CPU
    fit to learn, still textured everywhere (SIFT needs it)."""
    fine = render_capture(num_images=2, width=320, height=240, seed=0)
    coarse = render_capture(num_images=2, width=320, height=240, seed=0, texture_scale=3.0, texture_detail=0.2)
    assert all(np.allclose(a.K, b.K) and np.allclose(a.t, b.t) for a, b in zip(fine.cameras, coarse.cameras))
    for f, c in zip(fine.images, coarse.images):
        gf, gc = (np.hypot(*np.gradient(_grey(img))).mean() for img in (f, c))
        assert gc < 0.75 * gf and gc > 3.0, (gf, gc)  # measured: 10.3 -> 6.4 and 11.9 -> 7.6


# --------------------------------------------------------------------------- geometry


def test_ray_hit_points_reproject_to_their_pixels(
    capture: SyntheticCapture, raycaster: o3d.t.geometry.RaycastingScene
) -> None:
    for cam in capture.cameras[:3]:
        uv = _pixel_grid(cam, step=7)
        hit, X = _surface_points(raycaster, cam, uv)
        assert hit.mean() > 0.99  # almost every pixel sees the scene, not the sky
        back, depth = _project(cam, X[hit])
        assert np.all(depth > 0.5)
        np.testing.assert_allclose(back, uv[hit], atol=1e-3)


def test_images_agree_with_ground_truth_poses(
    capture: SyntheticCapture, raycaster: o3d.t.geometry.RaycastingScene
) -> None:
    """A surface point seen in view 0 has the same grey level where view 1's true pose projects it."""
    count, corr, mad = _photometric_agreement(capture, raycaster, capture.cameras[1])
    assert count > 2000
    assert corr > 0.95
    assert mad < 7.0
    # the check has teeth: a pose off by half a degree (about 2.4 px here) is clearly worse
    _, bad_corr, bad_mad = _photometric_agreement(capture, raycaster, _rotated_about_camera_y(capture.cameras[1], 0.5))
    assert bad_corr < corr - 0.05
    assert bad_mad > 2.0 * mad


def test_objects_are_in_view_of_every_camera(capture: SyntheticCapture) -> None:
    vertices = np.asarray(capture.mesh.vertices)
    radius = np.linalg.norm(vertices[:, :2], axis=1)
    objects = vertices[(radius < 3.0) & (vertices[:, 2] > 0.05)]  # not ground, not courtyard wall
    assert len(objects) > 1000
    for cam in capture.cameras:
        uv, depth = _project(cam, objects)
        inside = (depth > 0) & np.all((uv >= 0) & (uv <= [cam.width, cam.height]), axis=1)
        assert inside.mean() > 0.9


# --------------------------------------------------------------------------- texture


def test_images_are_richly_textured(full_size_capture: SyntheticCapture) -> None:
    for img in full_size_capture.images:
        grey = _grey(img)
        gy, gx = np.gradient(grey)
        assert np.hypot(gx, gy).mean() > 5.0
        # most 16x16 tiles have real contrast (no large flat areas)
        tiles = grey[: 480 // 16 * 16, : 640 // 16 * 16].reshape(30, 16, 40, 16).std(axis=(1, 3))
        assert (tiles > 4.0).mean() > 0.9


def test_sift_finds_thousands_of_features(full_size_capture: SyntheticCapture) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    extractor = pycolmap.FeatureExtractor.create(device=pycolmap.Device.cpu)
    grey = np.asarray(Image.fromarray(full_size_capture.images[0]).convert("L"))
    keypoints, _ = extractor.extract_from_uint8_array(np.ascontiguousarray(grey))
    assert len(keypoints) > 2000


# --------------------------------------------------------------------------- files


def test_write_capture_writes_all_files_and_round_trips(capture: SyntheticCapture, tmp_path: Path) -> None:
    out = tmp_path / "capture"
    write_capture(capture, out)
    write_capture(capture, out)  # an existing directory is fine
    for cam, img in zip(capture.cameras, capture.images):
        png = out / "images" / cam.name
        assert png.is_file()
        assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), img)
    intrinsics = json.loads((out / "intrinsics.json").read_text())
    K = capture.cameras[0].K
    assert intrinsics == {
        "camera_model": "PINHOLE",
        "width": 320,
        "height": 240,
        "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]],
    }
    frames = json.loads((out / "gt" / "transforms.json").read_text())["frames"]
    assert [f["file_path"] for f in frames] == [f"images/{c.name}" for c in capture.cameras]
    read = read_transforms_json(out / "gt" / "transforms.json")
    assert [c.name for c in read] == [c.name for c in capture.cameras]
    for got, want in zip(read, capture.cameras):
        np.testing.assert_allclose(got.R, want.R, atol=1e-9)
        np.testing.assert_allclose(got.t, want.t, atol=1e-9)
        np.testing.assert_allclose(got.K, want.K, atol=1e-9)
        assert (got.width, got.height) == (want.width, want.height)
    mesh = o3d.io.read_triangle_mesh(str(out / "mesh.ply"))
    assert len(mesh.triangles) == len(capture.mesh.triangles)
    assert mesh.has_vertex_colors()


# --------------------------------------------------------------------------- end to end (about a minute)


@pytest.mark.slow
def test_sfm_stage_recovers_ground_truth_poses(tmp_path: Path, base_params: dict) -> None:
    """A richly textured capture (the synthesizer's finest texture, 24 views of 640x480) through the sfm
    and evaluate_sfm stages: every pose recovered tightly. (The demo's coarser, smaller capture for
    quick fits registers every view with a median rotation error of 0.03 deg.)"""
    from capture3d.stages import evaluate_sfm, sfm, synthesize

    rich = {"num_images": 24, "width": 640, "height": 480, "texture_scale": 1.0, "texture_detail": 0.8}
    base_params = {**base_params, "synthesize": {**base_params["synthesize"], **rich}}
    capture = synthesize.run(synthesize.Inputs(), tmp_path / "demo", synthesize.load_config(base_params))
    sfm.run(sfm.SfmInputs(capture), tmp_path / "sfm", sfm.load_config(base_params))
    sfm_metrics = json.loads((tmp_path / "sfm" / "metrics.json").read_text())
    assert sfm_metrics["intrinsics"] == "known"  # from the capture's intrinsics.json
    gt = evaluate_sfm.find_ground_truth(capture)
    assert gt == capture / "gt" / "transforms.json"
    inputs = evaluate_sfm.EvaluateSfmInputs(tmp_path / "sfm", gt, None, "demo")
    metrics = evaluate_sfm.read_metrics(
        evaluate_sfm.run(inputs, tmp_path / "eval", evaluate_sfm.load_config(base_params))
    )
    assert metrics["registered_fraction"] == 1.0 and metrics["num_models"] == 1
    assert metrics["num_evaluated"] == base_params["synthesize"]["num_images"]
    assert metrics["rotation_error_deg_max"] < 0.1
    assert metrics["position_error_max"] < 0.01  # metres; the orbit radius is 4.6 m
    assert metrics["auc_rel_pose_5deg"] > 0.99
    assert metrics["mean_reprojection_error_px"] < 0.5
