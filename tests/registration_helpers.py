"""Helpers shared by the registration tests: FPFH clouds, random rigid motions."""

from __future__ import annotations

import numpy as np
import open3d as o3d


def preprocess(points: np.ndarray, voxel: float) -> tuple[o3d.geometry.PointCloud, np.ndarray]:
    """Voxel-downsampled cloud with normals and its FPFH features (N, 33) float32."""
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points)).voxel_down_sample(voxel)
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * voxel, max_nn=30))
    fpfh = o3d.pipelines.registration.compute_fpfh_feature(
        cloud, o3d.geometry.KDTreeSearchParamHybrid(radius=5 * voxel, max_nn=100)
    )
    return cloud, np.asarray(fpfh.data).T.astype(np.float32)


def random_rigid(rng: np.random.Generator, max_angle: float, max_shift: float) -> np.ndarray:
    """A (4, 4) rigid transform: rotation up to ``max_angle`` rad about a random axis, shift per axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = rng.uniform(0.0, max_angle)
    transform = np.eye(4)
    transform[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    transform[:3, 3] = rng.uniform(-max_shift, max_shift, 3)
    return transform


def transform_points(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    return points @ transform[:3, :3].T + transform[:3, 3]
