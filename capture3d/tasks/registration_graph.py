"""Choosing one verified hypothesis per scan link: free-space checks, cycle support, greedy merging.

Inputs: every pair's refined hypotheses (:class:`~capture3d.tasks.register_pair.PairResult`), each
scan's range image when its sensor origin is known (:class:`~capture3d.tasks.visibility.RangeImage`
or None), its probe points (the preprocessed cloud, (N_i, 3)), the voxel and a
:class:`VerifyConfig`. Outputs: :class:`Candidate` links (a pair's hypothesis with its free-space
score and cycle support) and a :class:`Selection`: the scans of the largest consistently connected
group with their initial poses, tree and loop-closure links, and what was rejected and why.
:func:`scan_confidence` labels each placed scan. Nothing is written.

Method:

1. Every hypothesis that passes the fitness / RMSE gates is a candidate link. When both scans'
   sensor origins are known it is tested for free-space consistency in both directions
   (:func:`~capture3d.tasks.visibility.pair_visibility`); more than ``max_free_fraction`` of
   the observed probes in space the other sensor saw as empty rejects it.
2. Cycle support: a candidate's number of scan triplets (i, j, k) for which candidates on the
   other two sides close the cycle (rotation within ``max_edge_rotation_deg``, translation within
   twice ``max_edge_translation_factor * voxel``). Wrong modes of repeated structure rarely close
   cycles with right ones.
3. Greedy merging (Kruskal order: free-space verified first, then cycle support, then fitness,
   then pair and hypothesis order, so the result does not depend on timing): a candidate between
   two groups merges them when every pair of scans across the two groups with known origins stays
   free-space consistent under the merged poses; a candidate inside a group is kept as a loop
   closure when it agrees with the group's poses, and counted as a conflict otherwise. One link
   per pair at most.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from capture3d.tasks.ransac import rotation_angle_deg
from capture3d.tasks.register_pair import PairResult
from capture3d.tasks.visibility import RangeImage, VisibilityScore, pair_visibility

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyConfig:
    """How candidate links and final poses are verified."""

    max_free_fraction: float  # more of a scan's observed points in another's free space: rejected
    free_space_tolerance_factor: float  # depth tolerance of the free-space test = factor * voxel
    min_observed_points: int  # fewer points in view of the other sensor: the test is not evidence
    max_edge_rotation_deg: float  # a link agrees with poses (or closes a cycle) within this rotation ...
    max_edge_translation_factor: float  # ... and this translation, as a multiple of voxel


@dataclass
class Candidate:
    """One hypothesis of one pair, as a possible link of the pose graph."""

    source: int
    target: int
    hypothesis: int  # index into the pair's hypotheses
    transformation: np.ndarray  # (4, 4) target_from_source
    fitness: float
    inlier_rmse: float
    method: str
    visibility: tuple[VisibilityScore, VisibilityScore] | None = None  # (source in target, target in source)
    support: int = 0  # closed triplets

    @property
    def free_fraction(self) -> float | None:
        if self.visibility is None:
            return None
        return max(s.free_fraction for s in self.visibility)


@dataclass
class Selection:
    """The greedy merge's outcome (indices are scan indices)."""

    poses: dict[int, np.ndarray]  # scan -> group_from_scan (4, 4) of the chosen group
    tree: list[Candidate]
    loops: list[Candidate]
    rejected: list[tuple[Candidate, str]] = field(default_factory=list)  # with the reason
    conflicts: int = 0  # candidates inside a group that disagree with it


def _informative(score: VisibilityScore, config: VerifyConfig) -> bool:
    return score.observed >= config.min_observed_points


def free_space_verdict(scores: tuple[VisibilityScore, VisibilityScore], config: VerifyConfig
                       ) -> tuple[bool | None, str]:
    """(True: verified, False: contradicted, None: not enough overlap to tell) and a reason."""
    worst = max(scores, key=lambda s: s.free_fraction if _informative(s, config) else -1.0)
    if _informative(worst, config) and worst.free_fraction > config.max_free_fraction:
        return False, (f"{100 * worst.free_fraction:.1f}% of the points in view lie in space the other sensor "
                       f"saw as empty (> {100 * config.max_free_fraction:.1f}%)")
    if any(_informative(s, config) and s.agree >= config.min_observed_points for s in scores):
        return True, ""
    return None, "too little of either scan in view of the other sensor to check free space"


def build_candidates(
    pairs: list[tuple[int, int, PairResult]],
    views: list[RangeImage | None],
    probes: list[np.ndarray],
    voxel: float,
    config: VerifyConfig,
) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """Gate-passing hypotheses as candidates (free-space tested where possible), and the rejected ones."""
    tolerance = config.free_space_tolerance_factor * voxel
    kept: list[Candidate] = []
    rejected: list[tuple[Candidate, str]] = []
    for i, j, pair in pairs:
        for h, hyp in enumerate(pair.hypotheses):
            if not hyp.confident:
                continue
            cand = Candidate(i, j, h, hyp.transformation, hyp.fitness, hyp.inlier_rmse, hyp.method)
            if views[i] is not None and views[j] is not None:
                cand.visibility = pair_visibility(views[i], probes[i], views[j], probes[j], hyp.transformation,
                                                  tolerance)  # type: ignore[arg-type]
                ok, reason = free_space_verdict(cand.visibility, config)
                if ok is False:
                    rejected.append((cand, reason))
                    continue
            kept.append(cand)
    _cycle_support(kept, voxel, config)
    return kept, rejected


def _agree(a: np.ndarray, b: np.ndarray, rotation_deg: float, translation: float) -> bool:
    return rotation_angle_deg(a, b) <= rotation_deg and float(np.linalg.norm(a[:3, 3] - b[:3, 3])) <= translation


def _cycle_support(candidates: list[Candidate], voxel: float, config: VerifyConfig) -> None:
    """Set ``support`` of each candidate: the triplets it closes with candidates of the other two sides."""
    by_pair: dict[tuple[int, int], list[Candidate]] = {}
    for c in candidates:
        by_pair.setdefault((c.source, c.target), []).append(c)
    nodes = sorted({n for key in by_pair for n in key})
    rot, trans = config.max_edge_rotation_deg, 2.0 * config.max_edge_translation_factor * voxel
    for a_i, a in enumerate(nodes):
        for b_i in range(a_i + 1, len(nodes)):
            b = nodes[b_i]
            ab = by_pair.get((a, b), [])
            if not ab:
                continue
            for c in nodes[b_i + 1:]:
                bc, ac = by_pair.get((b, c), []), by_pair.get((a, c), [])
                for x in ab:
                    for y in bc:
                        composed = y.transformation @ x.transformation  # c_from_a via b
                        for z in ac:
                            if _agree(composed, z.transformation, rot, trans):
                                x.support += 1
                                y.support += 1
                                z.support += 1


def _order_key(c: Candidate, config: VerifyConfig) -> tuple:
    verified = c.visibility is not None and free_space_verdict(c.visibility, config)[0] is True
    return (not verified, -c.support, -c.fitness, c.inlier_rmse, c.source, c.target, c.hypothesis)


def greedy_merge(
    n: int,
    candidates: list[Candidate],
    views: list[RangeImage | None],
    probes: list[np.ndarray],
    voxel: float,
    config: VerifyConfig,
) -> Selection:
    """Merge scans into groups along the best consistent candidates; returns the largest group."""
    tolerance = config.free_space_tolerance_factor * voxel
    group = list(range(n))  # scan -> group id
    poses = {k: np.eye(4) for k in range(n)}  # scan -> group_from_scan (4, 4)
    tree: list[Candidate] = []
    loops: list[Candidate] = []
    rejected: list[tuple[Candidate, str]] = []
    linked: set[tuple[int, int]] = set()
    conflicts = 0
    for cand in sorted(candidates, key=lambda c: _order_key(c, config)):
        i, j = cand.source, cand.target
        if (i, j) in linked:
            continue
        if group[i] == group[j]:
            relative = np.linalg.inv(poses[j]) @ poses[i]
            if _agree(relative, cand.transformation, config.max_edge_rotation_deg,
                      config.max_edge_translation_factor * voxel):
                loops.append(cand)
                linked.add((i, j))
            else:
                conflicts += 1
            continue
        gi, gj = group[i], group[j]
        members_j = [k for k in range(n) if group[k] == gj]
        members_i = [k for k in range(n) if group[k] == gi]
        pose_j = poses[i] @ np.linalg.inv(cand.transformation)  # group_i_from_j
        moved = {k: pose_j @ np.linalg.inv(poses[j]) @ poses[k] for k in members_j}
        reason = _cross_check(members_i, members_j, poses, moved, views, probes, tolerance, config)
        if reason:
            rejected.append((cand, reason))
            continue
        for k in members_j:
            poses[k] = moved[k]
            group[k] = gi
        tree.append(cand)
        linked.add((i, j))
    sizes = {g: sum(1 for k in range(n) if group[k] == g) for g in set(group)}
    best = min(sizes, key=lambda g: (-sizes[g], min(k for k in range(n) if group[k] == g)))
    members = [k for k in range(n) if group[k] == best]
    chosen = set(members)
    return Selection(
        poses={k: poses[k] for k in members},
        tree=[c for c in tree if c.source in chosen],
        loops=[c for c in loops if c.source in chosen],
        rejected=rejected,
        conflicts=conflicts,
    )


def _cross_check(
    members_i: list[int], members_j: list[int], poses: dict[int, np.ndarray], moved: dict[int, np.ndarray],
    views: list[RangeImage | None], probes: list[np.ndarray], tolerance: float, config: VerifyConfig,
) -> str:
    """"" when every cross pair with known origins is free-space consistent, else the first reason."""
    for a in members_i:
        for b in members_j:
            if views[a] is None or views[b] is None:
                continue
            relative = np.linalg.inv(poses[a]) @ moved[b]  # a_from_b
            scores = pair_visibility(views[b], probes[b], views[a], probes[a], relative, tolerance)  # type: ignore[arg-type]
            ok, reason = free_space_verdict(scores, config)
            if ok is False:
                return f"merging would put scans {b} and {a} in conflict: {reason}"
    return ""


def bridges(edges: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """The edges whose removal disconnects their two ends."""
    return {e for e in edges if e[1] not in component(e[0], [f for f in edges if f != e])}


def component(start: int, edges: list[tuple[int, int]]) -> set[int]:
    """Nodes connected to ``start`` through ``edges``."""
    seen = {start}
    grew = True
    while grew:
        grew = False
        for i, j in edges:
            if (i in seen) != (j in seen):
                seen.update((i, j))
                grew = True
    return seen
