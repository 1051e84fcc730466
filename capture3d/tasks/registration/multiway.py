"""Multiway registration of N scans: pair hypotheses, verified links, a pose graph, checked poses.

Inputs: scan names, their preprocessed clouds (with normals, voxel-downsampled at ``voxel``), their
per-point features (N_i, D) float32, optionally each scan's range image from its sensor origin
(:class:`~capture3d.tasks.registration.visibility.RangeImage`, None where the origin is unknown), a
:class:`~capture3d.tasks.registration.pair.PairConfig` and a :class:`MultiwayConfig`. Outputs: a
:class:`MultiwayResult` with world_from_scan (4, 4) poses of the scans that could be placed (world =
the reference scan's frame: scan 0 unless scan 0 is not in the placed group), each placed scan's
confidence (``high``: its pose is confirmed by a free-space test or by a cycle of agreeing links;
``low``: it hangs on one link nothing else confirms, with the reason), the scans that could not be
placed and why, every pair attempted, the links used, and timings. :func:`fuse_clouds` merges
placed clouds. Nothing is written.

Method (pose graphs after Choi, Zhou & Koltun 2015 and Open3D's multiway tutorial; link choice by
free-space consistency as in range-image registration, and by cycle consistency):

1. Register every candidate pair (source i -> target j, i < j): several distinct global hypotheses,
   each refined by ICP (:func:`~capture3d.tasks.registration.pair.register_pair`). Candidates
   (``pairs``): ``all`` pairs up to ``max_all_pairs_scans`` scans, above that (or with
   ``scalable``) O(N * k) pairs: sequential odometry pairs within ``window``, then loop closures
   (:mod:`~capture3d.tasks.registration.candidates`): the scans' predicted overlap in the frames a
   first selection of verified odometry links gives, and global-descriptor retrieval for scans
   odometry left outside the largest group; ``sequential``: the odometry pairs only.
2. Choose links (:mod:`capture3d.tasks.registration.graph`): hypotheses that put one scan's
   surfaces into space the other sensor saw as empty are rejected; the rest are merged greedily,
   free-space verified and cycle-supported ones first, each merge checked across the two groups.
   The largest group is placed; the others are reported unplaced.
3. Initial poses from the merge tree; tree links are odometry edges (``uncertain=False``), the
   agreeing extra links loop closures (``uncertain=True``) that Open3D's line process may prune.
   ``global_optimization`` (Levenberg-Marquardt) with the reference node fixed.
4. Checks of the optimised poses: every link must still agree with its pair estimate within
   ``max_edge_rotation_deg`` / ``max_edge_translation_factor * voxel`` (scans cut off from the
   reference by dropped links are unplaced), and every two placed scans with known sensor origins
   must stay free-space consistent (the scan with most violations is unplaced until none remain).
5. Confidence per placed scan (above); a capture with any low-confidence or unplaced scan is
   ``partial`` in the stage's metrics.

Open3D pose-graph conventions (verified numerically): a node's pose is world_from_scan; an edge
(s, t, T) has T = target_from_source = inv(pose_t) @ pose_s, the same direction as a pairwise
registration of source s onto target t; pruned edges are removed from ``pose_graph.edges``.

``preference_loop_closure`` defaults to 2.0 in this project's settings: every link here is a
verified hypothesis, so loop closures are as trustworthy as the tree edges (Open3D's 0.1 is meant
for odometry-heavy RGB-D graphs whose loop closures are noisy).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import open3d as o3d

from capture3d.progress import report as report_progress
from capture3d.tasks.registration.candidates import (
    descriptor_neighbours,
    global_descriptors,
    overlap_neighbours,
    sequential_pairs,
)
from capture3d.tasks.registration.graph import (
    Candidate,
    Check,
    Evidence,
    VerifyConfig,
    bridges,
    build_candidates,
    component,
    greedy_merge,
    grow_with_model,
)
from capture3d.tasks.registration.pair import (
    PairConfig,
    PairResult,
    information_matrix,
    register_pair,
)
from capture3d.tasks.registration.visibility import RangeImage

logger = logging.getLogger(__name__)

reg = o3d.pipelines.registration


@dataclass(frozen=True)
class MultiwayConfig:
    """Settings of multiway registration and of the verification of its links and poses."""

    pairs: Literal["all", "sequential", "scalable"]
    """all pairs (the scalable candidates above max_all_pairs_scans), sequential (neighbours within
    window) or scalable (sequential odometry plus loop closures, O(N * k) pairs)"""
    window: int
    """neighbour distance of the sequential (odometry) pairs"""
    max_all_pairs_scans: int
    """pairs all switches to the scalable candidates above this many scans"""
    edge_prune_threshold: float
    """line-process weight below which a loop closure is pruned"""
    preference_loop_closure: float
    """Open3D's loop-closure preference (2.0 here, see the module docstring)"""
    max_correspondence_factor: float
    """pose-graph optimisation max_correspondence_distance = factor * voxel"""
    max_edge_rotation_deg: float = 5.0
    """optimised vs pairwise relative pose must agree within this rotation, degrees ..."""
    max_edge_translation_factor: float = 3.0
    """... and this many voxels, else the edge is dropped"""
    max_free_fraction: float = 0.03
    """free-space test: more observed points in the other sensor's empty space fail"""
    free_space_tolerance_factor: float = 2.0
    """free-space test depth tolerance = factor * voxel"""
    min_observed_points: int = 100
    """points in view of the other sensor the free-space test needs"""
    min_colour_correlation: float = 0.5
    """coloured scans: intensities of matched points must correlate this much"""
    loop_closure_top_k: int = 2
    """scalable: per scan, this many loop-closure partners by predicted overlap after odometry"""
    loop_closure_min_overlap: float = 0.3
    """scalable: predicted overlap (shared coarse cells / the smaller scan's) a loop closure needs"""
    loop_closure_cell_factor: float = 10.0
    """scalable: the coarse grid of the overlap prediction is factor * voxel (tolerates odometry drift)"""
    descriptor_top_k: int = 3
    """scalable: per scan odometry left outside the main group, this many partners by global descriptor"""
    loop_closure_rounds: int = 2
    """scalable: rounds of loop-closure search (the later ones only for scans still outside the main group)"""

    def verify(self) -> VerifyConfig:
        return VerifyConfig(
            self.max_free_fraction,
            self.free_space_tolerance_factor,
            self.min_observed_points,
            self.max_edge_rotation_deg,
            self.max_edge_translation_factor,
            self.min_colour_correlation,
        )


@dataclass
class MultiwayResult:
    """Placed scans' poses and confidence, unplaced scans with reasons, pairs, links used, timings."""

    poses: dict[str, np.ndarray]  # name -> world_from_scan (4, 4), world = the reference scan's frame
    unplaced: dict[str, str]  # name -> reason
    pairs: list[PairResult]  # every pair attempted
    kept_edges: list[tuple[str, str]]  # (source, target) links of the final pose graph
    seconds: dict[str, float] = field(default_factory=dict)  # pairs_s, verify_s, optimize_s, total_s
    reference: str = ""  # the scan whose frame is the world
    confidence: dict[str, str] = field(default_factory=dict)  # placed name -> "high" | "low"
    low_confidence: dict[str, str] = field(default_factory=dict)  # name -> why its pose is not confirmed
    verification: dict[str, object] = field(default_factory=dict)  # counts of the checks (metrics.json)


def pair_mode(n: int, config: MultiwayConfig) -> Literal["all", "sequential", "scalable"]:
    """The candidate scheme used for ``n`` scans: ``all`` becomes ``scalable`` above ``max_all_pairs_scans``."""
    if config.pairs == "all" and n > config.max_all_pairs_scans:
        return "scalable"
    return config.pairs


def candidate_pairs(n: int, config: MultiwayConfig) -> list[tuple[int, int]]:
    """(source, target) index pairs with source < target registered first, per :func:`pair_mode`.

    ``all``: every pair; ``sequential`` and ``scalable``: the odometry pairs (neighbours within
    ``window``); ``scalable`` adds loop closures once these are registered (:func:`_loop_closures`).
    """
    mode = pair_mode(n, config)
    if mode == "all":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if config.pairs == "all":
        logger.info(
            "%d scans > max_all_pairs_scans %d: sequential pairs within %d, then loop closures",
            n,
            config.max_all_pairs_scans,
            config.window,
        )
    return sequential_pairs(n, config.window)


def register_multiway(
    names: list[str],
    clouds: list[o3d.geometry.PointCloud],
    features: list[np.ndarray],
    voxel: float,
    pair_config: PairConfig,
    config: MultiwayConfig,
    views: list[RangeImage | None] | None = None,
) -> MultiwayResult:
    """Register ``clouds`` into one frame; see the module docstring for the method."""
    if not (len(names) == len(clouds) == len(features)) or not names:
        raise ValueError("names, clouds and features must be non-empty lists of the same length")
    n = len(names)
    views = list(views) if views is not None else [None] * n
    if len(views) != n:
        raise ValueError(f"{len(views)} range images for {n} scans")
    t_start = time.perf_counter()
    evidence = Evidence(clouds, views, voxel, config.verify())
    index_pairs = candidate_pairs(n, config)
    pairs = _register_pairs(index_pairs, names, clouds, features, voxel, pair_config)
    sources = {"all" if pair_mode(n, config) == "all" else "sequential": len(index_pairs)}
    if pair_mode(n, config) == "scalable":
        rounds = _loop_closures(index_pairs, pairs, names, clouds, features, voxel, pair_config, config, evidence)
        sources.update(rounds)
    t_pairs = time.perf_counter()

    indexed = [(i, j, p) for (i, j), p in zip(index_pairs, pairs)]
    candidates, rejected = build_candidates(indexed, evidence)
    selection = greedy_merge(n, candidates, evidence)
    grow_with_model(selection, indexed, evidence, pair_config)
    t_select = time.perf_counter()
    tree, loops = selection.placed_links()
    reference = 0 if 0 in selection.poses else _most_linked(selection.poses, tree + loops)
    anchor = np.linalg.inv(selection.poses[reference])
    poses = {k: anchor @ T for k, T in selection.poses.items()}
    kept = _optimise(poses, reference, tree, loops, clouds, voxel, config)
    t_opt = time.perf_counter()
    placed, kept, dropped = _check_links(reference, poses, kept, voxel, config, names)
    checks = _final_checks(placed, poses, evidence)
    placed, free_unplaced = _check_final_poses(reference, placed, kept, checks, names)
    kept = [e for e in kept if e[0] in placed and e[1] in placed]
    confidence, low = _confidence(reference, placed, kept, checks, evidence)
    t_end = time.perf_counter()

    unplaced = {
        names[k]: _unplaced_reason(
            k, names, index_pairs, pairs, candidates, rejected, selection.poses, dropped, free_unplaced
        )
        for k in range(n)
        if k not in placed
    }
    for name, reason in unplaced.items():
        logger.warning("scan %s unplaced: %s", name, reason)
    for k, reason in sorted(low.items()):
        logger.warning("scan %s placed with low confidence: %s", names[k], reason)
    logger.info(
        "multiway: %d/%d scans placed in %s's frame (%d low confidence), %d links kept, "
        "%d hypotheses rejected by free space or colour",
        len(placed),
        n,
        names[reference],
        len(low),
        len(kept),
        len(rejected) + len(selection.rejected),
    )
    with_view = sum(v is not None for v in views)
    return MultiwayResult(
        poses={names[k]: poses[k] for k in sorted(placed)},
        unplaced=unplaced,
        pairs=pairs,
        kept_edges=[(names[i], names[j]) for i, j in kept],
        seconds={
            "pairs_s": t_pairs - t_start,
            "verify_s": (t_select - t_pairs) + (t_end - t_opt),
            "optimize_s": t_opt - t_select,
            "total_s": t_end - t_start,
        },
        reference=names[reference],
        confidence={names[k]: confidence[k] for k in sorted(placed)},
        low_confidence={names[k]: r for k, r in sorted(low.items())},
        verification={
            "free_space_test": "used"
            if with_view >= 2
            else "not possible: fewer than two scans have a known "
            "sensor origin (fell back to the fitness/RMSE gates and cycle consistency)",
            "scans_with_sensor_origin": with_view,
            "colour_test": "used"
            if sum(c.has_colors() for c in clouds) >= 2
            else "not possible: scans without colours",
            "num_hypotheses": int(sum(len(p.hypotheses) for p in pairs)),
            "num_candidate_links": len(candidates),
            "num_rejected_by_free_space_or_colour": len(rejected),
            "num_merges_rejected": len(selection.rejected),
            "num_conflicting_links": selection.conflicts,
            "num_tree_links": len(tree),
            "num_loop_links": len(loops),
            "num_groups_joined_by_model": selection.joined_by_model,
            "pairs_mode": pair_mode(n, config),
            "num_pairs_by_source": sources,
        },
    )


def _register_pairs(
    index_pairs: list[tuple[int, int]],
    names: list[str],
    clouds: list[o3d.geometry.PointCloud],
    features: list[np.ndarray],
    voxel: float,
    pair_config: PairConfig,
) -> list[PairResult]:
    """Every (source, target) pair of ``index_pairs`` registered, in order."""
    pairs: list[PairResult] = []
    for count, (i, j) in enumerate(index_pairs, start=1):
        pairs.append(
            register_pair(names[i], clouds[i], features[i], names[j], clouds[j], features[j], voxel, pair_config)
        )
        report_progress(logger, "register scans (pairs)", count, len(index_pairs))
    return pairs


def _loop_closures(
    index_pairs: list[tuple[int, int]],
    pairs: list[PairResult],
    names: list[str],
    clouds: list[o3d.geometry.PointCloud],
    features: list[np.ndarray],
    voxel: float,
    pair_config: PairConfig,
    config: MultiwayConfig,
    evidence: Evidence,
) -> dict[str, int]:
    """Scalable candidates: add loop-closure pairs to ``index_pairs`` / ``pairs`` (in place), O(N * k).

    Each round selects verified links among the pairs registered so far (as the final selection
    does, without growing), which gives groups of scans in one odometry frame each. Per scan, the
    ``loop_closure_top_k`` untried partners of its group with most predicted overlap
    (:func:`~capture3d.tasks.registration.candidates.overlap_neighbours`; in round 1 every scan, later
    only the scans that were outside the largest group the round before), and per scan outside the
    largest group the ``descriptor_top_k`` most similar untried scans of other groups
    (:func:`~capture3d.tasks.registration.candidates.descriptor_neighbours`). At most
    ``loop_closure_rounds * N * (loop_closure_top_k + descriptor_top_k)`` loop-closure pairs.
    Returns the number of pairs added per source.
    """
    n = len(names)
    counts = {"loop_closure_overlap": 0, "loop_closure_descriptor": 0}
    descriptors = global_descriptors(features)
    points = [np.asarray(c.points) for c in clouds]
    seekers: set[int] | None = None  # round 1: every scan seeks overlap partners
    for round_index in range(max(0, config.loop_closure_rounds)):
        indexed = [(i, j, p) for (i, j), p in zip(index_pairs, pairs)]
        selection = greedy_merge(n, build_candidates(indexed, evidence)[0], evidence)
        groups = [selection.poses, *selection.others]
        tried = set(index_pairs)
        cell = config.loop_closure_cell_factor * voxel
        near = overlap_neighbours(
            points, groups, cell, config.loop_closure_top_k, config.loop_closure_min_overlap, tried, seekers
        )
        group_of = {k: g for g, group in enumerate(groups) for k in group}
        outside = [k for k in range(n) if k not in selection.poses]
        allowed = {q: {k for k in range(n) if group_of[k] != group_of[q]} for q in outside}
        similar = descriptor_neighbours(descriptors, outside, allowed, config.descriptor_top_k, tried | set(near))
        new = near + similar
        logger.info(
            "loop closures, round %d: %d scans in the largest group, %d pairs by predicted overlap, %d by descriptor",
            round_index + 1,
            len(selection.poses),
            len(near),
            len(similar),
        )
        if not new:
            break
        seekers = set(outside)  # later rounds: the scans outside the largest group seek partners where they land
        index_pairs.extend(new)
        pairs.extend(_register_pairs(new, names, clouds, features, voxel, pair_config))
        counts["loop_closure_overlap"] += len(near)
        counts["loop_closure_descriptor"] += len(similar)
    return counts


# ----------------------------------------------------------------------------- graph helpers


def _most_linked(poses: dict[int, np.ndarray], links: list[Candidate]) -> int:
    """The scan with most links (lowest index on ties)."""
    return max(sorted(poses), key=lambda k: sum(k in (c.source, c.target) for c in links))


def _optimise(
    poses: dict[int, np.ndarray],
    reference: int,
    tree: list[Candidate],
    loops: list[Candidate],
    clouds: list[o3d.geometry.PointCloud],
    voxel: float,
    config: MultiwayConfig,
) -> list[tuple[int, int, np.ndarray]]:
    """Optimise ``poses`` in place; returns the surviving links (source, target, pair T (4, 4))."""
    if len(poses) < 2:
        return []
    order = sorted(poses)
    node = {k: i for i, k in enumerate(order)}  # scan index -> pose-graph node id
    graph = reg.PoseGraph()
    for k in order:
        graph.nodes.append(reg.PoseGraphNode(poses[k]))
    distance = config.max_correspondence_factor * voxel
    for cand, uncertain in [(c, False) for c in tree] + [(c, True) for c in loops]:
        info = information_matrix(clouds[cand.source], clouds[cand.target], cand.transformation, distance)
        graph.edges.append(
            reg.PoseGraphEdge(node[cand.source], node[cand.target], cand.transformation, info, uncertain=uncertain)
        )
    option = reg.GlobalOptimizationOption(
        max_correspondence_distance=distance,
        edge_prune_threshold=config.edge_prune_threshold,
        preference_loop_closure=config.preference_loop_closure,
        reference_node=node[reference],
    )
    before = {(e.source_node_id, e.target_node_id) for e in graph.edges}
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        reg.global_optimization(
            graph, reg.GlobalOptimizationLevenbergMarquardt(), reg.GlobalOptimizationConvergenceCriteria(), option
        )
    after = {(e.source_node_id, e.target_node_id) for e in graph.edges}
    for s, t in sorted(before - after):
        logger.info("loop closure %d -> %d pruned by the line process", order[s], order[t])
    anchor = np.linalg.inv(np.asarray(graph.nodes[node[reference]].pose))  # identity up to round-off
    for k in order:
        poses[k] = anchor @ np.asarray(graph.nodes[node[k]].pose)
    return [(order[e.source_node_id], order[e.target_node_id], np.asarray(e.transformation)) for e in graph.edges]


def _check_links(
    reference: int,
    poses: dict[int, np.ndarray],
    kept: list[tuple[int, int, np.ndarray]],
    voxel: float,
    config: MultiwayConfig,
    names: list[str],
) -> tuple[set[int], list[tuple[int, int]], set[int]]:
    """(placed scans, agreeing links, scans cut off by disagreeing links): links must fit the optimised poses."""
    agreeing = []
    for i, j, T in kept:
        angle, shift = rigid_difference(np.linalg.inv(poses[j]) @ poses[i], T)
        if angle <= config.max_edge_rotation_deg and shift <= config.max_edge_translation_factor * voxel:
            agreeing.append((i, j))
        else:
            logger.warning(
                "link %s -> %s dropped: optimised pose differs from the pair by %.2f deg, %.4g",
                names[i],
                names[j],
                angle,
                shift,
            )
    placed = component(reference, agreeing) if len(poses) > 1 else {reference}
    dropped = set(poses) - placed
    return placed, [e for e in agreeing if e[0] in placed], dropped


def _final_checks(placed: set[int], poses: dict[int, np.ndarray], evidence: Evidence) -> dict[tuple[int, int], Check]:
    """(a, b) with a < b -> the evidence on the optimised relative pose, for every two placed scans.

    The poses do not change after optimisation, so each pair is checked once (O(N^2) checks of a
    few milliseconds; the pairs registered are O(N * k)).
    """
    ordered = sorted(placed)
    return {
        (a, b): evidence.check(a, b, np.linalg.inv(poses[b]) @ poses[a])
        for x, a in enumerate(ordered)
        for b in ordered[x + 1 :]
    }


def _check_final_poses(
    reference: int,
    placed: set[int],
    links: list[tuple[int, int]],
    checks: dict[tuple[int, int], Check],
    names: list[str],
) -> tuple[set[int], dict[int, str]]:
    """Unplace the scans whose optimised poses another scan's evidence contradicts, worst first."""
    placed = set(placed)
    removed: dict[int, str] = {}
    while True:
        violations: dict[int, list[tuple[int, str]]] = {}
        ordered = sorted(placed)
        for x, a in enumerate(ordered):
            for b in ordered[x + 1 :]:
                check = checks[(a, b)]
                if check.verdict is False:
                    violations.setdefault(a, []).append((b, check.reason))
                    violations.setdefault(b, []).append((a, check.reason))
        blamed = sorted(k for k in violations if k != reference)
        if not blamed:
            return placed, removed
        worst = max(blamed, key=lambda k: len(violations[k]))
        other, reason = violations[worst][0]
        removed[worst] = f"its optimised pose conflicts with scan {names[other]}: {reason}"
        logger.warning("scan %s unplaced: %s", names[worst], removed[worst])
        placed.discard(worst)
        cut_off = placed - component(reference, [e for e in links if e[0] in placed and e[1] in placed])
        for k in sorted(cut_off):
            removed[k] = f"its only links to the reference scan went through scan {names[worst]}, which was unplaced"
        placed -= cut_off


def _confidence(
    reference: int,
    placed: set[int],
    links: list[tuple[int, int]],
    checks: dict[tuple[int, int], Check],
    evidence: Evidence,
) -> tuple[dict[int, str], dict[int, str]]:
    """("high" | "low" per placed scan, the reasons of the low ones).

    High: the reference itself; a scan with a free-space verified overlap with another placed scan
    (both sensor origins known, enough points in view, surfaces agreeing and none in free space);
    or a scan that stays connected to the reference when any single link is removed (a cycle of
    agreeing links confirms it).
    """
    inner = [e for e in links if e[0] in placed and e[1] in placed]
    cut_edges = bridges(inner)
    confidence: dict[int, str] = {}
    low: dict[int, str] = {}
    for k in sorted(placed):
        if k == reference:
            confidence[k] = "high"
            continue
        verified = evidence.views[k] is not None and any(
            checks[(min(k, other), max(k, other))].verdict is True
            for other in sorted(placed - {k})
            if evidence.views[other] is not None
        )
        on_cycle = all(reference in component(k, [e for e in inner if e != b]) for b in cut_edges)
        if verified or on_cycle:
            confidence[k] = "high"
        else:
            confidence[k] = "low"
            low[k] = (
                "placed through a single link that neither a cycle of other links nor a free-space test "
                "confirms" + ("" if evidence.views[k] is not None else " (no sensor origin known for it)")
            )
    return confidence, low


def _unplaced_reason(
    k: int,
    names: list[str],
    index_pairs: list[tuple[int, int]],
    pairs: list[PairResult],
    candidates: list[Candidate],
    rejected: list[tuple[Candidate, str]],
    grouped: dict[int, np.ndarray],
    dropped: set[int],
    free_unplaced: dict[int, str],
) -> str:
    """Why scan ``k`` has no pose."""
    if k in free_unplaced:
        return free_unplaced[k]
    own = [(j if i == k else i, p) for (i, j), p in zip(index_pairs, pairs) if k in (i, j)]
    if not own:
        return "no pair was attempted with it"
    if not any(h.confident for _, p in own for h in p.hypotheses):
        other, best = max(own, key=lambda item: item[1].fitness)
        return f"no confident pair with any scan (best fitness {best.fitness:.3f} with {names[other]}: {best.reason})"
    mine = [r for c, r in rejected if k in (c.source, c.target)]
    if not any(k in (c.source, c.target) for c in candidates) and mine:
        return f"every confident hypothesis of its pairs failed the free-space or colour test ({mine[0]})"
    if k in dropped:
        return "its links to the reference scan disagreed with the optimised poses"
    if k not in grouped:
        return "its verified links do not connect it to the largest group of scans"
    return "its links to the reference scan were pruned"


def rigid_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(rotation angle in degrees, translation distance) between two (4, 4) rigid transforms."""
    rotation = a[:3, :3] @ b[:3, :3].T  # (3, 3)
    cos = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos))), float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
