"""Scan preprocessing: automatic voxel size, outlier removal, normal orientation, too-small scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from capture3d.tasks.registration.preprocess import auto_voxel_size, preprocess
from capture3d.tasks.registration.scan_io import Scan, read_scans
from capture3d.tasks.synthesis.scans import render_scans


def _sphere(n: int, center: tuple[float, float, float], radius: float = 1.0, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return radius * v / np.linalg.norm(v, axis=1, keepdims=True) + np.asarray(center)


def _plane(n: int, seed: int = 0) -> np.ndarray:
    xy = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 2))
    return np.column_stack([xy, 3.0 + 0.001 * np.random.default_rng(seed + 1).normal(size=n)])


def test_auto_voxel_bunny(shared_data: Path) -> None:
    voxel = auto_voxel_size(read_scans(shared_data / "registration" / "bunny"))
    assert 0.0015 <= voxel <= 0.003
    assert float(f"{voxel:.1e}") == voxel  # two significant digits


def test_auto_voxel_3dmatch(shared_data: Path) -> None:
    voxel = auto_voxel_size(read_scans(shared_data / "registration" / "3dmatch_pair"))
    assert 0.02 <= voxel <= 0.05


def test_auto_voxel_hits_target_and_scales() -> None:
    scan = Scan("plane", _plane(60000), None)
    voxel = auto_voxel_size([scan], target_points=4000)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(scan.points))
    assert 3000 <= len(pcd.voxel_down_sample(voxel).points) <= 5000
    scaled = Scan("big", scan.points * 10.0, None)
    assert auto_voxel_size([scaled], target_points=4000) == pytest.approx(10 * voxel, rel=0.06)
    with pytest.raises(ValueError):
        auto_voxel_size([])


def test_outlier_removal_drops_injected_far_points() -> None:
    rng = np.random.default_rng(0)
    surface = _plane(20000)
    outliers = rng.uniform(-1.0, 1.0, size=(30, 3)) + np.array([0.0, 0.0, 6.0])  # scattered 3 m off the plane
    outliers *= np.array([1.0, 1.0, rng.uniform(0.5, 1.5)])
    scan = Scan("noisy", np.vstack([surface, outliers]), None)
    pre = preprocess(scan, voxel=0.05)
    pts = np.asarray(pre.pcd.points)
    assert np.all(np.abs(pts[:, 2] - 3.0) < 0.05)  # every far point is gone
    assert pre.num_removed_outliers >= 30
    assert pre.num_input_points == 20030


def test_normals_on_sphere_consistent_tangent_plane() -> None:
    for center in ((0.0, 0.0, 0.0), (5.0, -2.0, 1.0)):
        scan = Scan("sphere", _sphere(20000, center), None)
        pre = preprocess(scan, voxel=0.05, orient="tangent_plane")
        pts, normals = np.asarray(pre.pcd.points), np.asarray(pre.pcd.normals)
        radial = (pts - np.asarray(center)) / np.linalg.norm(pts - np.asarray(center), axis=1, keepdims=True)
        cos = np.einsum("ij,ij->i", normals, radial)
        assert np.allclose(np.linalg.norm(normals, axis=1), 1.0)
        assert np.all(cos > 0.8), f"{np.sum(cos <= 0.8)} normals not outward for centre {center}"


def test_auto_orientation_on_sphere_at_origin_is_consistent() -> None:
    pre = preprocess(Scan("sphere", _sphere(20000, (0.0, 0.0, 0.0)), None), voxel=0.05)
    pts, normals = np.asarray(pre.pcd.points), np.asarray(pre.pcd.normals)
    cos = np.einsum("ij,ij->i", normals, pts / np.linalg.norm(pts, axis=1, keepdims=True))
    assert np.all(cos > 0.8) or np.all(cos < -0.8)


def test_auto_orientation_faces_the_sensor_on_range_scans() -> None:
    scans, _ = render_scans(num_scans=2, seed=0)
    pre = preprocess(scans[0], voxel=0.05)  # origin = sensor, outside the cloud's box
    pts, normals = np.asarray(pre.pcd.points), np.asarray(pre.pcd.normals)
    assert np.all(np.einsum("ij,ij->i", normals, -pts) >= 0.0)
    assert pre.pcd.has_colors()
    assert len(pre.pcd.colors) == len(pre.pcd.points)


def test_too_few_points_raises_naming_the_scan() -> None:
    scan = Scan("tiny_scan", _sphere(500, (0.0, 0.0, 0.0)), None)
    with pytest.raises(ValueError, match="tiny_scan"):
        preprocess(scan, voxel=1.0)
    with pytest.raises(ValueError, match="tiny_scan"):
        preprocess(scan, voxel=0.0)
