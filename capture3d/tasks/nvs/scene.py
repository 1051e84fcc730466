"""The posed-image scene that novel-view synthesis fits: pinhole views, images and sparse points.

Inputs: nothing on its own; the loaders in :mod:`capture3d.tasks.nvs.data` build it from COLMAP
models, nerfstudio ``transforms.json`` or LLFF ``poses_bounds.npy``. Outputs: :class:`NvsScene`
(numpy, OpenCV/COLMAP camera convention: ``x_cam = R @ X + t``, x right, y down, z forward) and
the LLFF hold-out split (:func:`holdout_split`: every 8th view, starting with the first, is held
out for evaluation).

Memory: a loaded view holds no pixels, only an :class:`~capture3d.tasks.nvs.images.ImageFile`
decoded on demand into uint8 through the scene's byte-capped cache; training code takes the
uint8 pixels (:meth:`PosedView.pixel_array`, :meth:`PosedView.colors_at`) and converts to float
per batch. Views built in memory (tests, synthetic data) may hold a uint8 or float32 array.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from capture3d.tasks.nvs.images import ImageCache, ImageFile, to_float

logger = logging.getLogger(__name__)

HOLDOUT_EVERY = 8


@dataclass(frozen=True)
class PosedView:
    """One undistorted photo and its pinhole camera.

    pixels: an :class:`ImageFile` (decoded lazily to (H, W, 3) uint8), or an in-memory (H, W, 3)
    array, uint8 or float32 in [0, 1]; K: (3, 3) pinhole intrinsics for this image size (pixel
    centres at integer + 0.5, i.e. COLMAP's convention); cam_from_world: (4, 4) float64.
    """

    name: str
    pixels: np.ndarray | ImageFile
    K: np.ndarray
    cam_from_world: np.ndarray

    @property
    def width(self) -> int:
        return self.pixels.width if isinstance(self.pixels, ImageFile) else int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return self.pixels.height if isinstance(self.pixels, ImageFile) else int(self.pixels.shape[0])

    def pixel_array(self) -> np.ndarray:
        """(H, W, 3) pixels as stored: uint8 for loaded photos (read-only, cached), else the array given."""
        return self.pixels.pixels() if isinstance(self.pixels, ImageFile) else self.pixels

    def image_u8(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB (float arrays rounded to the nearest 1/255)."""
        arr = self.pixel_array()
        if arr.dtype == np.uint8:
            return arr
        return (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)

    @property
    def image(self) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1], converted now (uint8 / 255); a new array for loaded photos."""
        return to_float(self.pixel_array())

    def colors_at(self, flat_index: np.ndarray) -> np.ndarray:
        """(M, 3) float32 colours in [0, 1] of the pixels ``flat_index`` (M,) (row-major y * W + x)."""
        arr = self.pixel_array()
        return to_float(arr.reshape(-1, 3)[flat_index])

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
    image_cache: the cache the views' photos are decoded through (None: views held in memory).
    """

    views: tuple[PosedView, ...]
    points: np.ndarray
    colors: np.ndarray
    depth_bounds: tuple[float, float] | None
    source: str
    image_cache: ImageCache | None = None

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
