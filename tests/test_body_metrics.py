"""Body metrics (2D errors, MPJPE, Procrustes), overlays and mesh writing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from PIL import Image

from capture3d.tasks.body.keypoint_io import read_coco
from capture3d.tasks.body.mesh_io import write_mesh
from capture3d.tasks.body.metrics import (
    box_size,
    keypoint_errors_2d,
    mpjpe,
    pa_mpjpe,
    procrustes_align,
    similarity_transform,
)
from capture3d.tasks.body.overlay import FIT_COLOR, GT_COLOR, draw_overlay, write_png


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _sphere(nu: int = 180, nv: int = 75) -> tuple[np.ndarray, np.ndarray]:
    """A UV sphere of radius 1: (nu * nv, 3) vertices, (2 * nu * (nv - 1), 3) faces."""
    u = np.linspace(0, 2 * np.pi, nu, endpoint=False)
    v = np.linspace(0.02, np.pi - 0.02, nv)
    U, V = np.meshgrid(u, v)
    verts = np.stack([np.sin(V) * np.cos(U), np.cos(V), np.sin(V) * np.sin(U)], -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(nv - 1), np.arange(nu), indexing="ij")
    a = (i * nu + j).ravel()
    b = (i * nu + (j + 1) % nu).ravel()
    faces = np.concatenate([np.stack([a, b, a + nu], 1), np.stack([b, b + nu, a + nu], 1)])
    return verts, faces


def _project(verts: np.ndarray, f: float, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    return verts[:, :2] / verts[:, 2:] * f + [cx, cy], verts[:, 2]


# --------------------------------------------------------------------------- metrics


def test_box_size_and_2d_errors_exact() -> None:
    assert box_size((3.0, 4.0, 50.0, 100.0)) == 100.0
    assert box_size((0, 0, 80, 20)) == 80.0
    gt = np.zeros((5, 2))
    pred = np.array([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [500.0, 0.0], [0.0, 0.0]])
    visible = np.array([True, True, True, False, False])
    m = keypoint_errors_2d(pred, gt, visible, (0, 0, 50, 100))
    assert m["num_visible"] == 3
    assert m["mean_px"] == pytest.approx(16 / 3)
    assert m["median_px"] == pytest.approx(5.0)
    assert m["mean_norm"] == pytest.approx(16 / 300)
    assert m["pck_0.1"] == pytest.approx(2 / 3)  # 5 and 1 are within 10 px; 10 is not (strict, as mmpose)
    m2 = keypoint_errors_2d(pred, gt, visible, 20.0, pck_thresholds=(0.1, 0.5, 0.6))
    assert m2["pck_0.1"] == pytest.approx(1 / 3) and m2["pck_0.5"] == pytest.approx(2 / 3)
    assert m2["pck_0.6"] == pytest.approx(1.0)
    none = keypoint_errors_2d(pred, gt, np.zeros(5, bool), (0, 0, 1, 1))
    assert none["num_visible"] == 0 and np.isnan(none["mean_px"]) and np.isnan(none["pck_0.1"])


def test_mpjpe_exact_and_masked() -> None:
    gt = np.zeros((2, 4, 3))
    pred = gt.copy()
    pred[0] += [1.0, 2.0, 2.0]  # every joint 3 away
    pred[1, 0] = [0.0, 0.0, 4.0]  # one joint of four 4 away
    np.testing.assert_allclose(mpjpe(pred, gt), [3.0, 1.0])
    mask = np.array([[True, False, False, False], [True, True, False, False]])
    np.testing.assert_allclose(mpjpe(pred, gt, mask), [3.0, 2.0])
    assert np.isnan(mpjpe(pred, gt, np.zeros((2, 4), bool))).all()
    with pytest.raises(ValueError):
        mpjpe(pred, gt[:, :3])


def test_procrustes_recovers_a_random_similarity() -> None:
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(24, 3))
    R = _rotation(rng)
    s, t = 1.7, rng.normal(size=3)
    pred = (gt - t) @ R / s  # gt = s R pred + t
    s_est, R_est, t_est = similarity_transform(pred, gt)
    assert s_est == pytest.approx(s) and np.allclose(R_est, R) and np.allclose(t_est, t)
    np.testing.assert_allclose(procrustes_align(pred, gt), gt, atol=1e-9)
    noisy = pred + rng.normal(scale=0.01, size=pred.shape)
    batch_pred, batch_gt = np.stack([pred, noisy]), np.stack([gt, gt])
    pa = pa_mpjpe(batch_pred, batch_gt)
    assert pa[0] < 1e-9 and 0 < pa[1] < 0.05
    assert (pa <= mpjpe(batch_pred, batch_gt) + 1e-12).all()


def test_procrustes_excludes_reflections() -> None:
    rng = np.random.default_rng(1)
    pred = rng.normal(size=(30, 3)) * [3.0, 2.0, 1.0]
    gt = pred * [1.0, 1.0, -1.0]  # a mirror image: only a reflection would match it exactly
    s, R, _ = similarity_transform(pred, gt)
    assert np.linalg.det(R) == pytest.approx(1.0)
    assert s > 0
    err = pa_mpjpe(pred[None], gt[None])[0]
    assert err > 0.1  # a proper rotation cannot undo the mirror
    # the unconstrained orthogonal Procrustes solution would be the reflection itself
    U, _, Vt = np.linalg.svd((gt - gt.mean(0)).T @ (pred - pred.mean(0)))
    assert np.linalg.det(U @ Vt) == pytest.approx(-1.0)


# --------------------------------------------------------------------------- overlay


def test_overlay_changes_pixels_only_near_the_mesh() -> None:
    h, w = 120, 160
    image = np.full((h, w, 3), 30, np.uint8)
    # a square (two triangles) facing the camera, covering x 40..80, y 30..70 at depth 2
    xy = np.array([[40.0, 30.0], [80.0, 30.0], [80.0, 70.0], [40.0, 70.0]])
    depth = np.full(4, 2.0)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    out = draw_overlay(image, mesh_xy=xy, mesh_depth=depth, faces=faces)
    assert out.shape == image.shape and out.dtype == np.uint8
    changed = (out != image).any(axis=2)
    assert changed[32:68, 42:78].all()
    near = np.zeros_like(changed)
    near[28:73, 38:83] = True
    assert not changed[~near].any()
    assert np.array_equal(image, np.full((h, w, 3), 30, np.uint8))  # input untouched

    # a face with a vertex behind the camera is skipped: vertex 1 is only in face (0, 1, 2)
    behind = draw_overlay(image, mesh_xy=xy, mesh_depth=np.array([2.0, -1.0, 2.0, 2.0]), faces=faces)
    b_changed = (behind != image).any(axis=2)
    assert b_changed[65, 45]  # inside face (0, 2, 3)
    assert not b_changed[35, 75]  # inside face (0, 1, 2) only


def test_overlay_painter_order_is_independent_of_face_order() -> None:
    verts, faces = _sphere(40, 20)
    verts = verts * 0.8 + [0.0, 0.0, 3.0]
    xy, z = _project(verts, 100.0, 80.0, 60.0)
    image = np.zeros((120, 160, 3), np.uint8)
    a = draw_overlay(image, mesh_xy=xy, mesh_depth=z, faces=faces, mesh_alpha=1.0)
    b = draw_overlay(image, mesh_xy=xy, mesh_depth=z, faces=faces[::-1], mesh_alpha=1.0)
    # sorting by depth draws the front faces last either way (ties may differ on a few edge pixels)
    assert (a != b).any(axis=2).mean() < 0.01
    centre = a[55:65, 75:85].astype(float).mean(axis=(0, 1))
    rim = a[60, 80 - 24].astype(float)
    assert centre.sum() > rim.sum()  # faces seen head-on are shaded brighter than grazing ones


def test_overlay_skeletons_draw_confident_points_only() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    names = ("left_shoulder", "left_elbow", "left_wrist")
    xy = np.array([[20.0, 20.0], [50.0, 20.0], [80.0, 80.0]])
    out = draw_overlay(image, keypoints=[(names, xy, np.array([1.0, 1.0, 0.05]), GT_COLOR)])
    assert tuple(out[20, 35]) == GT_COLOR  # on the shoulder-elbow edge
    assert tuple(out[20, 20]) == GT_COLOR
    assert not out[80, 80].any() and not out[50, 65].any()  # the unconfident wrist and its edge
    both = draw_overlay(out, keypoints=[(names, xy + [0, 30], np.ones(3), FIT_COLOR)])
    assert tuple(both[50, 35]) == FIT_COLOR and tuple(both[20, 35]) == GT_COLOR


def test_overlay_speed_on_a_13k_vertex_mesh() -> None:
    verts, faces = _sphere()  # 13,500 vertices, 26,640 faces
    assert len(verts) > 13000 and len(faces) > 26000
    xy, z = _project(verts * 0.8 + [0.0, 0.0, 3.0], 500.0, 320.0, 240.0)
    image = np.zeros((480, 640, 3), np.uint8)
    t0 = time.perf_counter()
    out = draw_overlay(image, mesh_xy=xy, mesh_depth=z, faces=faces)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"overlay took {elapsed:.2f} s"
    assert (out != 0).any(axis=2).sum() > 0.2 * 480 * 640 * 0.5


def test_overlay_real_coco_image_and_write_png(tmp_path: Path) -> None:
    coco = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "body" / "coco"
    if not (coco / "test_coco.json").is_file():
        pytest.skip("../shared/data/body/coco is absent: real-image overlay skipped")
    people = [p for p in read_coco(coco / "test_coco.json") if p.image == "000000000785.jpg"]
    image = np.asarray(Image.open(coco / "000000000785.jpg").convert("RGB"))
    sets = [(p.names, p.xy, p.conf, GT_COLOR) for p in people]
    out = draw_overlay(image, keypoints=sets)
    for x, y in people[0].xy[people[0].visible]:
        assert tuple(out[int(round(y)), int(round(x))]) == GT_COLOR
    write_png(tmp_path / "overlay.png", out)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "overlay.png")), out)
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]


# --------------------------------------------------------------------------- meshes


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_write_mesh_round_trips_through_open3d(tmp_path: Path, suffix: str) -> None:
    verts, faces = _sphere(12, 6)
    path = tmp_path / f"body{suffix}"
    write_mesh(path, verts, faces)
    mesh = o3d.io.read_triangle_mesh(str(path))
    # Open3D's OBJ reader may renumber vertices: compare the triangles' corner positions
    corners = np.asarray(mesh.vertices)[np.asarray(mesh.triangles)]  # (F, 3, 3)
    np.testing.assert_allclose(corners, verts[faces], atol=1e-6)
    if suffix == ".ply":
        np.testing.assert_allclose(np.asarray(mesh.vertices), verts, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(mesh.triangles), faces)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    if suffix == ".ply":
        assert b"binary_little_endian" in path.read_bytes()[:60]


def test_write_mesh_rejects_bad_input(tmp_path: Path) -> None:
    verts, faces = _sphere(12, 6)
    with pytest.raises(ValueError, match="suffix"):
        write_mesh(tmp_path / "a.stl", verts, faces)
    with pytest.raises(ValueError, match="outside"):
        write_mesh(tmp_path / "a.ply", verts, faces + len(verts))
    with pytest.raises(ValueError):
        write_mesh(tmp_path / "a.ply", verts[:, :2], faces)
    assert not list(tmp_path.iterdir())
