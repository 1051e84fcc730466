"""Tests of the NVS scene loaders (transforms.json, COLMAP, sfm output, LLFF) and known-pose triangulation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from capture3d.errors import CaptureError
from capture3d.tasks.cameras import PinholeCamera, write_transforms_json
from capture3d.tasks.nvs.data import load_scene, triangulate_known_poses
from capture3d.tasks.nvs.scene import NvsScene

W, H = 64, 48


def _rotation(rng: np.random.Generator, degrees: float) -> np.ndarray:
    """A random rotation of up to ``degrees`` about a random axis, (3, 3)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(degrees) * rng.uniform(-1, 1)
    Kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * Kx + (1 - np.cos(angle)) * Kx @ Kx


def _cameras(n: int, shared: bool, seed: int = 0) -> list[PinholeCamera]:
    """``n`` pinhole cameras around the origin, looking roughly along +z; per-view K unless shared."""
    rng = np.random.default_rng(seed)
    cams = []
    for i in range(n):
        f = 55.0 if shared else 50.0 + 3.0 * i
        K = np.array([[f, 0, W / 2 + (0 if shared else i)], [0, f * 1.01, H / 2], [0, 0, 1.0]])
        R = _rotation(rng, 20.0)
        t = rng.normal(size=3)
        cams.append(PinholeCamera(f"view_{i:02d}.png", W, H, K, R, t))
    return cams


def _write_images(folder: Path, names: list[str], seed: int = 0, size: tuple[int, int] = (W, H)) -> list[np.ndarray]:
    """Random RGB PNGs; returns them as (H, W, 3) uint8."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = []
    for name in names:
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
        images.append(pixels)
    return images


def _assert_one_line_error(excinfo: pytest.ExceptionInfo[CaptureError], label: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert f"'{label}'" in message
    return message


# ----------------------------------------------------------------------------- transforms.json


@pytest.mark.parametrize("shared", [True, False])
def test_transforms_round_trip(tmp_path: Path, shared: bool) -> None:
    cams = _cameras(4, shared)
    pixels = _write_images(tmp_path / "images", [c.name for c in cams])
    write_transforms_json(tmp_path / "transforms.json", cams)

    scene = load_scene(tmp_path, "synthetic")
    assert scene.source == "transforms"
    assert [v.name for v in scene.views] == [c.name for c in cams]
    assert scene.points.shape == (0, 3) and scene.depth_bounds is None
    for view, cam, px in zip(scene.views, cams, pixels, strict=True):
        assert (view.width, view.height) == (W, H)
        assert view.image.dtype == np.float32 and view.image.shape == (H, W, 3)
        np.testing.assert_allclose(view.image, px / 255.0, atol=1e-6)
        np.testing.assert_allclose(view.K, cam.K, atol=1e-9)
        assert np.abs(view.cam_from_world[:3, :3] - cam.R).max() < 1e-6
        assert np.abs(view.cam_from_world[:3, 3] - cam.t).max() < 1e-6
        np.testing.assert_allclose(view.cam_from_world[3], [0, 0, 0, 1])

    half = load_scene(tmp_path / "transforms.json", "synthetic", resolution_scale=0.5)
    for view, cam in zip(half.views, cams, strict=True):
        assert view.image.shape == (H // 2, W // 2, 3)
        np.testing.assert_allclose(view.K[:2], cam.K[:2] * 0.5, atol=1e-9)
        assert np.abs(view.cam_from_world[:3, :3] - cam.R).max() < 1e-6


def test_transforms_points_from_ply(tmp_path: Path) -> None:
    cams = _cameras(3, shared=True)
    _write_images(tmp_path / "images", [c.name for c in cams])
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(50, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(50, 3), dtype=np.uint8)
    header = (
        "ply\nformat ascii 1.0\nelement vertex 50\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    rows = "".join(f"{x!r} {y!r} {z!r} {r} {g} {b}\n" for (x, y, z), (r, g, b) in zip(xyz.tolist(), rgb, strict=True))
    (tmp_path / "points.ply").write_text(header + rows)
    write_transforms_json(tmp_path / "transforms.json", cams, ply_file_path="points.ply")

    scene = load_scene(tmp_path, "ply")
    # points stay in the COLMAP world frame the PLY was written in
    np.testing.assert_allclose(scene.points, xyz, atol=1e-6)
    np.testing.assert_allclose(scene.colors, rgb / 255.0, atol=1e-6)
    limited = load_scene(tmp_path, "ply", points_limit=20)
    assert limited.points.shape == (20, 3) and limited.colors.shape == (20, 3)
    again = load_scene(tmp_path, "ply", points_limit=20)
    np.testing.assert_array_equal(limited.points, again.points)  # seeded subset
    assert {tuple(p) for p in limited.points.tolist()} <= {tuple(p) for p in xyz.tolist()}


@pytest.mark.parametrize(
    "change", [{"camera_model": "OPENCV", "k1": 0.1}, {"k1": 0.0, "p2": 0.01}, {"camera_model": "OPENCV_FISHEYE"}]
)
def test_transforms_non_pinhole_refused(tmp_path: Path, change: dict) -> None:
    cams = _cameras(3, shared=True)
    _write_images(tmp_path / "images", [c.name for c in cams])
    write_transforms_json(tmp_path / "transforms.json", cams)
    data = json.loads((tmp_path / "transforms.json").read_text())
    data.update(change)
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    with pytest.raises(CaptureError) as excinfo:
        load_scene(tmp_path, "fisheye_cap")
    message = _assert_one_line_error(excinfo, "fisheye_cap")
    assert "not pinhole" in message and "undistort" in message


def test_transforms_missing_image(tmp_path: Path) -> None:
    cams = _cameras(3, shared=True)
    _write_images(tmp_path / "images", [c.name for c in cams[:2]])
    write_transforms_json(tmp_path / "transforms.json", cams)
    with pytest.raises(CaptureError) as excinfo:
        load_scene(tmp_path, "gap")
    assert cams[2].name in _assert_one_line_error(excinfo, "gap")


# ----------------------------------------------------------------------------- COLMAP and sfm output


def _write_colmap_model(folder: Path, cams: list[PinholeCamera], model: str, extra: list[float]) -> np.ndarray:
    """A COLMAP binary model with one camera of ``model`` shared by ``cams`` and 30 points; returns them."""
    rec = pycolmap.Reconstruction()
    K = cams[0].K
    params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]] if model == "PINHOLE" else [K[0, 0], K[0, 2], K[1, 2], *extra]
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model=model, width=W, height=H, params=params, camera_id=1))
    for i, cam in enumerate(cams, start=1):
        image = pycolmap.Image(name=cam.name, camera_id=1, image_id=i)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(cam.R), cam.t))
    xyz = np.random.default_rng(2).normal(size=(30, 3))
    for p in xyz:
        rec.add_point3D(p, pycolmap.Track(), np.array([10, 200, 30], dtype=np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    rec.write_binary(folder)
    return xyz


def test_colmap_pinhole_and_sfm_folder(tmp_path: Path) -> None:
    cams = _cameras(3, shared=True)
    for root, model_dir, image_dir, source in (
        (tmp_path / "colmap", tmp_path / "colmap" / "sparse" / "0", tmp_path / "colmap" / "images", "colmap"),
        (
            tmp_path / "sfm",
            tmp_path / "sfm" / "undistorted" / "sparse",
            tmp_path / "sfm" / "undistorted" / "images",
            "sfm",
        ),
    ):
        fixed = np.array(cams[0].K)
        fixed[1, 1] = fixed[0, 0]
        pinhole = [PinholeCamera(c.name, W, H, fixed, c.R, c.t) for c in cams]
        xyz = _write_colmap_model(model_dir, pinhole, "PINHOLE", [])
        _write_images(image_dir, [c.name for c in cams])
        scene = load_scene(root, "model", resolution_scale=0.5)
        assert scene.source == source and len(scene.views) == 3
        np.testing.assert_allclose(scene.points, xyz, atol=1e-5)
        np.testing.assert_allclose(scene.colors[0], [10 / 255, 200 / 255, 30 / 255], atol=1e-6)
        for view, cam in zip(scene.views, pinhole, strict=True):
            assert view.image.shape == (H // 2, W // 2, 3)
            np.testing.assert_allclose(view.K[:2], cam.K[:2] * 0.5, atol=1e-9)
            assert np.abs(view.cam_from_world[:3, :3] - cam.R).max() < 1e-6
            assert np.abs(view.cam_from_world[:3, 3] - cam.t).max() < 1e-6


def test_colmap_distorted_is_undistorted(tmp_path: Path) -> None:
    cams = _cameras(3, shared=True)
    _write_colmap_model(tmp_path / "sparse", cams, "SIMPLE_RADIAL", [-0.2])
    _write_images(tmp_path / "images", [c.name for c in cams])
    scene = load_scene(tmp_path, "radial")
    assert scene.source == "colmap" and len(scene.views) == 3
    for view, cam in zip(scene.views, cams, strict=True):
        # undistortion changes the pinhole K and the image size, never the pose
        assert view.K[0, 1] == 0 and view.K[2, 2] == 1
        assert abs(view.K[0, 2] - view.width / 2) < 1.0 and abs(view.K[1, 2] - view.height / 2) < 1.0
        assert not np.allclose(view.K, cam.K)
        assert np.abs(view.cam_from_world[:3, :3] - cam.R).max() < 1e-6
        assert np.abs(view.cam_from_world[:3, 3] - cam.t).max() < 1e-6

    (tmp_path / "images" / cams[1].name).unlink()
    with pytest.raises(CaptureError) as excinfo:
        load_scene(tmp_path, "radial")
    assert cams[1].name in _assert_one_line_error(excinfo, "radial")


# ----------------------------------------------------------------------------- LLFF


def _write_llff(
    folder: Path,
    cams: list[PinholeCamera],
    full: tuple[int, int],
    f_full: float,
    subfolders: dict[str, tuple[int, int]],
) -> None:
    """poses_bounds.npy for OpenCV-convention ``cams`` (full-size (W, H), focal ``f_full``) + image folders."""
    rows = []
    for i, cam in enumerate(cams):
        c2w = cam.R.T  # columns: right, down, forward
        pose = np.column_stack([c2w[:, 1], c2w[:, 0], -c2w[:, 2], cam.center, [full[1], full[0], f_full]])
        rows.append(np.concatenate([pose.ravel(), [1.0 + i, 10.0 + i]]))
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "poses_bounds.npy", np.array(rows))
    for name, size in subfolders.items():
        _write_images(folder / name, [f"img{i:03d}.png" for i in range(len(cams))], size=size)


def test_llff_synthetic_poses_and_folders(tmp_path: Path) -> None:
    cams = _cameras(4, shared=True)
    _write_llff(tmp_path, cams, (640, 480), 500.0, {"images_10": (64, 48), "images_20": (32, 24)})

    scene = load_scene(tmp_path, "llff")
    assert scene.source == "llff" and scene.depth_bounds == (1.0, 13.0)
    assert scene.points.shape == (0, 3)
    for view, cam in zip(scene.views, cams, strict=True):
        assert (view.width, view.height) == (64, 48)
        np.testing.assert_allclose(view.K, [[50.0, 0, 32.0], [0, 50.0, 24.0], [0, 0, 1]], atol=1e-9)
        assert np.abs(view.cam_from_world[:3, :3] - cam.R).max() < 1e-6
        assert np.abs(view.cam_from_world[:3, 3] - cam.t).max() < 1e-6

    half = load_scene(tmp_path, "llff", resolution_scale=0.5)  # images_20 fits exactly
    assert (half.views[0].width, half.views[0].height) == (32, 24)
    np.testing.assert_allclose(half.views[0].K, [[25.0, 0, 16.0], [0, 25.0, 12.0], [0, 0, 1]], atol=1e-9)
    quarter = load_scene(tmp_path, "llff", resolution_scale=0.25)  # images_20 resized
    assert (quarter.views[0].width, quarter.views[0].height) == (16, 12)
    np.testing.assert_allclose(quarter.views[0].K[:2, :], [[12.5, 0, 8.0], [0, 12.5, 6.0]], atol=1e-9)

    (tmp_path / "images_10" / "img003.png").unlink()
    with pytest.raises(CaptureError) as excinfo:
        load_scene(tmp_path, "llff")
    assert "3 images" in _assert_one_line_error(excinfo, "llff")


@pytest.fixture(scope="module")
def fern_half(shared_data: Path) -> NvsScene:
    """Fern at half the size of images_8 (252x189); shared_data is ``<repo>/../shared/data``."""
    path = shared_data / "nvs" / "fern"
    if not path.is_dir():
        pytest.skip(f"{path} is absent: LLFF fern test skipped")
    return load_scene(path, "fern", resolution_scale=0.5)


def test_llff_fern(shared_data: Path, fern_half: NvsScene) -> None:
    fern = shared_data / "nvs" / "fern"
    if not fern.is_dir():
        pytest.skip(f"{fern} is absent: LLFF fern test skipped")
    scene = load_scene(fern, "fern")
    assert scene.source == "llff" and len(scene.views) == 20
    assert all((v.width, v.height) == (504, 378) for v in scene.views)
    assert all((v.width, v.height) == (252, 189) for v in fern_half.views)
    f_full = float(np.load(fern / "poses_bounds.npy")[0, 14])
    np.testing.assert_allclose(scene.views[0].K, [[f_full / 8, 0, 252], [0, f_full / 8, 189], [0, 0, 1]])
    np.testing.assert_allclose(fern_half.views[0].K[:2], scene.views[0].K[:2] / 2)
    near, far = scene.depth_bounds
    assert np.isfinite([near, far]).all() and 0 < near < far
    for view in scene.views:
        R = view.cam_from_world[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)
        assert np.linalg.det(R) > 0.99
    forward = np.stack([v.cam_from_world[2, :3] for v in scene.views])  # (N, 3) optical axes in world
    mean = forward.mean(0)
    assert (forward @ mean > 0).all()


def test_fern_triangulation_geometry(fern_half: NvsScene, tmp_path: Path) -> None:
    start = time.perf_counter()
    scene = triangulate_known_poses(fern_half, tmp_path / "tri", "fern", max_image_size=512, num_threads=2)
    elapsed = time.perf_counter() - start
    assert elapsed < 60
    P = scene.points.astype(np.float64)  # (P, 3)
    assert len(P) >= 500 and scene.colors.shape == P.shape
    assert scene.colors.min() >= 0 and scene.colors.max() <= 1
    near, far = scene.depth_bounds
    for view in scene.views:
        Xc = P @ view.cam_from_world[:3, :3].T + view.cam_from_world[:3, 3]  # (P, 3)
        assert (Xc[:, 2] > 0).mean() > 0.99, view.name  # in front of every camera
        assert 0.5 * near < np.median(Xc[:, 2]) < far
        uv = Xc @ view.K.T
        uv = uv[:, :2] / uv[:, 2:]
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < view.width) & (uv[:, 1] >= 0) & (uv[:, 1] < view.height)
        assert inside.mean() > 0.8, view.name


# ----------------------------------------------------------------------------- bad input


def test_missing_and_unrecognised(tmp_path: Path) -> None:
    with pytest.raises(CaptureError) as excinfo:
        load_scene(tmp_path / "nowhere", "lost")
    assert "does not exist" in _assert_one_line_error(excinfo, "lost")

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(CaptureError) as excinfo:
        load_scene(tmp_path / "junk", "junk")
    message = _assert_one_line_error(excinfo, "junk")
    assert "transforms.json" in message and "poses_bounds.npy" in message and "sparse" in message


def test_too_few_views(tmp_path: Path) -> None:
    cams = _cameras(1, shared=True)
    _write_images(tmp_path / "images", [c.name for c in cams])
    write_transforms_json(tmp_path / "transforms.json", cams)
    with pytest.raises(CaptureError) as excinfo:
        load_scene(tmp_path, "single")
    assert "at least 2" in _assert_one_line_error(excinfo, "single")


def test_instant_ngp_json_without_sizes(tmp_path: Path) -> None:
    """Blender-style instant-ngp json: camera_angle_x only, paths without extension, RGBA images."""
    cams = _cameras(2, shared=True)
    write_transforms_json(tmp_path / "transforms.json", cams, file_prefix="./train/", nerfstudio_world=False)
    data = json.loads((tmp_path / "transforms.json").read_text())
    angle = 0.8
    data = {
        "camera_angle_x": angle,
        "frames": [
            {"file_path": f["file_path"].removesuffix(".png"), "transform_matrix": f["transform_matrix"]}
            for f in data["frames"]
        ],
    }
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    (tmp_path / "train").mkdir()
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: alpha is dropped, not composited
    for cam in cams:
        Image.fromarray(rgba).save(tmp_path / "train" / cam.name)

    scene = load_scene(tmp_path / "transforms.json", "ngp")
    f = 0.5 * W / np.tan(0.5 * angle)
    for view, cam in zip(scene.views, cams, strict=True):
        assert view.image.shape == (H, W, 3)
        np.testing.assert_allclose(view.image[0, 0], [200 / 255, 0, 0], atol=1e-6)
        np.testing.assert_allclose(view.K, [[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], atol=1e-9)
        assert np.abs(view.cam_from_world[:3, :3] - cam.R).max() < 1e-6
