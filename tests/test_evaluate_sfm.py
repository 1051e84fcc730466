"""Tests for capture3d.tasks.sfm.evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest

from capture3d.tasks.cameras import PinholeCamera, write_transforms_json
from capture3d.tasks.sfm.evaluate import (
    cameras_from_reconstruction,
    evaluate_sfm,
    pose_errors,
    read_colmap_cameras,
    read_ground_truth,
    read_strecha_cameras,
    reconstruction_stats,
    relative_pose_auc,
    umeyama_similarity,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FOUNTAIN_GT = SHARED_DATA / "sfm" / "fountain_p11" / "gt_cameras"


# ----------------------------------------------------------------------------- helpers


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    Q, R = np.linalg.qr(rng.normal(size=(3, 3)))
    Q = Q @ np.diag(np.sign(np.diag(R)))
    if np.linalg.det(Q) < 0:
        Q[:, 0] *= -1
    return Q


def axis_angle(axis: np.ndarray, deg: float) -> np.ndarray:
    return np.asarray(pycolmap.Rotation3d(np.asarray(axis, float) / np.linalg.norm(axis) * np.radians(deg)).matrix())


def rotation_angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def look_at(center: np.ndarray, target: np.ndarray = np.zeros(3)) -> tuple[np.ndarray, np.ndarray]:
    """cam_from_world (R, t) of an OpenCV camera at ``center`` looking at ``target``."""
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(np.array([0.0, 0.0, 1.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ center


def ring_cameras(n: int = 8, seed: int = 0) -> dict[str, PinholeCamera]:
    rng = np.random.default_rng(seed)
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    cams = {}
    for i in range(n):
        a = 2 * np.pi * i / n
        C = np.array([6 * np.cos(a), 6 * np.sin(a), 1.0 + 0.5 * rng.normal()])
        R, t = look_at(C, 0.2 * rng.normal(size=3))
        cams[f"{i:04d}.jpg"] = PinholeCamera(f"{i:04d}.jpg", 640, 480, K, R, t)
    return cams


def transform_world(cams: dict[str, PinholeCamera], s: float, Q: np.ndarray, d: np.ndarray) -> dict[str, PinholeCamera]:
    """Same cameras in a world X' = s Q X + d (camera units scaled by s)."""
    out = {}
    for n, c in cams.items():
        R = c.R @ Q.T
        t = s * c.t - R @ d
        out[n] = PinholeCamera(n, c.width, c.height, c.K, R, t)
    return out


def build_reconstruction(
    pixel_offset: np.ndarray = np.zeros(2),
) -> tuple[pycolmap.Reconstruction, dict[str, PinholeCamera]]:
    """4 registered images + 1 unregistered one, 20 points seen by all registered images.

    Keypoints are the exact projections shifted by ``pixel_offset``.
    """
    rng = np.random.default_rng(1)
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 500.0, 640, 480)
    rec.add_camera_with_trivial_rig(cam)
    K = np.asarray(cam.calibration_matrix())
    X = rng.normal(size=(20, 3))
    truth = {}
    for i in range(4):
        R = axis_angle(rng.normal(size=3), 8.0)
        t = np.array([0.4 * i - 0.6, 0.1 * i, 6.0])
        xc = X @ R.T + t
        uv = xc @ K.T
        uv = uv[:, :2] / uv[:, 2:] + pixel_offset
        name = f"{i:04d}.jpg"
        img = pycolmap.Image(name=name, keypoints=uv, camera_id=1, image_id=i + 1)
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d(pycolmap.Rotation3d(R), t))
        truth[name] = PinholeCamera(name, 640, 480, K, R, t)
    for j in range(20):
        track = pycolmap.Track()
        for i in range(4):
            track.add_element(i + 1, j)
        rec.add_point3D(X[j], track)
    unreg = pycolmap.Image(name="unregistered.jpg", keypoints=np.zeros((0, 2)), camera_id=1, image_id=10)
    rec.add_image_with_trivial_frame(unreg)
    return rec, truth


def assert_same_cameras(a: dict[str, PinholeCamera], b: dict[str, PinholeCamera], atol: float = 1e-8) -> None:
    assert sorted(a) == sorted(b)
    for n in a:
        np.testing.assert_allclose(a[n].R, b[n].R, atol=atol)
        np.testing.assert_allclose(a[n].t, b[n].t, atol=atol)
        np.testing.assert_allclose(a[n].K, b[n].K, atol=atol)
        assert (a[n].width, a[n].height) == (b[n].width, b[n].height)


# ----------------------------------------------------------------------------- Umeyama


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_umeyama_recovers_similarity(noise: float) -> None:
    rng = np.random.default_rng(42)
    R_true = random_rotation(rng)
    s_true, t_true = 2.5, np.array([1.0, -3.0, 0.5])
    src = rng.normal(size=(50, 3)) * 3
    dst = s_true * src @ R_true.T + t_true + noise * rng.normal(size=(50, 3))
    s, R, t = umeyama_similarity(src, dst)
    tol = 1e-9 if noise == 0 else 0.02
    assert s == pytest.approx(s_true, abs=tol)
    assert rotation_angle_deg(R.T @ R_true) < (1e-6 if noise == 0 else 0.5)
    np.testing.assert_allclose(t, t_true, atol=tol * 5)
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_umeyama_without_scale_and_bad_input() -> None:
    rng = np.random.default_rng(3)
    R_true = random_rotation(rng)
    src = rng.normal(size=(10, 3))
    dst = src @ R_true.T + np.array([0.0, 2.0, 0.0])
    s, R, t = umeyama_similarity(src, dst, with_scale=False)
    assert s == 1.0
    np.testing.assert_allclose(R, R_true, atol=1e-9)
    np.testing.assert_allclose(t, [0.0, 2.0, 0.0], atol=1e-9)
    with pytest.raises(ValueError):
        umeyama_similarity(src, dst[:5])
    with pytest.raises(ValueError):
        umeyama_similarity(np.ones((4, 3)), dst[:4])


# ----------------------------------------------------------------------------- AUC


def test_relative_pose_auc_hand_computed() -> None:
    # sorted errors 1,2,3,10 with recall .25,.5,.75,1; trapezoids on [0,1,2,3,5]:
    # .125 + .375 + .625 + 1.5 = 2.625 -> / 5 = 0.525
    assert relative_pose_auc(np.array([3.0, 1.0, 10.0, 2.0]), 5.0) == pytest.approx(0.525)
    # one error of 2.5: (0.5 * 2.5 * 1) + 2.5 * 1 = 3.75 -> 0.75
    assert relative_pose_auc(np.array([2.5]), 5.0) == pytest.approx(0.75)
    assert relative_pose_auc(np.zeros(6), 5.0) == pytest.approx(1.0)
    assert relative_pose_auc(np.array([0.0, np.inf]), 5.0) == pytest.approx(0.5)
    assert relative_pose_auc(np.array([np.inf, np.nan]), 5.0) == 0.0
    assert relative_pose_auc(np.array([]), 5.0) == 0.0
    with pytest.raises(ValueError):
        relative_pose_auc(np.array([1.0]), 0.0)


# ----------------------------------------------------------------------------- pose errors


def similar_estimate() -> tuple[dict[str, PinholeCamera], dict[str, PinholeCamera]]:
    gt = ring_cameras(8)
    rng = np.random.default_rng(7)
    est = transform_world(gt, 0.37, random_rotation(rng), np.array([3.0, -1.0, 10.0]))
    return est, gt


def test_pose_errors_zero_for_similar_cameras() -> None:
    est, gt = similar_estimate()
    m = pose_errors(est, gt)
    assert m["rotation_error_deg_max"] < 1e-5
    assert m["position_error_max"] < 1e-8
    assert m["rel_rotation_error_deg_median"] < 1e-5
    assert m["rel_translation_error_deg_median"] < 1e-5
    assert m["auc_rel_pose_5deg"] == pytest.approx(1.0)
    assert m["num_gt_images"] == 8 and m["num_evaluated"] == 8


def test_pose_errors_one_degree_perturbation() -> None:
    est, gt = similar_estimate()
    name = "0003.jpg"
    c = est[name]
    # rotate the camera about its own centre by 1 degree
    R = axis_angle(np.array([0.3, -1.0, 0.2]), 1.0) @ c.R
    est[name] = PinholeCamera(name, c.width, c.height, c.K, R, -R @ c.center)
    m = pose_errors(est, gt)
    assert m["rotation_error_deg_max"] == pytest.approx(1.0, abs=1e-6)
    assert m["rotation_error_deg_median"] < 1e-5
    assert m["position_error_max"] < 1e-8
    assert m["auc_rel_pose_5deg"] < 1.0
    # 7 of the 28 pairs involve the perturbed camera, with relative rotation error 1 deg
    assert m["auc_rel_pose_5deg"] > 1.0 - 7 / 28


def test_missing_image_lowers_auc() -> None:
    est, gt = similar_estimate()
    del est["0005.jpg"]
    m = pose_errors(est, gt)
    assert m["num_evaluated"] == 7 and m["num_gt_images"] == 8
    assert m["rotation_error_deg_max"] < 1e-5
    assert m["auc_rel_pose_5deg"] == pytest.approx(21 / 28)  # 7 of 28 pairs failed


def test_pose_errors_needs_three_common_images() -> None:
    est, gt = similar_estimate()
    with pytest.raises(ValueError, match="at least 3"):
        pose_errors({n: est[n] for n in list(est)[:2]}, gt)


# ----------------------------------------------------------------------------- readers


@pytest.mark.skipif(not FOUNTAIN_GT.is_dir(), reason=f"real test data not found at {FOUNTAIN_GT}")
def test_read_strecha_fountain() -> None:
    cams = read_strecha_cameras(FOUNTAIN_GT, scale=0.25)
    assert len(cams) == 11
    assert min(cams) == "0000.jpg"
    c0 = cams["0000.jpg"]
    # 0000.jpg.camera: fx 2759.48, fy 2764.16, cx 1520.69, cy 1006.81, C (-7.28137, -7.57667, 0.204446)
    assert c0.K[0, 0] == pytest.approx(2759.48 * 0.25)
    assert c0.K[1, 1] == pytest.approx(2764.16 * 0.25)
    assert c0.K[0, 2] == pytest.approx(1520.69 * 0.25)
    assert c0.K[2, 2] == 1.0
    assert (c0.width, c0.height) == (768, 512)
    np.testing.assert_allclose(c0.center, [-7.28137, -7.57667, 0.204446], atol=1e-9)
    for c in cams.values():
        assert np.all(np.isfinite(c.center))
        np.testing.assert_allclose(c.R @ c.R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(c.R) == pytest.approx(1.0, abs=1e-12)
    # the snapped rotation stays within the file's 6-digit precision (row 0 of R in 0000's file)
    np.testing.assert_allclose(c0.R[:, 0], [0.450927, -0.0945642, -0.887537], atol=1e-5)
    centres = np.stack([c.center for c in cams.values()])
    assert np.ptp(centres, axis=0).max() > 1.0
    # convention check: the point nearest to all optical axes (the fountain) lies in front of
    # every camera and projects inside every 768x512 image
    A, b = np.zeros((3, 3)), np.zeros(3)
    for c in cams.values():
        P = np.eye(3) - np.outer(c.R[2], c.R[2])
        A += P
        b += P @ c.center
    X = np.linalg.solve(A, b)
    for c in cams.values():
        x = c.K @ (c.R @ X + c.t)
        assert x[2] > 1.0
        assert 0 < x[0] / x[2] < 768 and 0 < x[1] / x[2] < 512
    full = read_strecha_cameras(FOUNTAIN_GT)
    assert full["0000.jpg"].K[0, 0] == pytest.approx(2759.48)
    assert (full["0000.jpg"].width, full["0000.jpg"].height) == (3072, 2048)
    # auto-detected ground truth; the reader itself is scale-free for poses
    gt = read_ground_truth(FOUNTAIN_GT)
    assert sorted(gt) == sorted(cams)
    np.testing.assert_allclose(gt["0005.jpg"].R, cams["0005.jpg"].R)


def test_read_strecha_synthetic(tmp_path: Path) -> None:
    R_wc = axis_angle(np.array([1.0, 2.0, 3.0]), 30.0)  # camera axes -> world axes
    C = np.array([1.0, 2.0, 3.0])
    K = np.array([[1000.0, 0, 500], [0, 1000.0, 400], [0, 0, 1]])
    numbers = [*K.ravel(), 0, 0, 0, *R_wc.ravel(), *C, 1000, 800]
    (tmp_path / "a.png.camera").write_text(" ".join(str(float(v)) for v in numbers))
    cams = read_strecha_cameras(tmp_path, scale=0.5)
    c = cams["a.png"]
    np.testing.assert_allclose(c.R, R_wc.T)
    np.testing.assert_allclose(c.center, C)
    np.testing.assert_allclose(c.K, [[500, 0, 250], [0, 500, 200], [0, 0, 1]])
    assert (c.width, c.height) == (500, 400)
    # a world point in front of the camera projects as K R^T (X - C)
    X = C + R_wc @ np.array([0.1, -0.2, 4.0])
    x = c.K @ (c.R @ X + c.t)
    np.testing.assert_allclose(x[:2] / x[2], [250 + 500 * 0.1 / 4, 200 - 500 * 0.2 / 4])
    (tmp_path / "bad.camera").write_text("1 2 3")
    with pytest.raises(ValueError, match="26 numbers"):
        read_strecha_cameras(tmp_path)


@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_colmap_round_trip(tmp_path: Path, fmt: str) -> None:
    rec, truth = build_reconstruction()
    in_memory = cameras_from_reconstruction(rec)
    assert sorted(in_memory) == sorted(truth)  # unregistered image left out
    assert_same_cameras(in_memory, truth, atol=1e-9)
    if fmt == "bin":
        rec.write_binary(str(tmp_path))
        assert (tmp_path / "cameras.bin").is_file()
    else:
        rec.write_text(str(tmp_path))
        assert (tmp_path / "cameras.txt").is_file()
    assert_same_cameras(read_colmap_cameras(tmp_path), truth, atol=1e-9)
    assert_same_cameras(read_ground_truth(tmp_path), truth, atol=1e-9)
    assert_same_cameras(read_ground_truth(tmp_path, fmt="colmap"), truth, atol=1e-9)


def test_read_ground_truth_transforms_and_errors(tmp_path: Path) -> None:
    gt = ring_cameras(5)
    path = tmp_path / "transforms.json"
    write_transforms_json(path, list(gt.values()))
    read = read_ground_truth(path)
    assert_same_cameras(read, gt, atol=1e-9)
    assert_same_cameras(read_ground_truth(path, fmt="transforms"), gt, atol=1e-9)

    with pytest.raises(ValueError, match="does not exist"):
        read_ground_truth(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="cannot detect"):
        read_ground_truth(empty)
    other = tmp_path / "poses.txt"
    other.write_text("hello")
    with pytest.raises(ValueError, match="cannot detect"):
        read_ground_truth(other)
    with pytest.raises(ValueError, match="unknown ground-truth format"):
        read_ground_truth(path, fmt="nerf")
    with pytest.raises(ValueError, match="Strecha"):
        read_ground_truth(path, fmt="strecha")
    with pytest.raises(ValueError, match="not a COLMAP model"):
        read_ground_truth(empty, fmt="colmap")
    # messages are one line and name the path
    try:
        read_ground_truth(empty)
    except ValueError as exc:
        assert "\n" not in str(exc) and str(empty) in str(exc)


# ----------------------------------------------------------------------------- stats


def test_reconstruction_stats_small_model() -> None:
    rec, _ = build_reconstruction(pixel_offset=np.array([3.0, 4.0]))  # every residual is 5 px
    small, _ = build_reconstruction()
    for image_id in (3, 4):
        small.deregister_frame(image_id)
    stats = reconstruction_stats([small, rec], num_images=8)
    assert stats["num_models"] == 2
    assert stats["num_registered"] == 4
    assert stats["num_images"] == 8
    assert stats["registered_fraction"] == pytest.approx(0.5)
    assert stats["num_points3d"] == 20
    assert stats["mean_track_length"] == pytest.approx(4.0)
    assert stats["mean_reprojection_error_px"] == pytest.approx(5.0, abs=1e-6)

    empty = reconstruction_stats([], num_images=3)
    assert empty["num_models"] == 0 and empty["registered_fraction"] == 0.0 and empty["num_registered"] == 0


def test_evaluate_sfm_merges_pose_errors() -> None:
    rec, truth = build_reconstruction()
    rng = np.random.default_rng(11)
    gt = transform_world(truth, 3.0, random_rotation(rng), np.array([1.0, 2.0, 3.0]))
    m = evaluate_sfm([rec], num_images=5, gt=gt)
    assert m["registered_fraction"] == pytest.approx(0.8)
    assert m["auc_rel_pose_5deg"] == pytest.approx(1.0)
    assert m["rotation_error_deg_max"] < 1e-5
    assert m["position_error_max"] < 1e-6
    assert m["num_evaluated"] == 4
    no_gt = evaluate_sfm([rec], num_images=5, gt=None)
    assert "auc_rel_pose_5deg" not in no_gt and no_gt["num_registered"] == 4
