"""Choosing one verified hypothesis per scan link: free space, colour, cycle support, greedy merging.

Inputs: every pair's refined hypotheses (:class:`~capture3d.tasks.registration.pair.PairResult`) and the
:class:`Evidence`: each scan's preprocessed cloud (probe points (N_i, 3), colours where present),
its range image when its sensor origin is known (:class:`~capture3d.tasks.registration.visibility.RangeImage`
or None), the voxel and a :class:`VerifyConfig`. Outputs: :class:`Candidate` links (a pair's
hypothesis with its :class:`Check` and cycle support) and a :class:`Selection`: the scans of the
largest consistently connected group with their initial poses, tree and loop-closure links, the
other groups, and what was rejected and why. Nothing is written.

Method:

1. Every hypothesis that passes the fitness / RMSE gates is a candidate link, checked by
   :meth:`Evidence.check`: when both scans' sensor origins are known, free-space consistency in
   both directions (:func:`~capture3d.tasks.registration.visibility.pair_visibility`; more than
   ``max_free_fraction`` of the observed probes in space the other sensor saw as empty rejects
   it, enough agreeing points verify it); when both scans are coloured, the intensities of points
   matched within a voxel must correlate (``min_colour_correlation``; Pearson, so exposure gain
   and offset do not matter). Of several verified hypotheses of one pair, the one with clearly
   more agreeing points stays; when two agree about as much the pair is ambiguous and loses both.
2. Cycle support: a candidate's number of scan triplets (i, j, k) for which candidates on the
   other two sides close the cycle (rotation within ``max_edge_rotation_deg``, translation within
   twice ``max_edge_translation_factor * voxel``). Wrong modes of repeated structure rarely close
   cycles with right ones.
3. Greedy merging (Kruskal order: verified first, then cycle support, then fitness, then pair and
   hypothesis order, so the result does not depend on timing): a candidate between two groups
   merges them when no pair of scans across the two groups is contradicted under the merged poses;
   a candidate inside a group is kept as a loop closure when it agrees with the group's poses, and
   counted as a conflict otherwise. One link per pair at most.
4. Growing (:func:`grow_with_model`): the remaining groups are registered against the merged
   cloud of the placed group, seeded by every cross-pair hypothesis, and join when verified and
   unambiguous (scans with little overlap with any single scan often overlap the union well).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import open3d as o3d

from capture3d.tasks.registration.pair import PairConfig, PairResult, judge, refine
from capture3d.tasks.registration.ransac import rotation_angle_deg
from capture3d.tasks.registration.visibility import (
    RangeImage,
    VisibilityScore,
    pair_visibility,
)

logger = logging.getLogger(__name__)

_AMBIGUITY = 0.8  # a second distinct join scoring this share of the best one's agreement: ambiguous
_MIN_INTENSITY_STD = 0.02  # matched intensities varying less than this cannot test colour consistency

reg = o3d.pipelines.registration


@dataclass(frozen=True)
class VerifyConfig:
    """How candidate links and final poses are verified."""

    max_free_fraction: float  # more of a scan's observed points in another's free space: rejected
    free_space_tolerance_factor: float  # depth tolerance of the free-space test = factor * voxel
    min_observed_points: int  # fewer points in view of the other sensor: the test is not evidence
    max_edge_rotation_deg: float  # a link agrees with poses (or closes a cycle) within this rotation ...
    max_edge_translation_factor: float  # ... and this translation, as a multiple of voxel
    min_colour_correlation: float = 0.5  # coloured scans: matched points' intensities must correlate this much


@dataclass(frozen=True)
class Check:
    """What the evidence says of one relative pose between two scans."""

    verdict: bool | None  # True: verified by free space; False: contradicted; None: cannot tell
    reason: str  # why not verified ("" when verified)
    visibility: tuple[VisibilityScore, VisibilityScore] | None  # (a in b's image, b in a's image)
    colour: float | None  # correlation of matched points' intensities, None when not measurable

    @property
    def agree(self) -> int:
        """Points on the other scan's measured surfaces, both ways (0 without sensor origins)."""
        return 0 if self.visibility is None else self.visibility[0].agree + self.visibility[1].agree


@dataclass(frozen=True)
class Evidence:
    """The scans' preprocessed clouds (probes, colours) and range images, and how to judge a pose."""

    clouds: list[o3d.geometry.PointCloud]  # preprocessed, voxel-downsampled (colours where the scan has them)
    views: list[RangeImage | None]  # range image from the sensor origin, None where it is unknown
    voxel: float
    config: VerifyConfig

    def probes(self, k: int) -> np.ndarray:
        return np.asarray(self.clouds[k].points)  # (N_k, 3)

    def check(self, a: int, b: int, b_from_a: np.ndarray) -> Check:
        """Free-space test (both origins known) and colour test (both coloured) of ``b_from_a`` (4, 4)."""
        visibility = None
        verdict: bool | None = None
        reason = "no sensor origin known for one of the scans: free space cannot be checked"
        if self.views[a] is not None and self.views[b] is not None:
            visibility = pair_visibility(
                self.views[a],
                self.probes(a),
                self.views[b],
                self.probes(b),
                b_from_a,  # type: ignore[arg-type]
                self.config.free_space_tolerance_factor * self.voxel,
            )
            verdict, reason = free_space_verdict(visibility, self.config)
        colour = self._colour(a, b, b_from_a)
        if verdict is not False and colour is not None and colour < self.config.min_colour_correlation:
            verdict, reason = (
                False,
                (
                    f"the colours of matching surfaces disagree (intensity correlation {colour:.2f} "
                    f"< {self.config.min_colour_correlation:g})"
                ),
            )
        return Check(verdict, reason, visibility, colour)

    def _colour(self, a: int, b: int, b_from_a: np.ndarray) -> float | None:
        """Pearson correlation of the intensities of points matched within a voxel; None when not measurable."""
        ca, cb = self.clouds[a], self.clouds[b]
        if not (ca.has_colors() and cb.has_colors()):
            return None
        matched = np.asarray(reg.evaluate_registration(ca, cb, self.voxel, b_from_a).correspondence_set)  # (K, 2)
        if len(matched) < self.config.min_observed_points:
            return None
        ia = np.asarray(ca.colors)[matched[:, 0]].mean(axis=1)  # (K,)
        ib = np.asarray(cb.colors)[matched[:, 1]].mean(axis=1)
        if ia.std() < _MIN_INTENSITY_STD or ib.std() < _MIN_INTENSITY_STD:
            return None  # uniformly coloured surfaces say nothing
        return float(np.corrcoef(ia, ib)[0, 1])


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
    check: Check | None = None  # the evidence on this pose
    support: int = 0  # closed triplets

    @property
    def verified(self) -> bool:
        return self.check is not None and self.check.verdict is True


@dataclass
class Selection:
    """The greedy merge's outcome (indices are scan indices)."""

    poses: dict[int, np.ndarray]  # scan -> group_from_scan (4, 4) of the chosen group
    tree: list[Candidate]  # links that merged groups (of every group; see placed_links)
    loops: list[Candidate]  # links inside a group that agree with it
    rejected: list[tuple[Candidate, str]] = field(default_factory=list)  # with the reason
    conflicts: int = 0  # candidates inside a group that disagree with it
    others: list[dict[int, np.ndarray]] = field(default_factory=list)  # the other groups: scan -> group_from_scan
    joined_by_model: int = 0  # groups joined by registration against the placed model

    def placed_links(self) -> tuple[list[Candidate], list[Candidate]]:
        """(tree, loop) links between placed scans."""
        inside = [c for c in self.tree if c.source in self.poses and c.target in self.poses]
        return inside, [c for c in self.loops if c.source in self.poses and c.target in self.poses]


def _informative(score: VisibilityScore, config: VerifyConfig) -> bool:
    return score.observed >= config.min_observed_points


def free_space_verdict(
    scores: tuple[VisibilityScore, VisibilityScore], config: VerifyConfig
) -> tuple[bool | None, str]:
    """(True: verified, False: contradicted, None: not enough overlap to tell) and a reason."""
    worst = max(scores, key=lambda s: s.free_fraction if _informative(s, config) else -1.0)
    if _informative(worst, config) and worst.free_fraction > config.max_free_fraction:
        return False, (
            f"{100 * worst.free_fraction:.1f}% of the points in view lie in space the other sensor "
            f"saw as empty (> {100 * config.max_free_fraction:.1f}%)"
        )
    if any(_informative(s, config) and s.agree >= config.min_observed_points for s in scores):
        return True, ""
    return None, "too little of either scan in view of the other sensor to check free space"


def build_candidates(
    pairs: list[tuple[int, int, PairResult]], evidence: Evidence
) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """Gate-passing hypotheses as candidates (checked against the evidence), and the rejected ones."""
    kept: list[Candidate] = []
    rejected: list[tuple[Candidate, str]] = []
    for i, j, pair in pairs:
        for h, hyp in enumerate(pair.hypotheses):
            if not hyp.confident:
                continue
            cand = Candidate(i, j, h, hyp.transformation, hyp.fitness, hyp.inlier_rmse, hyp.method)
            cand.check = evidence.check(i, j, hyp.transformation)
            if cand.check.verdict is False:
                rejected.append((cand, cand.check.reason))
                continue
            kept.append(cand)
    kept = _resolve_ambiguous_pairs(kept, rejected)
    _cycle_support(kept, evidence.voxel, evidence.config)
    return kept, rejected


def _resolve_ambiguous_pairs(candidates: list[Candidate], rejected: list[tuple[Candidate, str]]) -> list[Candidate]:
    """One free-space verified hypothesis per pair at most: the one that agrees most, if it dominates.

    Two distinct poses of one pair cannot both be right. When several pass the free-space test,
    the one with most agreeing points stays if every other has under ``_AMBIGUITY`` of its
    agreement; otherwise the pair is ambiguous (symmetric structure) and all of them are rejected.
    """
    verified: dict[tuple[int, int], list[Candidate]] = {}
    for c in candidates:
        if c.verified:
            verified.setdefault((c.source, c.target), []).append(c)
    drop: set[int] = set()
    for group in verified.values():
        if len(group) < 2:
            continue
        ranked = sorted(group, key=lambda c: -c.check.agree)  # type: ignore[union-attr]
        best, second = ranked[0].check.agree, ranked[1].check.agree  # type: ignore[union-attr]
        losers = ranked if second >= _AMBIGUITY * best else ranked[1:]
        for c in losers:
            drop.add(id(c))
            rejected.append(
                (
                    c,
                    "ambiguous: another hypothesis of this pair passes the free-space test"
                    + (" with as much agreement" if c is ranked[0] else " with more agreement"),
                )
            )
    return [c for c in candidates if id(c) not in drop]


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
            for c in nodes[b_i + 1 :]:
                bc, ac = by_pair.get((b, c), []), by_pair.get((a, c), [])
                for x in ab:
                    for y in bc:
                        composed = y.transformation @ x.transformation  # c_from_a via b
                        for z in ac:
                            if _agree(composed, z.transformation, rot, trans):
                                x.support += 1
                                y.support += 1
                                z.support += 1


def _order_key(c: Candidate) -> tuple:
    return (not c.verified, -c.support, -c.fitness, c.inlier_rmse, c.source, c.target, c.hypothesis)


def greedy_merge(n: int, candidates: list[Candidate], evidence: Evidence) -> Selection:
    """Merge scans into groups along the best consistent candidates; returns the largest group."""
    config, voxel = evidence.config, evidence.voxel
    group = list(range(n))  # scan -> group id
    poses = {k: np.eye(4) for k in range(n)}  # scan -> group_from_scan (4, 4)
    tree: list[Candidate] = []
    loops: list[Candidate] = []
    rejected: list[tuple[Candidate, str]] = []
    linked: set[tuple[int, int]] = set()
    conflicts = 0
    for cand in sorted(candidates, key=_order_key):
        i, j = cand.source, cand.target
        if (i, j) in linked:
            continue
        if group[i] == group[j]:
            relative = np.linalg.inv(poses[j]) @ poses[i]
            if _agree(
                relative, cand.transformation, config.max_edge_rotation_deg, config.max_edge_translation_factor * voxel
            ):
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
        reason = _cross_check({k: poses[k] for k in members_i}, moved, evidence)[0]
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
    others = [{k: poses[k] for k in range(n) if group[k] == g} for g in sorted(set(group) - {best})]
    return Selection(
        poses={k: poses[k] for k in members},
        tree=tree,
        loops=loops,
        rejected=rejected,
        conflicts=conflicts,
        others=others,
    )


def grow_with_model(
    selection: Selection, pairs: list[tuple[int, int, PairResult]], evidence: Evidence, pair_config: PairConfig
) -> None:
    """Join the other groups to the placed one by registering each against the placed model.

    A scan (or group) whose pairwise hypotheses all missed (little overlap with any single scan)
    often overlaps the union of the placed scans well. Every hypothesis of every pair across the
    two groups, composed with the known poses, seeds multi-scale ICP of the group's merged cloud
    against the placed model. Results that pass the fitness / RMSE gates, are contradicted by no
    placed scan (free space, colour) and are free-space verified against at least one placed scan
    are scored by their agreeing points over the verified cross pairs; the best joins, with one
    tree link to the placed scan it agrees with most, unless a distinct second pose scores within
    ``_AMBIGUITY`` of it (symmetric structure: a 180-degree turn of a ring courtyard can pass every
    free-space test, with half the agreement of the true pose). Needs the sensor origins of the
    group's scans: without them nothing could verify the join, and the group stays unplaced.
    ``selection`` is updated in place.
    """
    grown = True
    while grown:
        grown = False
        for other in sorted(selection.others, key=lambda g: (-len(g), min(g))):
            if any(evidence.views[k] is None for k in other):
                continue
            joined = _join(selection.poses, other, pairs, evidence, pair_config)
            if joined is None:
                continue
            moved, link = joined
            selection.poses.update(moved)
            selection.tree.append(link)
            selection.others.remove(other)
            selection.joined_by_model += 1
            logger.info("scans %s joined by registration against the placed model", sorted(other))
            grown = True
            break


def fuse_clouds(
    clouds: list[o3d.geometry.PointCloud], poses: list[np.ndarray], voxel: float
) -> o3d.geometry.PointCloud:
    """The clouds moved by their world_from_scan poses (4, 4), merged and downsampled at ``voxel``."""
    if len(clouds) != len(poses):
        raise ValueError(f"{len(clouds)} clouds but {len(poses)} poses")
    fused = o3d.geometry.PointCloud()
    for cloud, pose in zip(clouds, poses):
        moved = o3d.geometry.PointCloud(cloud)
        moved.transform(np.asarray(pose, dtype=np.float64))
        fused += moved
    return fused.voxel_down_sample(voxel) if voxel > 0 else fused


def _join(
    main: dict[int, np.ndarray],
    other: dict[int, np.ndarray],
    pairs: list[tuple[int, int, PairResult]],
    evidence: Evidence,
    pair_config: PairConfig,
) -> tuple[dict[int, np.ndarray], Candidate] | None:
    """(other's scans in main's frame, the tree link) when an unambiguous verified join is found, else None."""
    voxel = evidence.voxel
    seeds: list[tuple[float, np.ndarray]] = []  # (hypothesis fitness, main_from_other (4, 4))
    for i, j, pair in pairs:
        for hyp in pair.hypotheses:
            if i in main and j in other:
                guess = main[i] @ np.linalg.inv(hyp.transformation) @ np.linalg.inv(other[j])
            elif j in main and i in other:
                guess = main[j] @ hyp.transformation @ np.linalg.inv(other[i])
            else:
                continue
            seeds.append((hyp.fitness, guess))
    if not seeds:
        return None
    source = fuse_clouds([evidence.clouds[k] for k in sorted(other)], [other[k] for k in sorted(other)], voxel)
    target = fuse_clouds([evidence.clouds[k] for k in sorted(main)], [main[k] for k in sorted(main)], voxel)
    tried: list[np.ndarray] = []
    passing: list[tuple[int, np.ndarray, float, float, tuple[int, int]]] = []  # agree, T, fitness, rmse, (a, b)
    for _, guess in sorted(seeds, key=lambda item: -item[0]):
        if any(_agree(guess, t, 5.0, 3.0 * voxel) for t in tried):
            continue
        tried.append(guess)
        refined = refine(source, target, guess, voxel, pair_config)
        T = np.array(refined.transformation)  # main_from_other
        if not judge(refined.fitness, refined.inlier_rmse, voxel, pair_config)[0] or any(
            _agree(T, p[1], 2.0, 2.0 * voxel) for p in passing
        ):
            continue
        moved = {k: T @ pose for k, pose in other.items()}
        reason, total, best = _cross_check(main, moved, evidence)
        if not reason and best is not None:
            passing.append((total, T, float(refined.fitness), float(refined.inlier_rmse), best))
    if not passing:
        return None
    passing.sort(key=lambda p: -p[0])
    if len(passing) > 1 and passing[1][0] >= _AMBIGUITY * passing[0][0]:
        logger.warning(
            "scans %s: %d distinct poses against the placed model pass every check (agreement %d vs %d):"
            " ambiguous, left unplaced",
            sorted(other),
            len(passing),
            passing[0][0],
            passing[1][0],
        )
        return None
    _, T, fitness, rmse, (a, b) = passing[0]
    moved = {k: T @ pose for k, pose in other.items()}
    s, t = min(a, b), max(a, b)
    pose_s, pose_t = (main[s] if s in main else moved[s]), (main[t] if t in main else moved[t])
    link = Candidate(s, t, -1, np.linalg.inv(pose_t) @ pose_s, fitness, rmse, "model+icp")
    link.check = evidence.check(s, t, link.transformation)
    return moved, link


def _cross_check(
    placed: dict[int, np.ndarray], moved: dict[int, np.ndarray], evidence: Evidence
) -> tuple[str, int, tuple[int, int] | None]:
    """Check every pair across two groups whose poses share a frame.

    Returns ("" or the first contradiction, agreeing points over the verified pairs, the verified
    pair (placed scan, moved scan) that agrees most or None).
    """
    total, best, best_agree = 0, None, -1
    for a in sorted(placed):
        for b in sorted(moved):
            check = evidence.check(b, a, np.linalg.inv(placed[a]) @ moved[b])  # a_from_b
            if check.verdict is False:
                return f"merging would put scans {b} and {a} in conflict: {check.reason}", 0, None
            if check.verdict is True:
                total += check.agree
                if check.agree > best_agree:
                    best, best_agree = (a, b), check.agree
    return "", total, best


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
