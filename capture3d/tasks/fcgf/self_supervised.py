"""Self-supervised FCGF training pairs from ONE unlabeled scan, with exactly known correspondences.

Inputs: one scan's (N, 3) points (any frame, metres), the voxel the network will run at, a
:class:`SelfSupervisedConfig` and a seed (or a numpy Generator). Output: a
:class:`SelfSupervisedPair` -- two overlapping views of the scan, each independently moved,
resampled, jittered and thinned, with the exact rigid motion ``T_1_from_0`` (4, 4) between their
frames and, per view point, the index of the source point it came from.

How a pair is made (all random draws from the one generator, so a seed gives the same pair):

1. **Overlap by crop.** A random unit direction d splits the scan by the projection ``p . d``:
   view 0 keeps the points whose projection quantile is below ``f``, view 1 those above
   ``1 - f``. The shared slab holds ``2 f - 1`` of the points, so a target overlap ``o`` (the
   shared fraction of each view, uniform in ``[min_overlap, max_overlap]``) gives
   ``f = 1 / (2 - o)``. With ``crop_mode: ball`` the views are instead the points nearest to two
   centres (a random point and the point at the quantile that yields the same overlap).
2. **Independent rigid motions.** Each view is rotated about its centroid by up to
   ``rotation_deg`` about a random axis and translated by up to ``translation_factor`` times the
   scan's extent. ``T_1_from_0 = M1 @ inv(M0)`` is exact (float64).
3. **Resampling at independent voxel-grid offsets.** Each moved view keeps one randomly chosen
   point per cell of a grid of edge ``resample_factor * voxel`` shifted by a random offset in
   ``[0, cell)^3`` (the points are picked, not averaged, so they stay exact copies of moved source
   points); the two views' grids differ in offset and, through the motions, in orientation.
4. **Noise and dropout.** Gaussian noise of ``noise_factor * voxel`` per coordinate, then a random
   fraction (uniform in ``[0, max_dropout]``) of the points is dropped.

``index0`` / ``index1`` give each view point's source row; where they agree, ``T_1_from_0`` maps
the noise-free view-0 point exactly onto the noise-free view-1 point. ``overlap`` is the measured
fraction of view 0 within ``1.5 voxel`` of view 1 under ``T_1_from_0`` (what the loss's positives
see). :func:`to_scan_pair` turns a pair into the :class:`~capture3d.tasks.fcgf.data.ScanPair` the
training loop voxelises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from capture3d.tasks.fcgf.data import ScanPair, random_rotation
from capture3d.tasks.registration.evaluate import overlap_ratio

logger = logging.getLogger(__name__)

_MIN_VIEW_POINTS = 64


@dataclass(frozen=True)
class SelfSupervisedConfig:
    """How two overlapping views are cut from one unlabeled scan and degraded independently."""

    min_overlap: float
    """lowest target overlap: shared fraction of each view (0.3)"""
    max_overlap: float
    """highest target overlap (0.7)"""
    crop_mode: Literal["slab", "ball", "mixed"]
    """views as the two sides of a random plane (slab), the points nearest two centres (ball), or either"""
    rotation_deg: float
    """each view rotated up to this about a random axis, degrees (180: any rotation)"""
    translation_factor: float
    """each view translated up to this times the scan's extent"""
    resample_factor: float
    """resampling grid edge, in voxels (one picked point per cell, random grid offset per view)"""
    noise_factor: float
    """Gaussian noise per coordinate, in voxels"""
    max_dropout: float
    """each view loses a random fraction of its points, uniform in [0, max_dropout]"""
    voxel_jitter: float
    """the pair's voxel is the given one times a factor log-uniform in [1 / (1 + j), 1 + j] (scale robustness)"""


@dataclass(frozen=True)
class SelfSupervisedPair:
    """Two views of one scan and the exact motion between their frames."""

    points0: np.ndarray  # (N0, 3) float64, view 0 in its own frame (moved, resampled, noisy)
    points1: np.ndarray  # (N1, 3) float64, view 1 in its own frame
    index0: np.ndarray  # (N0,) int64 source row of each view-0 point
    index1: np.ndarray  # (N1,) int64 source row of each view-1 point
    T_1_from_0: np.ndarray  # (4, 4) float64: frame 0 -> frame 1
    voxel: float  # voxel edge for the network (after voxel_jitter)
    target_overlap: float  # the drawn overlap of the crop (before resampling and dropout)
    overlap: float  # measured: fraction of view 0 within 1.5 voxels of view 1 under T_1_from_0


@dataclass(frozen=True)
class UnlabeledScan:
    """One unlabeled scan ready for cutting views: thinned points and the voxel the network runs at."""

    name: str
    points: np.ndarray  # (N, 3) float64, thinned (:func:`thin_scan`)
    voxel: float  # voxel edge for this scan (e.g. register_scans' auto rule on the scan alone)


def unlabeled_scan(name: str, points: np.ndarray, voxel: float, thin_factor: float = 1.0 / 3.0) -> UnlabeledScan:
    """An :class:`UnlabeledScan` of (N, 3) ``points``, thinned to one point per ``thin_factor * voxel`` cell."""
    return UnlabeledScan(name, thin_scan(points, thin_factor * voxel) if thin_factor > 0 else points, float(voxel))


def validation_set(scans: list[UnlabeledScan], count: int, config: SelfSupervisedConfig, seed: int) -> list[ScanPair]:
    """``count`` fixed self-supervised pairs, cycling over ``scans`` (the same for the same seed)."""
    rng = np.random.default_rng(seed)
    out: list[ScanPair] = []
    for k in range(count if scans else 0):
        scan = scans[k % len(scans)]
        try:
            out.append(to_scan_pair(make_pair(scan.points, scan.voxel, config, rng), f"{scan.name}/ss{k}"))
        except ValueError as exc:
            logger.warning("self-supervised validation pair of %s skipped: %s", scan.name, exc)
    return out


def _transform(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    return points @ T[:3, :3].T + T[:3, 3]  # (N, 3)


def _crop_views(
    points: np.ndarray, overlap: float, mode: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the two views: each keeps a fraction f = 1 / (2 - overlap) of the points."""
    n = points.shape[0]
    keep = int(round(n / (2.0 - overlap)))  # points per view
    if mode == "mixed":
        mode = "slab" if rng.uniform() < 0.5 else "ball"
    if mode == "slab":
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        order = np.argsort(points @ d, kind="stable")  # (N,)
        return np.sort(order[:keep]), np.sort(order[n - keep :])
    # ball: view 0 = the `keep` points nearest a random centre; view 1 = those nearest a second centre,
    # taken on the far side of the first one's ball so the shared part is about 2 keep - n.
    c0 = points[int(rng.integers(n))]
    d0 = np.linalg.norm(points - c0, axis=1)  # (N,)
    order0 = np.argsort(d0, kind="stable")
    view0 = order0[:keep]
    far = order0[min(n - 1, keep + int(rng.integers(0, max(1, n - keep))))]  # a point outside view 0
    c1 = points[far]
    best = None
    for t in np.linspace(0.0, 1.0, 9):  # slide the second centre towards c0 until the overlap is reached
        centre = c1 + t * (c0 - c1)
        view1 = np.argsort(np.linalg.norm(points - centre, axis=1), kind="stable")[:keep]
        shared = np.intersect1d(view0, view1, assume_unique=True).size / keep
        if best is None or abs(shared - overlap) < best[0]:
            best = (abs(shared - overlap), view1)
    assert best is not None
    return np.sort(view0), np.sort(best[1])


def _resample(points: np.ndarray, cell: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one randomly picked point per cell of a randomly offset grid of edge ``cell``."""
    offset = rng.uniform(0.0, cell, size=3)
    keys = np.floor((points + offset) / cell).astype(np.int64)  # (N, 3)
    perm = rng.permutation(points.shape[0])  # random representative per cell
    _, first = np.unique(keys[perm], axis=0, return_index=True)
    return np.sort(perm[first])


def _view(
    points: np.ndarray,
    rows: np.ndarray,
    voxel: float,
    extent: float,
    config: SelfSupervisedConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(moved, resampled, noisy, thinned points (K, 3); their source rows (K,); motion M (4, 4))."""
    src = points[rows]  # (V, 3)
    M = np.eye(4)
    M[:3, :3] = random_rotation(rng, config.rotation_deg)
    centre = src.mean(axis=0)
    shift = rng.normal(size=3)
    shift *= config.translation_factor * extent * rng.uniform() / max(np.linalg.norm(shift), 1e-12)
    M[:3, 3] = centre - M[:3, :3] @ centre + shift
    moved = _transform(src, M)  # (V, 3)
    keep = _resample(moved, config.resample_factor * voxel, rng) if config.resample_factor > 0 else np.arange(len(src))
    moved, kept_rows = moved[keep], rows[keep]
    if config.max_dropout > 0:
        survive = rng.uniform(size=len(keep)) >= rng.uniform(0.0, config.max_dropout)
        moved, kept_rows = moved[survive], kept_rows[survive]
    if config.noise_factor > 0:
        moved = moved + rng.normal(0.0, config.noise_factor * voxel, size=moved.shape)
    return moved, kept_rows, M


def make_pair(
    points: np.ndarray, voxel: float, config: SelfSupervisedConfig, seed: int | np.random.Generator
) -> SelfSupervisedPair:
    """Two overlapping, independently moved and degraded views of ``points`` (N, 3); see the module docstring.

    ``seed``: an int (a fresh generator) or a Generator to draw from. Raises ValueError for a
    scan too small to cut (fewer than 2 x 64 points) or bad settings.
    """
    if not 0.0 < config.min_overlap <= config.max_overlap < 1.0:
        raise ValueError(f"need 0 < min_overlap <= max_overlap < 1, got {config.min_overlap}, {config.max_overlap}")
    if not voxel > 0:
        raise ValueError(f"voxel must be > 0, got {voxel}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {pts.shape}")
    if pts.shape[0] < 2 * _MIN_VIEW_POINTS:
        raise ValueError(f"scan has {pts.shape[0]} points, need >= {2 * _MIN_VIEW_POINTS} to cut two views")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    j = max(0.0, config.voxel_jitter)
    voxel = float(voxel * np.exp(rng.uniform(-np.log1p(j), np.log1p(j)))) if j > 0 else float(voxel)
    target = float(rng.uniform(config.min_overlap, config.max_overlap))
    rows0, rows1 = _crop_views(pts, target, config.crop_mode, rng)
    extent = float(np.linalg.norm(pts.max(axis=0) - pts.min(axis=0)))
    p0, i0, M0 = _view(pts, rows0, voxel, extent, config, rng)
    p1, i1, M1 = _view(pts, rows1, voxel, extent, config, rng)
    if min(len(p0), len(p1)) < _MIN_VIEW_POINTS:
        raise ValueError(f"views too small after resampling ({len(p0)}, {len(p1)} points): voxel too coarse")
    T = M1 @ np.linalg.inv(M0)  # frame 0 -> source -> frame 1
    measured = overlap_ratio(p0, p1, T, 1.5 * voxel)
    return SelfSupervisedPair(p0, p1, i0.astype(np.int64), i1.astype(np.int64), T, voxel, target, measured)


def to_scan_pair(pair: SelfSupervisedPair, name: str) -> ScanPair:
    """The training loop's :class:`ScanPair` of a self-supervised pair."""
    return ScanPair(name, pair.points0, pair.points1, pair.T_1_from_0, pair.voxel)


def thin_scan(points: np.ndarray, cell: float) -> np.ndarray:
    """(K, 3) one point per cell of edge ``cell`` (the first in row order): bounds the cost of cutting views."""
    pts = np.asarray(points, dtype=np.float64)
    _, first = np.unique(np.floor(pts / cell).astype(np.int64), axis=0, return_index=True)
    return pts[np.sort(first)]
