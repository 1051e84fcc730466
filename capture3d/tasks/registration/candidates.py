"""Which scan pairs to register when all N(N-1)/2 would cost too much: odometry and loop closures.

Inputs: the number of scans, their preprocessed clouds (probe points (N_i, 3)), their per-point
features (N_i, D), the groups of scans placed so far (scan -> group_from_scan (4, 4) per group,
from a first pose-graph selection on the sequential pairs) and the pairs already tried. Outputs:
lists of (source, target) index pairs with source < target, each list O(N * k) long. Nothing is
written.

Three sources of candidates, as in SLAM back ends and Open3D's reconstruction system:

* :func:`sequential_pairs`: odometry, each scan with its next ``window`` scans in capture order.
* :func:`overlap_neighbours`: loop closures by proximity after odometry. Inside one group the
  odometry-chained poses put every scan in one frame; each scan's points are binned on a coarse
  grid (``cell`` metres, many voxels wide so that odometry drift of a few cells still overlaps) and
  the predicted overlap of two scans is the share of the smaller scan's occupied cells the other
  scan occupies too. Each scan keeps its ``k`` best untried partners above ``min_overlap``.
* :func:`descriptor_neighbours`: loop closures by retrieval, for scans odometry could not connect
  (no shared frame to predict overlap in). A global descriptor per scan pools its local features
  (mean and standard deviation per dimension, centred over the capture and L2-normalised, as in
  pooled-feature place recognition); each scan keeps the ``k`` most cosine-similar untried scans of
  other groups.

Every candidate is then registered and verified like any pair: a wrong loop-closure candidate
costs time, never a wrong pose (the free-space, colour, cycle and edge checks decide).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

Pair = tuple[int, int]


def sequential_pairs(n: int, window: int) -> list[Pair]:
    """(i, j) for every scan i and its next ``window`` scans j (at least 1): the odometry pairs."""
    window = max(1, window)
    return [(i, j) for i in range(n) for j in range(i + 1, min(n, i + window + 1))]


def global_descriptors(features: list[np.ndarray]) -> np.ndarray:
    """(N, 2D) float64 unit descriptors: per-scan mean and std of its (N_i, D) features, centred over scans."""
    if not features:
        return np.zeros((0, 0))
    pooled = np.stack(
        [np.concatenate([f.mean(axis=0), f.std(axis=0)]) if len(f) else np.zeros(2 * f.shape[1]) for f in features]
    ).astype(np.float64)  # (N, 2D)
    scale = pooled.std(axis=0)  # (2D,) whiten per dimension so no histogram bin dominates
    pooled = (pooled - pooled.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.where(norms > 0, norms, 1.0)


def descriptor_neighbours(
    descriptors: np.ndarray, queries: list[int], allowed: dict[int, set[int]], k: int, tried: set[Pair]
) -> list[Pair]:
    """For each query scan, its ``k`` most similar scans among ``allowed[query]`` not in ``tried`` (sorted pairs)."""
    out: set[Pair] = set()
    if k <= 0 or len(descriptors) == 0:
        return []
    similarity = descriptors @ descriptors.T  # (N, N) cosine
    for q in queries:
        ranked = sorted(allowed.get(q, set()), key=lambda j: (-similarity[q, j], j))
        picked = 0
        for j in ranked:
            pair = (min(q, j), max(q, j))
            if j == q or pair in tried or pair in out:
                continue
            out.add(pair)
            picked += 1
            if picked >= k:
                break
    return sorted(out)


def occupied_cells(points: np.ndarray, pose: np.ndarray, cell: float) -> set[tuple[int, int, int]]:
    """Coarse grid cells (integer triples) occupied by ``points`` (N, 3) moved by ``pose`` (4, 4)."""
    moved = points @ pose[:3, :3].T + pose[:3, 3]  # (N, 3)
    keys = np.unique(np.floor(moved / cell).astype(np.int64), axis=0)  # (M, 3)
    return {tuple(int(v) for v in row) for row in keys}  # type: ignore[misc]


def overlap_neighbours(
    points: list[np.ndarray],
    groups: list[dict[int, np.ndarray]],
    cell: float,
    k: int,
    min_overlap: float,
    tried: set[Pair],
    queries: set[int] | None = None,
) -> list[Pair]:
    """Per scan of each group, its ``k`` untried partners of the same group with most predicted overlap.

    ``points``: each scan's probe points (N_i, 3) in its own frame; ``groups``: scan -> group_from_scan
    (4, 4), one frame per group; ``queries``: the scans that seek partners (default every scan).
    Overlap = shared coarse cells / the smaller scan's cells.
    """
    out: set[Pair] = set()
    if k <= 0 or cell <= 0:
        return []
    for group in groups:
        members = sorted(group)
        seekers = [m for m in members if queries is None or m in queries]
        if len(members) < 2 or not seekers:
            continue
        cells = {m: occupied_cells(points[m], group[m], cell) for m in members}
        for a in seekers:
            scored = []
            for b in members:
                pair = (min(a, b), max(a, b))
                if b == a or pair in tried:
                    continue
                shared = len(cells[a] & cells[b]) / max(1, min(len(cells[a]), len(cells[b])))
                if shared >= min_overlap:
                    scored.append((-shared, b))
            for _, b in sorted(scored)[:k]:
                out.add((min(a, b), max(a, b)))
    return sorted(out)
