"""Per-point descriptors for scan registration, behind one narrow interface.

Inputs: points (N, 3) float64, their unit normals (N, 3) and the voxel size the cloud was
downsampled with. Output: descriptors (N, D) float32, row i describing point i.

Every descriptor is a :data:`FeatureFn` ``(points, normals, voxel) -> (N, D) float32``, looked up
by name. The built-ins (:data:`BUILTIN_FEATURES`, read-only) hold ``"fpfh"``; there is no
module-level mutable registry. To add a descriptor, copy the built-ins with
:func:`feature_registry`, add to the copy with :func:`register_feature`, and pass the copy to
:func:`get_feature` / :func:`feature_names`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from types import MappingProxyType

import numpy as np
import open3d as o3d

logger = logging.getLogger(__name__)

# (points (N, 3), normals (N, 3), voxel) -> descriptors (N, D) float32
FeatureFn = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def _check_inputs(points: np.ndarray, normals: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(points, dtype=np.float64)
    normals = np.asarray(normals, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or normals.shape != points.shape:
        raise ValueError(f"features need points and normals of shape (N, 3), got {points.shape} and {normals.shape}")
    if voxel <= 0.0:
        raise ValueError(f"features need a positive voxel size, got {voxel}")
    return points, normals


def fpfh(
    points: np.ndarray, normals: np.ndarray, voxel: float, radius_factor: float = 5.0, max_nn: int = 100
) -> np.ndarray:
    """Fast Point Feature Histograms (Rusu et al. 2009) via Open3D, (N, 33) float32.

    Neighbourhoods: at most ``max_nn`` points within ``radius_factor * voxel``.
    """
    points, normals = _check_inputs(points, normals, voxel)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    pcd.normals = o3d.utility.Vector3dVector(normals)
    feature = o3d.pipelines.registration.compute_fpfh_feature(
        pcd, o3d.geometry.KDTreeSearchParamHybrid(radius=radius_factor * voxel, max_nn=max_nn)
    )
    return np.ascontiguousarray(np.asarray(feature.data).T, dtype=np.float32)  # (33, N) -> (N, 33)


BUILTIN_FEATURES: Mapping[str, FeatureFn] = MappingProxyType({"fpfh": fpfh})


def feature_registry() -> dict[str, FeatureFn]:
    """A fresh, mutable copy of the built-in descriptors."""
    return dict(BUILTIN_FEATURES)


def feature_names(registry: Mapping[str, FeatureFn] | None = None) -> list[str]:
    """Sorted names in ``registry`` (default: the built-ins)."""
    return sorted(BUILTIN_FEATURES if registry is None else registry)


def get_feature(name: str, registry: Mapping[str, FeatureFn] | None = None) -> FeatureFn:
    """The descriptor called ``name`` in ``registry`` (default: the built-ins); ValueError listing the known ones."""
    table = BUILTIN_FEATURES if registry is None else registry
    if name not in table:
        raise ValueError(f"unknown feature {name!r} (known: {', '.join(feature_names(table)) or 'none'})")
    return table[name]


def register_feature(
    name: str, fn: FeatureFn, registry: MutableMapping[str, FeatureFn] | None = None, replace: bool = False
) -> None:
    """Add ``fn`` as ``name`` to ``registry`` (e.g. one from :func:`feature_registry`).

    The built-ins are read-only, so ``registry`` must be given; ValueError when it is not, when
    ``name`` is empty or already taken (unless ``replace``); TypeError when ``fn`` is not callable.
    """
    if registry is None:
        raise ValueError(
            f"cannot register feature {name!r}: the built-in registry is read-only; pass registry=feature_registry()"
        )
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"feature name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"feature {name!r}: {fn!r} is not callable")
    if name in registry and not replace:
        raise ValueError(f"feature {name!r} is already registered (pass replace=True to override it)")
    registry[name] = fn
    logger.debug("registered feature %s", name)
