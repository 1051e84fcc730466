"""The posed-image scene that novel-view synthesis fits: pinhole views, images and sparse points.

Inputs: nothing on its own; the loaders in :mod:`capture3d.tasks.nvs.data` build it from COLMAP
models, nerfstudio ``transforms.json`` or LLFF ``poses_bounds.npy``. Outputs: :class:`NvsScene`
(numpy, OpenCV/COLMAP camera convention: ``x_cam = R @ X + t``, x right, y down, z forward) and
the LLFF hold-out split (:func:`holdout_split`: every 8th view, starting with the first, is held
out for evaluation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

HOLDOUT_EVERY = 8


@dataclass(frozen=True)
class PosedView:
    """One undistorted photo and its pinhole camera.

    image: (H, W, 3) float32 in [0, 1]; K: (3, 3) pinhole intrinsics for this image size (pixel
    centres at integer + 0.5, i.e. COLMAP's convention); cam_from_world: (4, 4) float64.
    """

    name: str
    image: np.ndarray
    K: np.ndarray
    cam_from_world: np.ndarray

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates, (3,)."""
        R, t = self.cam_from_world[:3, :3], self.cam_from_world[:3, 3]
        return -R.T @ t


@dataclass(frozen=True)
class NvsScene:
    """Views sorted by name, plus the sparse points that initialise the Gaussians.

    points: (P, 3) float32 world coordinates (P may be 0); colors: (P, 3) float32 in [0, 1];
    depth_bounds: (near, far) over all views when the source records them (LLFF), else None.
    """

    views: tuple[PosedView, ...]
    points: np.ndarray
    colors: np.ndarray
    depth_bounds: tuple[float, float] | None
    source: str

    def subset(self, indices: list[int] | np.ndarray) -> tuple[PosedView, ...]:
        return tuple(self.views[int(i)] for i in indices)


def holdout_split(num_views: int, every: int = HOLDOUT_EVERY) -> tuple[np.ndarray, np.ndarray]:
    """LLFF convention: views 0, every, 2*every, ... are test views. Returns (train, test) indices."""
    if every < 2:
        raise ValueError(f"hold-out interval must be at least 2, got {every}")
    idx = np.arange(num_views)
    test = idx[idx % every == 0]
    train = idx[idx % every != 0]
    return train, test


def scene_extent(views: tuple[PosedView, ...] | list[PosedView]) -> float:
    """Radius of the camera centres around their mean, times 1.1 (3DGS's ``cameras_extent``)."""
    centers = np.stack([v.center for v in views])  # (N, 3)
    radius = float(np.linalg.norm(centers - centers.mean(0), axis=1).max())
    return 1.1 * max(radius, 1e-6)
