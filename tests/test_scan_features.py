"""Per-point descriptors: FPFH shape and rotation invariance, and the feature registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from capture3d.tasks.registration.features import (
    BUILTIN_FEATURES,
    feature_names,
    feature_registry,
    fpfh,
    get_feature,
    register_feature,
)
from capture3d.tasks.registration.preprocess import preprocess
from capture3d.tasks.registration.scan_io import quaternion_to_rotation, read_scan


def _nearest_descriptor_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows i of ``b`` (N, D) whose nearest row of ``a`` (N, D) is row i."""
    tree = o3d.geometry.KDTreeFlann(a.T.astype(np.float64))
    return float(np.mean([tree.search_knn_vector_xd(b[i].astype(np.float64), 1)[1][0] == i for i in range(len(b))]))


def _random_cloud(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(n, 3))
    pts = v / np.linalg.norm(v, axis=1, keepdims=True)
    return pts, pts.copy()


def test_fpfh_shape_and_dtype() -> None:
    pts, normals = _random_cloud()
    desc = fpfh(pts, normals, voxel=0.05)
    assert desc.shape == (400, 33)
    assert desc.dtype == np.float32
    assert np.isfinite(desc).all() and desc.any()
    assert get_feature("fpfh")(pts, normals, 0.05).shape == (400, 33)


def test_fpfh_bad_inputs() -> None:
    pts, normals = _random_cloud()
    with pytest.raises(ValueError):
        fpfh(pts, normals[:10], voxel=0.05)
    with pytest.raises(ValueError):
        fpfh(pts, normals, voxel=0.0)


def test_fpfh_rotation_invariance_on_bunny(shared_data: Path) -> None:
    scan = read_scan(shared_data / "registration" / "bunny" / "bun000.ply")
    pre = preprocess(scan, voxel=0.003, orient="tangent_plane")
    pts, normals = np.asarray(pre.pcd.points), np.asarray(pre.pcd.normals)
    R = quaternion_to_rotation(np.array([0.3, -0.5, 0.2, 0.7]))
    t = np.array([0.1, -0.2, 0.3])
    original = fpfh(pts, normals, 0.003)
    moved = fpfh(pts @ R.T + t, normals @ R.T, 0.003)
    assert _nearest_descriptor_accuracy(original, moved) > 0.8
    # and the descriptors carry information: a shuffled assignment matches almost nothing
    perm = np.random.default_rng(0).permutation(len(pts))
    assert _nearest_descriptor_accuracy(original, moved[perm]) < 0.05


def test_registry_is_read_only_and_copies_are_independent() -> None:
    assert feature_names() == ["fpfh"]
    with pytest.raises(TypeError):
        BUILTIN_FEATURES["x"] = fpfh  # type: ignore[index]
    registry = feature_registry()

    def ones(points: np.ndarray, normals: np.ndarray, voxel: float) -> np.ndarray:
        return np.ones((len(points), 4), dtype=np.float32)

    register_feature("ones", ones, registry)
    assert feature_names(registry) == ["fpfh", "ones"]
    assert get_feature("ones", registry) is ones
    assert feature_names() == ["fpfh"]  # the built-ins are untouched
    assert "ones" not in feature_registry()


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="known: fpfh"):
        get_feature("fcgf")
    registry = feature_registry()
    with pytest.raises(ValueError, match="already registered"):
        register_feature("fpfh", fpfh, registry)
    register_feature("fpfh", fpfh, registry, replace=True)
    with pytest.raises(TypeError, match="not callable"):
        register_feature("bad", 3, registry)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        register_feature(" ", fpfh, registry)
    with pytest.raises(ValueError, match="read-only"):
        register_feature("x", fpfh)
