"""Free-space (visibility) consistency of a rigid alignment between two range scans.

Inputs: a scan's points (N, 3) in its own frame with its sensor origin (3,), from which
:func:`range_image` builds a spherical range image (the depth of the nearest surface the sensor
saw along each ray direction); probe points (M, 3) of another scan already moved into that frame.
Outputs: :class:`VisibilityScore` counts of how the probes sit against what the sensor saw, and
:func:`pair_visibility`, the score of a candidate ``target_from_source`` in both directions.

The idea (the free-space test of range-image registration and of KinectFusion-style fusion): a
range sensor that measured a surface at depth d along a ray also observed the space in front of
it, along that ray, as empty. When scan A is aligned to scan B correctly, A's surfaces may lie on
B's surfaces (agreement) or behind them (occluded, B could not see there), but never in the space
B saw through. A wrong alignment that still matches surfaces well (repeated structure: a ring
wall, a corridor, a facade) almost always puts some of A's surfaces into B's free space.

Each probe falls in one of four classes against a range image:

* ``unobserved``: its direction has no measurement (outside the field of view, no return);
* ``free``: it lies in front of the nearest surface seen around its ray by more than ``tolerance``
  (the neighbourhood minimum over 3 x 3 bins, so silhouette edges and grazing surfaces do not
  count against an alignment);
* ``agree``: within ``tolerance`` of the depth range measured in its bin;
* ``occluded``: behind it.

``free_fraction = free / (free + agree + occluded)``: near 0 for a correct alignment (noise,
edges and moving objects only), tens of percent for a wrong one. Probes closer to the sensor
than ``min_range`` are ignored (a sensor's blind zone). Everything is deterministic numpy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import open3d as o3d

logger = logging.getLogger(__name__)

_MAX_CELLS = 4_000_000  # cap on the range image's size (bins are widened above it)
_BIN_SPACINGS = 2.0  # bin width = this many times the median angular spacing of the scan's rays


@dataclass(frozen=True)
class RangeImage:
    """The nearest and farthest depth a sensor measured per direction bin (equirectangular)."""

    origin: np.ndarray  # (3,) the sensor's position in the scan frame
    bin_rad: float  # angular bin width (radians)
    near: np.ndarray  # (H, W) float64 nearest depth per bin, inf where nothing was measured
    far: np.ndarray  # (H, W) float64 farthest depth per bin, -inf where nothing was measured
    near_around: np.ndarray  # (H, W) float64 minimum of ``near`` over the 3 x 3 neighbourhood

    @property
    def num_observed(self) -> int:
        return int(np.isfinite(self.near).sum())


@dataclass(frozen=True)
class VisibilityScore:
    """How probe points sit against a range image (counts of points)."""

    free: int  # in space the sensor saw as empty: counts against the alignment
    agree: int  # on a measured surface: counts for it
    occluded: int  # behind a measured surface: no evidence
    unobserved: int  # where the sensor measured nothing: no evidence

    @property
    def observed(self) -> int:
        return self.free + self.agree + self.occluded

    @property
    def free_fraction(self) -> float:
        return self.free / self.observed if self.observed else 0.0

    @property
    def agree_fraction(self) -> float:
        return self.agree / self.observed if self.observed else 0.0

    def __add__(self, other: VisibilityScore) -> VisibilityScore:
        return VisibilityScore(
            self.free + other.free,
            self.agree + other.agree,
            self.occluded + other.occluded,
            self.unobserved + other.unobserved,
        )


def _directions(points: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(elevation (N,), azimuth (N,), depth (N,)) of points (N, 3) seen from ``origin`` (3,)."""
    rel = points - origin  # (N, 3)
    depth = np.linalg.norm(rel, axis=1)  # (N,)
    safe = np.maximum(depth, 1e-12)
    elevation = np.arcsin(np.clip(rel[:, 1] / safe, -1.0, 1.0))  # sensor y: down (OpenCV) or any axis
    azimuth = np.arctan2(rel[:, 0], rel[:, 2])
    return elevation, azimuth, depth


def angular_spacing(points: np.ndarray, origin: np.ndarray) -> float:
    """Median angle (radians) between a ray of the scan and its nearest neighbouring ray."""
    rel = points - origin
    depth = np.linalg.norm(rel, axis=1)
    keep = depth > 1e-9
    unit = rel[keep] / depth[keep, None]
    if len(unit) < 2:
        raise ValueError("a range image needs at least two points away from the sensor")
    unique = np.unique(np.round(unit, 9), axis=0)
    if len(unique) < 2:
        raise ValueError("every point of the scan lies on one ray from the sensor")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(unique))
    spacing = np.asarray(cloud.compute_nearest_neighbor_distance())
    return float(np.median(spacing))


def range_image(points: np.ndarray, origin: np.ndarray, bin_rad: float | None = None) -> RangeImage:
    """The range image of a scan's points (N, 3) seen from its sensor ``origin`` (3,).

    ``bin_rad`` defaults to twice the median angular spacing of the scan's rays, so that a bin
    holds a few measurements and the image has few holes; it is widened to keep the image under
    a few million bins.
    """
    points = np.asarray(points, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64).reshape(3)
    if bin_rad is None:
        bin_rad = _BIN_SPACINGS * angular_spacing(points, origin)
    bin_rad = max(float(bin_rad), float(np.sqrt(2.0 * np.pi * np.pi / _MAX_CELLS)), 1e-5)
    height, width = int(np.ceil(np.pi / bin_rad)) + 1, int(np.ceil(2.0 * np.pi / bin_rad)) + 1
    elevation, azimuth, depth = _directions(points, origin)
    keep = depth > 1e-9
    flat = _bins(elevation[keep], azimuth[keep], bin_rad, width)
    near = np.full(height * width, np.inf)
    far = np.full(height * width, -np.inf)
    np.minimum.at(near, flat, depth[keep])
    np.maximum.at(far, flat, depth[keep])
    near, far = near.reshape(height, width), far.reshape(height, width)
    return RangeImage(origin=origin, bin_rad=bin_rad, near=near, far=far, near_around=_min_filter3(near))


def _bins(elevation: np.ndarray, azimuth: np.ndarray, bin_rad: float, width: int) -> np.ndarray:
    """Flat bin index (N,) of directions; azimuth wraps around."""
    row = np.floor((elevation + 0.5 * np.pi) / bin_rad).astype(np.int64)
    col = np.floor((azimuth + np.pi) / bin_rad).astype(np.int64) % (width - 1)
    return row * width + col


def _min_filter3(image: np.ndarray) -> np.ndarray:
    """3 x 3 minimum filter (H, W) with the azimuth axis wrapping around and inf padding in elevation."""
    padded = np.pad(image, ((1, 1), (0, 0)), constant_values=np.inf)
    rows = np.minimum(np.minimum(padded[:-2], padded[1:-1]), padded[2:])  # (H, W)
    return np.minimum(np.minimum(np.roll(rows, 1, axis=1), rows), np.roll(rows, -1, axis=1))


def score_probes(image: RangeImage, probes: np.ndarray, tolerance: float, min_range: float = 0.0) -> VisibilityScore:
    """Classify probe points (M, 3), given in the image's scan frame, against ``image``."""
    probes = np.asarray(probes, dtype=np.float64)
    if len(probes) == 0:
        return VisibilityScore(0, 0, 0, 0)
    elevation, azimuth, depth = _directions(probes, image.origin)
    usable = depth > max(min_range, 1e-9)
    flat = _bins(elevation[usable], azimuth[usable], image.bin_rad, image.near.shape[1])
    depth = depth[usable]
    near = image.near.ravel()[flat]
    far = image.far.ravel()[flat]
    around = image.near_around.ravel()[flat]
    seen = np.isfinite(near)
    free = seen & (depth < around - tolerance)
    behind = seen & ~free & (depth > far + tolerance)
    agree = seen & ~free & ~behind
    unobserved = int((~seen).sum()) + int((~usable).sum())
    return VisibilityScore(int(free.sum()), int(agree.sum()), int(behind.sum()), unobserved)


def transform(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Points (N, 3) moved by a rigid (4, 4)."""
    return points @ T[:3, :3].T + T[:3, 3]


def pair_visibility(
    source_image: RangeImage,
    source_probes: np.ndarray,
    target_image: RangeImage,
    target_probes: np.ndarray,
    target_from_source: np.ndarray,
    tolerance: float,
    min_range: float = 0.0,
) -> tuple[VisibilityScore, VisibilityScore]:
    """(source probes against the target's image, target probes against the source's image)."""
    T = np.asarray(target_from_source, dtype=np.float64)
    forward = score_probes(target_image, transform(source_probes, T), tolerance, min_range)
    backward = score_probes(source_image, transform(target_probes, np.linalg.inv(T)), tolerance, min_range)
    return forward, backward
