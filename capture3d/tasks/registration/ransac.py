"""Feature-matching RANSAC that returns the few best *distinct* rigid modes, repeatably.

Inputs: source and target points (N, 3), (M, 3), their features (N, D), (M, D), the inlier
distance, the number of sampled triplets, how many modes to keep and a seed. Output: up to
``num_modes`` :class:`Mode` (a (4, 4) target_from_source and its inlier count), best first, no two
within ``min_separation_deg`` / ``min_separation`` of each other.

Why not Open3D's RANSAC: it returns one hypothesis only (on repeated structure, a ring wall, a
corridor, the best-scoring mode is often a wrong one whose right neighbour scored a little less),
and its parallel loop is not repeatable across thread counts (Open3D issue 7475). This one is
plain vectorised numpy driven by ``np.random.default_rng(seed)``, so the same input gives the same
modes bit for bit, whatever the number of threads.

Method: correspondences are the nearest feature neighbours in both directions (or the mutual
ones); triplets of correspondences are sampled; triplets whose three edge lengths disagree by more
than 10 % between source and target are dropped (Open3D's edge-length checker, 0.9); a rigid
transform is fitted to each survivor (Kabsch, SVD); survivors whose own three points do not land
within ``distance`` are dropped; the rest are counted on a fixed subset of correspondences, the
best few hundred on all of them, then refitted to their inliers. Modes are picked greedily by
inlier count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import open3d as o3d

logger = logging.getLogger(__name__)

reg = o3d.pipelines.registration

_EDGE_SIMILARITY = 0.9  # edge-length ratio a triplet must keep between source and target
_SUBSET = 2000  # correspondences used for the first inlier count
_FINALISTS = 400  # hypotheses re-counted on every correspondence
_CHUNK = 1024  # hypotheses counted at once


@dataclass(frozen=True)
class Mode:
    """One rigid hypothesis: target_from_source (4, 4) and how many correspondences it explains."""

    transformation: np.ndarray  # (4, 4)
    inliers: int


def _o3d_feature(features: np.ndarray) -> reg.Feature:
    feature = reg.Feature()
    feature.data = np.ascontiguousarray(np.asarray(features).T, dtype=np.float64)  # (D, N)
    return feature


def feature_matches(source_features: np.ndarray, target_features: np.ndarray, mutual: bool) -> np.ndarray:
    """(K, 2) int64 (source index, target index): nearest neighbours in feature space.

    ``mutual``: only pairs that are each other's nearest neighbour; otherwise the union of the
    source -> target and target -> source nearest neighbours (as FGR uses them).
    """
    src, tgt = _o3d_feature(source_features), _o3d_feature(target_features)
    forward = np.asarray(reg.correspondences_from_features(src, tgt), dtype=np.int64)  # (N, 2)
    backward = np.asarray(reg.correspondences_from_features(tgt, src), dtype=np.int64)[:, ::-1]  # (M, 2)
    if mutual:
        fwd = {tuple(p) for p in forward.tolist()}
        pairs = [p for p in backward.tolist() if tuple(p) in fwd]
        return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    return np.unique(np.concatenate([forward, backward]), axis=0)


def kabsch(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Batched least-squares rigid fit: (B, K, 3), (B, K, 3) -> (B, 4, 4) target_from_source."""
    mu_s = source.mean(axis=1, keepdims=True)  # (B, 1, 3)
    mu_t = target.mean(axis=1, keepdims=True)
    cov = np.einsum("bki,bkj->bij", target - mu_t, source - mu_s)  # (B, 3, 3)
    u, _, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))  # (B,)
    u[:, :, 2] *= d[:, None]
    rotation = u @ vt  # (B, 3, 3)
    out = np.tile(np.eye(4), (len(source), 1, 1))
    out[:, :3, :3] = rotation
    out[:, :3, 3] = mu_t[:, 0] - np.einsum("bij,bj->bi", rotation, mu_s[:, 0])
    return out


def _count(transforms: np.ndarray, source: np.ndarray, target: np.ndarray, distance: float) -> np.ndarray:
    """Inliers (B,) of transforms (B, 4, 4) on matched points (K, 3) -> (K, 3)."""
    counts = np.empty(len(transforms), dtype=np.int64)
    for start in range(0, len(transforms), _CHUNK):
        T = transforms[start : start + _CHUNK]
        moved = np.einsum("bij,kj->bki", T[:, :3, :3], source) + T[:, None, :3, 3]  # (b, K, 3)
        counts[start : start + _CHUNK] = (np.sum((moved - target) ** 2, axis=2) < distance * distance).sum(axis=1)
    return counts


def _refit(T: np.ndarray, source: np.ndarray, target: np.ndarray, distance: float) -> tuple[np.ndarray, int]:
    """Refit (4, 4) ``T`` to its inliers twice; returns the refit and its inlier count."""
    best, best_count = T, int(_count(T[None], source, target, distance)[0])
    for _ in range(2):
        moved = source @ best[:3, :3].T + best[:3, 3]
        inliers = np.sum((moved - target) ** 2, axis=1) < distance * distance
        if inliers.sum() < 3:
            break
        candidate = kabsch(source[inliers][None], target[inliers][None])[0]
        count = int(_count(candidate[None], source, target, distance)[0])
        if count < best_count:
            break
        best, best_count = candidate, count
    return best, best_count


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (degrees) of the rotation between two (4, 4) rigid transforms."""
    cos = np.clip((np.trace(a[:3, :3] @ b[:3, :3].T) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def ransac_modes(
    source_points: np.ndarray,
    target_points: np.ndarray,
    matches: np.ndarray,
    distance: float,
    iterations: int,
    num_modes: int,
    seed: int,
    min_separation_deg: float = 10.0,
    min_separation: float | None = None,
) -> list[Mode]:
    """The best ``num_modes`` distinct rigid modes explaining ``matches`` (K, 2); see the module doc.

    Two modes are distinct when their rotations differ by more than ``min_separation_deg`` or
    their translations by more than ``min_separation`` (default 5 x ``distance``).
    """
    if min_separation is None:
        min_separation = 5.0 * distance
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    if len(matches) < 3 or iterations < 1 or num_modes < 1:
        return []
    src = np.asarray(source_points, dtype=np.float64)[matches[:, 0]]  # (K, 3)
    tgt = np.asarray(target_points, dtype=np.float64)[matches[:, 1]]  # (K, 3)
    rng = np.random.default_rng(seed)
    triplets = rng.integers(0, len(matches), size=(iterations, 3))  # (I, 3)
    triplets = triplets[
        (triplets[:, 0] != triplets[:, 1]) & (triplets[:, 1] != triplets[:, 2]) & (triplets[:, 0] != triplets[:, 2])
    ]
    s, t = src[triplets], tgt[triplets]  # (I, 3, 3)
    edges = [(0, 1), (1, 2), (0, 2)]
    ls = np.stack([np.linalg.norm(s[:, a] - s[:, b], axis=1) for a, b in edges], axis=1)  # (I, 3)
    lt = np.stack([np.linalg.norm(t[:, a] - t[:, b], axis=1) for a, b in edges], axis=1)
    ok = np.all((ls >= _EDGE_SIMILARITY * lt) & (lt >= _EDGE_SIMILARITY * ls), axis=1)
    ok &= np.all(ls > 2.0 * distance, axis=1)  # near-degenerate triplets fit anything
    s, t = s[ok], t[ok]
    if len(s) == 0:
        return []
    transforms = kabsch(s, t)  # (S, 4, 4)
    moved = np.einsum("bij,bkj->bki", transforms[:, :3, :3], s) + transforms[:, None, :3, 3]
    ok = np.all(np.sum((moved - t) ** 2, axis=2) < distance * distance, axis=1)
    transforms = transforms[ok]
    if len(transforms) == 0:
        return []
    subset = np.sort(rng.choice(len(matches), size=min(_SUBSET, len(matches)), replace=False))
    counts = _count(transforms, src[subset], tgt[subset], distance)
    order = np.lexsort((np.arange(len(counts)), -counts))[:_FINALISTS]  # stable: ties by sample order
    finalists = transforms[order]
    full = _count(finalists, src, tgt, distance)
    ranked = np.lexsort((np.arange(len(full)), -full))
    modes: list[Mode] = []
    for k in ranked:
        if full[k] < 3:
            break
        T, count = _refit(finalists[k], src, tgt, distance)
        if any(
            rotation_angle_deg(T, m.transformation) < min_separation_deg
            and np.linalg.norm(T[:3, 3] - m.transformation[:3, 3]) < min_separation
            for m in modes
        ):
            continue
        modes.append(Mode(T, count))
        if len(modes) == num_modes:
            break
    modes.sort(key=lambda m: -m.inliers)
    logger.debug(
        "ransac: %d matches, %d/%d triplets valid, modes %s",
        len(matches),
        len(transforms),
        iterations,
        [m.inliers for m in modes],
    )
    return modes
