"""Synthetic range scans: determinism, ground-truth poses that place every scan on the scene, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from capture3d.tasks.registration.scan_io import read_gt_poses, read_scans
from capture3d.tasks.synthesis.scans import (
    render_scans,
    scene_mesh,
    write_scan_capture,
)


@pytest.fixture(scope="module")
def capture() -> tuple[list, dict]:
    return render_scans(num_scans=8, seed=0)


def _to_world(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    return points @ T[:3, :3].T + T[:3, 3]


def _overlap(moving: np.ndarray, fixed: np.ndarray, tol: float = 0.01, search: float = 0.05) -> float:
    """Fraction of ``moving`` points within ``tol`` of ``fixed``'s surface: nearest ``fixed`` point closer
    than ``search`` (the scans sample ~2 cm apart) and point-to-plane distance below ``tol``."""
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(fixed))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=0.1, max_nn=20))
    tree, normals = o3d.geometry.KDTreeFlann(pcd), np.asarray(pcd.normals)
    hits = 0
    for p in moving:
        _, idx, d2 = tree.search_knn_vector_3d(p, 1)
        q = idx[0]
        hits += d2[0] < search**2 and abs(normals[q] @ (p - fixed[q])) < tol
    return hits / len(moving)


def test_deterministic_and_sized(capture: tuple[list, dict]) -> None:
    scans, poses = capture
    again, poses_again = render_scans(num_scans=8, seed=0)
    assert [s.name for s in scans] == [f"scan_{i:03d}" for i in range(8)] == list(poses)
    for a, b in zip(scans, again):
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.colors, b.colors)
        np.testing.assert_array_equal(poses[a.name], poses_again[a.name])
    other, _ = render_scans(num_scans=2, seed=1)
    assert not np.array_equal(other[0].points[:100], scans[0].points[:100])
    for s in scans:
        assert 8000 <= len(s.points) <= 20000
        assert s.colors is not None and s.colors.min() >= 0.0 and s.colors.max() <= 1.0
        assert np.all(s.points[:, 2] > 0.0)  # sensor frame: everything in front of the sensor
        assert np.linalg.norm(s.points, axis=1).max() <= 7.0 + 0.02


def test_noise_free_scans_lie_on_the_mesh(capture: tuple[list, dict]) -> None:
    _, poses = capture
    clean, clean_poses = render_scans(num_scans=8, seed=0, noise_sigma=0.0)
    mesh = scene_mesh(0)
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    for scan in clean:
        np.testing.assert_array_equal(clean_poses[scan.name], poses[scan.name])
        world = _to_world(scan.points, clean_poses[scan.name]).astype(np.float32)
        dist = rc.compute_distance(o3d.core.Tensor(world)).numpy()
        assert np.percentile(dist, 99) < 1e-3, scan.name


def test_gt_poses_make_consecutive_scans_overlap(capture: tuple[list, dict]) -> None:
    scans, poses = capture
    world = [_to_world(s.points[::2], poses[s.name]) for s in scans]
    overlaps = [_overlap(world[i], world[(i + 1) % len(world)]) for i in range(len(world))]
    assert min(overlaps) > 0.3, overlaps
    # a 3 cm error in a pose is visible: the overlap collapses
    shifted = world[1] + np.array([0.03, 0.03, 0.03])
    assert _overlap(world[0], shifted) < 0.5 * overlaps[0]


def test_written_capture_round_trips(tmp_path: Path, capture: tuple[list, dict]) -> None:
    scans, poses = capture
    write_scan_capture(scans[:3], poses, tmp_path / "cap")
    assert sorted(p.name for p in (tmp_path / "cap" / "scans").iterdir()) == [f"scan_{i:03d}.ply" for i in range(3)]
    back = read_scans(tmp_path / "cap")  # gt/ is skipped
    assert [s.name for s in back] == [s.name for s in scans[:3]]
    for a, b in zip(scans, back):
        np.testing.assert_allclose(b.points, a.points, atol=1e-6)
        np.testing.assert_allclose(b.colors, a.colors, atol=1 / 255 + 1e-6)
    back_poses = read_gt_poses(tmp_path / "cap" / "gt" / "poses.json", [s.name for s in back])
    for name, T in back_poses.items():
        np.testing.assert_allclose(T, poses[name], atol=1e-12)
    with pytest.raises(ValueError, match="no pose"):
        write_scan_capture(scans[:2], {}, tmp_path / "bad")
