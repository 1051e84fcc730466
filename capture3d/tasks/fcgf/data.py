"""Training pairs for FCGF: scan pairs with known relative poses, augmented and voxelised.

Inputs: scans (each (N, 3) points in its own frame) with ground-truth ``world_from_scan`` poses --
from the synthetic scan generator (:func:`synthetic_pairs`) or any scan capture with ground truth
(:func:`pairs_from_scans`) -- a numpy Generator and an :class:`AugmentConfig`.
Outputs: :class:`ScanPair` (two clouds, ``T_1_from_0`` (4, 4), the voxel size to use) and, per
training step, a :class:`VoxelPair`: both clouds voxelised into one batched SparseTensor input
(batch 0 and 1), the voxel positions, and the ground-truth positive voxel pairs.

Augmentation (FCGF trains with a random rotation of each cloud; here also partial crops and
extra noise): each cloud is independently rotated by up to ``rotation_deg`` about a random axis,
cropped with probability ``crop_probability`` to the side of a random plane keeping a fraction
in ``[crop_min_fraction, 1]`` of its points, and jittered by Gaussian noise of
``jitter_factor * voxel``. ``T_1_from_0`` is updated to match, so positives stay exact.

Positives: voxel pairs whose positions (the mean of the points in the voxel) lie within
``positive_radius_factor * voxel`` once cloud 0 is mapped by ``T_1_from_0`` (FCGF: 1.5 voxels).
Optionally the pairs within a larger ``safe_radius_factor * voxel`` are listed too: the loss never
takes them as negatives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from capture3d.tasks.fcgf.evaluate import overlapping_pairs
from capture3d.tasks.fcgf.loss import correspondences
from capture3d.tasks.fcgf.model import voxelize_for_fcgf
from capture3d.tasks.fcgf.sparse import SparseTensor
from capture3d.tasks.registration.preprocess import auto_voxel_size
from capture3d.tasks.registration.scan_io import Scan
from capture3d.tasks.synthesis.scans import render_scans

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanPair:
    """Two clouds and the rigid motion taking cloud 0 into cloud 1's frame."""

    name: str
    points0: np.ndarray  # (N0, 3) float64
    points1: np.ndarray  # (N1, 3) float64
    T_1_from_0: np.ndarray  # (4, 4)
    voxel: float  # voxel edge length for this pair (same units as the points)


@dataclass(frozen=True)
class AugmentConfig:
    """Random rotation, partial crop and jitter applied to each cloud of a training pair."""

    rotation_deg: float
    """each cloud rotated up to this about a random axis, degrees (180: any rotation)"""
    crop_probability: float
    """chance that a cloud is cropped by a random plane"""
    crop_min_fraction: float
    """a crop keeps at least this fraction of the points"""
    jitter_factor: float
    """extra Gaussian noise, sigma in voxels"""


@dataclass(frozen=True)
class VoxelPair:
    """One training / validation step's input: both clouds in one batched sparse tensor."""

    tensor: SparseTensor  # features (M0 + M1, 1) ones, coords (M0 + M1, 4): batch 0 rows, then batch 1
    num0: int  # M0, rows of cloud 0
    positions0: torch.Tensor  # (M0, 3) float64 voxel positions, frame 0
    positions1: torch.Tensor  # (M1, 3) float64 voxel positions, frame 1
    positives: torch.Tensor  # (P, 2) int64 [row in cloud 0, row in cloud 1]
    T_1_from_0: np.ndarray  # (4, 4)
    voxel: float  # voxel edge length (units of the positions)
    excluded: torch.Tensor | None = None  # (E, 2) pairs within the safe radius (never negatives)


def _transform(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    return points @ T[:3, :3].T + T[:3, 3]  # (N, 3)


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """(3, 3) rotation by an angle uniform in [0, max_deg] about a uniformly random axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(rng.uniform(0.0, max_deg))
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * k @ k


def pairs_from_scans(
    scans: list[Scan], poses: dict[str, np.ndarray], voxel: float, min_overlap: float, prefix: str = ""
) -> list[ScanPair]:
    """Every pair (i < j) of ``scans`` whose overlap (at 3 voxels) is at least ``min_overlap``.

    ``poses`` maps scan name -> world_from_scan (4, 4); scans without a pose are skipped. The
    overlap is the larger of the two directed ratios (fraction of one cloud near the other).
    """
    placed = [s for s in scans if s.name in poses]
    found = overlapping_pairs([s.points for s in placed], [poses[s.name] for s in placed], 3 * voxel, min_overlap)
    pairs = [
        ScanPair(
            f"{prefix}{placed[i].name}-{placed[j].name}",
            placed[i].points,
            placed[j].points,
            np.linalg.inv(poses[placed[j].name]) @ poses[placed[i].name],
            voxel,
        )
        for i, j, _ in found
    ]
    logger.info("%s%d scans -> %d pairs with overlap >= %.2f", prefix, len(placed), len(pairs), min_overlap)
    return pairs


def synthetic_pairs(
    seeds: list[int],
    num_scans: int,
    noise_sigma: float,
    width: int,
    height: int,
    auto_target_points: int,
    min_overlap: float,
) -> list[ScanPair]:
    """Overlapping scan pairs of the synthetic courtyard for each seed (voxel: auto per seed)."""
    pairs: list[ScanPair] = []
    for seed in seeds:
        scans, poses = render_scans(num_scans=num_scans, seed=seed, noise_sigma=noise_sigma, width=width, height=height)
        voxel = auto_voxel_size(scans, auto_target_points)
        pairs += pairs_from_scans(scans, poses, voxel, min_overlap, prefix=f"seed{seed}/")
    return pairs


def _crop(points: np.ndarray, rng: np.random.Generator, min_fraction: float) -> np.ndarray:
    """Points on one side of a random plane, keeping a fraction uniform in [min_fraction, 1]."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    proj = points @ direction  # (N,)
    keep = rng.uniform(min_fraction, 1.0)
    return points[proj >= np.quantile(proj, 1.0 - keep)]


def augment_pair(pair: ScanPair, rng: np.random.Generator, config: AugmentConfig) -> ScanPair:
    """A randomly rotated, cropped and jittered copy of ``pair`` with ``T_1_from_0`` updated."""
    clouds, motions = [], []
    for points in (pair.points0, pair.points1):
        if rng.uniform() < config.crop_probability:
            points = _crop(points, rng, config.crop_min_fraction)
        M = np.eye(4)
        M[:3, :3] = random_rotation(rng, config.rotation_deg)
        centre = points.mean(axis=0)
        M[:3, 3] = centre - M[:3, :3] @ centre  # rotate about the centroid
        points = _transform(points, M)
        if config.jitter_factor > 0:
            points = points + rng.normal(0.0, config.jitter_factor * pair.voxel, size=points.shape)
        clouds.append(points)
        motions.append(M)
    T = motions[1] @ pair.T_1_from_0 @ np.linalg.inv(motions[0])  # new1 <- old1 <- old0 <- new0
    return ScanPair(pair.name, clouds[0], clouds[1], T, pair.voxel)


def voxelize_pair(
    pair: ScanPair, positive_radius_factor: float, device: torch.device | str = "cpu", safe_radius_factor: float = 0.0
) -> VoxelPair:
    """Voxelise both clouds at ``pair.voxel`` into one batched tensor and find the positive pairs.

    With ``safe_radius_factor`` > the positive factor, the pairs within that many voxels are
    also returned (``excluded``): the loss must not use them as negatives.

    Raises ValueError (from :func:`voxelize_for_fcgf`) for clouds too small for the network.
    """
    x0, inv0 = voxelize_for_fcgf(pair.points0, pair.voxel, "cpu", batch=0)
    x1, inv1 = voxelize_for_fcgf(pair.points1, pair.voxel, "cpu", batch=1)
    pos0 = _voxel_means(pair.points0, inv0, x0.coords.shape[0])  # (M0, 3)
    pos1 = _voxel_means(pair.points1, inv1, x1.coords.shape[0])  # (M1, 3)
    positives = correspondences(pos0, pos1, pair.T_1_from_0, positive_radius_factor * pair.voxel)  # (P, 2)
    excluded = None
    if safe_radius_factor > positive_radius_factor:
        excluded = correspondences(pos0, pos1, pair.T_1_from_0, safe_radius_factor * pair.voxel)  # (E, 2)
    coords = torch.cat([x0.coords, x1.coords], 0)  # (M0 + M1, 4)
    feats = torch.ones(coords.shape[0], 1, dtype=torch.float32)
    tensor = SparseTensor(features=feats.to(device), coords=coords.to(device))
    return VoxelPair(tensor, int(x0.coords.shape[0]), pos0, pos1, positives, pair.T_1_from_0, pair.voxel, excluded)


def _voxel_means(points: np.ndarray, inverse: torch.Tensor, m: int) -> torch.Tensor:
    """(M, 3) float64 mean of the (N, 3) points falling in each of the M voxels."""
    pts = torch.as_tensor(np.asarray(points, dtype=np.float64))
    sums = torch.zeros(m, 3, dtype=torch.float64).index_add_(0, inverse, pts)
    return sums / torch.bincount(inverse, minlength=m).to(torch.float64)[:, None]
