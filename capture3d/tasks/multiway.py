"""Multiway registration of N scans: pairwise registration, a pose graph, global optimisation.

Inputs: scan names, their preprocessed clouds (with normals, voxel-downsampled at ``voxel``), their
per-point features (N_i, D) float32, a :class:`~capture3d.tasks.register_pair.PairConfig` and a
:class:`MultiwayConfig`. Outputs: a :class:`MultiwayResult` with world_from_scan (4, 4) poses of
the scans that could be placed (world = the reference scan's frame: scan 0 unless scan 0 has no
confident pair), the scans that could not and why, every pair attempted, the pose-graph edges
that survived, and timings. :func:`fuse_clouds` merges placed clouds. Nothing is written.

Method (Choi, Zhou & Koltun 2015; Open3D's multiway registration tutorial):

1. Register every candidate pair (source i -> target j, i < j) with global registration + ICP.
2. Keep the confident pairs as graph edges. The reference is scan 0, or, when scan 0 has no
   confident pair, the scan with the most confident pairs (scan 0 is then reported unplaced).
3. Initial poses come from a maximum spanning tree (weight = fitness) of the confident edges
   grown from the reference, not from the i -> i+1 chain: scans need not be ordered, and one bad
   link would corrupt every pose after it. Tree edges are odometry edges (``uncertain=False``),
   the other confident edges loop closures (``uncertain=True``) that Open3D's line process may
   prune (``edge_prune_threshold``).
4. ``global_optimization`` (Levenberg-Marquardt) with the reference node fixed.
5. Every surviving edge is checked: the optimised relative pose must agree with its pair estimate
   within ``max_edge_rotation_deg`` / ``max_edge_translation_factor * voxel``; disagreeing edges are
   dropped. A scan is placed when it is connected to the reference through the remaining edges;
   the others are reported unplaced with a reason rather than given a doubtful pose.

Open3D pose-graph conventions (verified numerically): a node's pose is world_from_scan; an edge
(s, t, T) has T = target_from_source = inv(pose_t) @ pose_s, the same direction as a pairwise
registration of source s onto target t; pruned edges are removed from ``pose_graph.edges``.

``preference_loop_closure`` defaults to 2.0 in this project's settings: all edges here come from
gated global registration + ICP, so loop closures are as trustworthy as the tree edges (Open3D's
0.1 is meant for odometry-heavy RGB-D graphs whose loop closures are noisy).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import open3d as o3d

from capture3d.progress import report as report_progress
from capture3d.tasks.register_pair import PairConfig, PairResult, register_pair

logger = logging.getLogger(__name__)

reg = o3d.pipelines.registration


@dataclass(frozen=True)
class MultiwayConfig:
    """Settings of multiway registration."""

    pairs: Literal["all", "sequential"]  # all pairs, or neighbours within `window`
    window: int  # neighbour distance for "sequential"
    max_all_pairs_scans: int  # "all" falls back to "sequential" above this many scans
    edge_prune_threshold: float  # line-process weight below which a loop closure is pruned
    preference_loop_closure: float  # Open3D's loop-closure preference (2.0 here, see module doc)
    max_correspondence_factor: float  # optimisation max_correspondence_distance = factor * voxel
    max_edge_rotation_deg: float = 5.0  # optimised vs pairwise relative pose: rotation tolerance
    max_edge_translation_factor: float = 3.0  # ... and translation tolerance, as a multiple of voxel


@dataclass
class MultiwayResult:
    """Placed scans' poses, unplaced scans with reasons, pairs, surviving edges, timings."""

    poses: dict[str, np.ndarray]  # name -> world_from_scan (4, 4), world = the reference scan's frame
    unplaced: dict[str, str]  # name -> reason
    pairs: list[PairResult]  # every pair attempted
    kept_edges: list[tuple[str, str]]  # (source, target) edges that survived pruning and checks
    seconds: dict[str, float] = field(default_factory=dict)  # pairs_s, optimize_s, total_s
    reference: str = ""  # the scan whose frame is the world


def candidate_pairs(n: int, config: MultiwayConfig) -> list[tuple[int, int]]:
    """(source, target) index pairs with source < target to register, per ``config.pairs``."""
    if config.pairs == "all" and n <= config.max_all_pairs_scans:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if config.pairs == "all":
        logger.info("%d scans > max_all_pairs_scans %d: sequential pairs within %d", n,
                    config.max_all_pairs_scans, config.window)
    window = max(1, config.window)
    return [(i, j) for i in range(n) for j in range(i + 1, min(n, i + window + 1))]


def register_multiway(
    names: list[str],
    clouds: list[o3d.geometry.PointCloud],
    features: list[np.ndarray],
    voxel: float,
    pair_config: PairConfig,
    config: MultiwayConfig,
) -> MultiwayResult:
    """Register ``clouds`` into one frame; see the module docstring for the method."""
    if not (len(names) == len(clouds) == len(features)) or not names:
        raise ValueError("names, clouds and features must be non-empty lists of the same length")
    t_start = time.perf_counter()
    n = len(names)
    pairs: list[PairResult] = []
    index_pairs = candidate_pairs(n, config)
    for count, (i, j) in enumerate(index_pairs, start=1):
        pairs.append(register_pair(names[i], clouds[i], features[i], names[j], clouds[j], features[j],
                                   voxel, pair_config))
        report_progress(logger, "register scans (pairs)", count, len(index_pairs))
    t_pairs = time.perf_counter()

    edges = [(i, j, p) for (i, j), p in zip(index_pairs, pairs) if p.confident]
    reference = _reference(n, edges)
    tree = _max_spanning_tree(reference, edges)
    initial = _tree_poses(reference, tree)  # index -> world_from_scan (4, 4)
    kept = _optimise(initial, reference, tree, edges, voxel, config)
    reference, poses, kept = _check_and_place(reference, initial, kept, voxel, config, names, edges)
    t_end = time.perf_counter()

    unplaced = {names[k]: _unplaced_reason(k, names, index_pairs, pairs, initial)
                for k in range(n) if k not in poses}
    for name, reason in unplaced.items():
        logger.warning("scan %s unplaced: %s", name, reason)
    logger.info("multiway: %d/%d scans placed in %s's frame, %d/%d confident edges kept",
                len(poses), n, names[reference], len(kept), len(edges))
    return MultiwayResult(
        poses={names[k]: pose for k, pose in sorted(poses.items())},
        unplaced=unplaced,
        pairs=pairs,
        kept_edges=[(names[i], names[j]) for i, j in kept],
        seconds={"pairs_s": t_pairs - t_start, "optimize_s": t_end - t_pairs, "total_s": t_end - t_start},
        reference=names[reference],
    )


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


# ----------------------------------------------------------------------------- graph helpers

Edge = tuple[int, int, PairResult]  # (source index, target index, its confident pair result)


def _reference(n: int, edges: list[Edge]) -> int:
    """Scan 0 when it has a confident edge, else the scan with most of them (lowest index on ties)."""
    degree = np.zeros(n, dtype=int)  # (n,)
    for i, j, _ in edges:
        degree[i] += 1
        degree[j] += 1
    if degree[0] > 0 or degree.max() == 0:
        return 0
    return int(np.argmax(degree))


def _max_spanning_tree(reference: int, edges: list[Edge]) -> list[Edge]:
    """Prim's maximum spanning tree (weight = fitness) of the reference's component."""
    in_tree = {reference}
    tree: list[Edge] = []
    while True:
        frontier = [e for e in edges if (e[0] in in_tree) != (e[1] in in_tree)]
        if not frontier:
            return tree
        best = max(frontier, key=lambda e: (e[2].fitness, -e[2].inlier_rmse))
        tree.append(best)
        in_tree.update(best[:2])


def _tree_poses(reference: int, tree: list[Edge]) -> dict[int, np.ndarray]:
    """world_from_scan (4, 4) of the tree's scans, composed along the tree from the reference."""
    poses = {reference: np.eye(4)}
    for i, j, pair in tree:  # Prim's order: one end is always placed already
        if i in poses:  # T maps i into j: pose_j = pose_i @ inv(T)
            poses[j] = poses[i] @ np.linalg.inv(pair.transformation)
        else:
            poses[i] = poses[j] @ pair.transformation
    return poses


def _optimise(
    poses: dict[int, np.ndarray], reference: int, tree: list[Edge], edges: list[Edge], voxel: float,
    config: MultiwayConfig,
) -> list[tuple[int, int, np.ndarray]]:
    """Optimise ``poses`` in place; returns the surviving edges (source, target, pair T (4, 4))."""
    if len(poses) < 2:
        return []
    order = sorted(poses)
    node = {k: i for i, k in enumerate(order)}  # scan index -> pose-graph node id
    tree_keys = {(i, j) for i, j, _ in tree}
    graph = reg.PoseGraph()
    for k in order:
        graph.nodes.append(reg.PoseGraphNode(poses[k]))
    for i, j, pair in edges:
        if i in node and j in node:
            graph.edges.append(reg.PoseGraphEdge(node[i], node[j], pair.transformation, pair.information,
                                                 uncertain=(i, j) not in tree_keys))
    option = reg.GlobalOptimizationOption(
        max_correspondence_distance=config.max_correspondence_factor * voxel,
        edge_prune_threshold=config.edge_prune_threshold,
        preference_loop_closure=config.preference_loop_closure,
        reference_node=node[reference],
    )
    before = {(e.source_node_id, e.target_node_id) for e in graph.edges}
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        reg.global_optimization(graph, reg.GlobalOptimizationLevenbergMarquardt(),
                                reg.GlobalOptimizationConvergenceCriteria(), option)
    after = {(e.source_node_id, e.target_node_id) for e in graph.edges}
    for s, t in sorted(before - after):
        logger.info("loop closure %d -> %d pruned by the line process", order[s], order[t])
    anchor = np.linalg.inv(np.asarray(graph.nodes[node[reference]].pose))  # identity up to round-off
    for k in order:
        poses[k] = anchor @ np.asarray(graph.nodes[node[k]].pose)
    return [(order[e.source_node_id], order[e.target_node_id], np.asarray(e.transformation)) for e in graph.edges]


def _check_and_place(
    reference: int, poses: dict[int, np.ndarray], kept: list[tuple[int, int, np.ndarray]], voxel: float,
    config: MultiwayConfig, names: list[str], edges: list[Edge] | None = None,
) -> tuple[int, dict[int, np.ndarray], list[tuple[int, int]]]:
    """Keep the edges that agree with the optimised poses and the scans they connect to the reference.

    A confident pair that disagrees with the optimised poses means some link on the cycle it closes
    is wrong. Links on that cycle that are bridges (the only connection between two groups of
    scans) cannot be checked by any other pair, so they are cut: the scans behind them are left
    unplaced instead of being given a pose that nothing confirms and something contradicts.
    """
    agreeing = [(i, j) for i, j, T in kept if _agrees(poses, i, j, T, voxel, config, names)]
    kept_keys = {(i, j) for i, j, _ in kept}
    contradicting = [(i, j) for i, j, pair in (edges or [])
                     if i in poses and j in poses and ((i, j) not in kept_keys
                                                       or (i, j) not in agreeing)
                     and not _agrees(poses, i, j, pair.transformation, voxel, config, names, log=False)]
    bridges = {e for e in agreeing if _is_bridge(e, agreeing)}
    cut: set[tuple[int, int]] = set()
    for a, b in contradicting:
        for edge in _path_edges(a, b, agreeing):
            if edge in bridges and edge not in cut:
                cut.add(edge)
                logger.warning("link %s -> %s cut: it is the only link on a cycle that pair %s -> %s contradicts",
                               names[edge[0]], names[edge[1]], names[a], names[b])
    trusted = [e for e in agreeing if e not in cut]
    component = _component(reference, trusted)
    for k in sorted(poses):  # a cut may leave the reference in the smaller part: keep the largest
        other = _component(k, trusted)
        if len(other) > len(component):
            component = other
    if reference not in component:
        new_reference = max(sorted(component), key=lambda k: sum(k in e for e in trusted))
        logger.warning("reference %s cut off; scans are placed in %s's frame", names[reference], names[new_reference])
        anchor = np.linalg.inv(poses[new_reference])
        poses = {k: anchor @ poses[k] for k in component}
        reference = new_reference
    return reference, {k: poses[k] for k in component}, [e for e in trusted if e[0] in component]


def _agrees(poses: dict[int, np.ndarray], i: int, j: int, transformation: np.ndarray, voxel: float,
            config: MultiwayConfig, names: list[str], log: bool = True) -> bool:
    relative = np.linalg.inv(poses[j]) @ poses[i]  # optimised target_from_source
    angle, shift = rigid_difference(relative, transformation)
    ok = angle <= config.max_edge_rotation_deg and shift <= config.max_edge_translation_factor * voxel
    if not ok and log:
        logger.warning("edge %s -> %s dropped: optimised pose differs from the pair by %.2f deg, %.4g",
                       names[i], names[j], angle, shift)
    return ok


def _is_bridge(edge: tuple[int, int], edges: list[tuple[int, int]]) -> bool:
    """True when removing ``edge`` disconnects its two ends."""
    rest = [e for e in edges if e != edge]
    return edge[1] not in _component(edge[0], rest)


def _path_edges(a: int, b: int, edges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The edges of one shortest path from ``a`` to ``b`` (breadth first); [] when not connected."""
    parent: dict[int, tuple[int, tuple[int, int]] | None] = {a: None}
    frontier = [a]
    while frontier and b not in parent:
        nxt = []
        for node in frontier:
            for e in edges:
                if node in e:
                    other = e[1] if e[0] == node else e[0]
                    if other not in parent:
                        parent[other] = (node, e)
                        nxt.append(other)
        frontier = nxt
    if b not in parent:
        return []
    path, node = [], b
    while parent[node] is not None:
        node, e = parent[node]  # type: ignore[misc]
        path.append(e)
    return path


def _component(start: int, edges: list[tuple[int, int]]) -> set[int]:
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


def _unplaced_reason(
    k: int, names: list[str], index_pairs: list[tuple[int, int]], pairs: list[PairResult],
    tree_poses: dict[int, np.ndarray],
) -> str:
    """Why scan ``k`` has no pose."""
    own = [(j if i == k else i, p) for (i, j), p in zip(index_pairs, pairs) if k in (i, j)]
    if not own:
        return "no pair was attempted with it"
    confident = [p for _, p in own if p.confident]
    if not confident:
        other, best = max(own, key=lambda item: item[1].fitness)
        return (f"no confident pair with any scan (best fitness {best.fitness:.3f} with {names[other]}: "
                f"{best.reason})")
    if k not in tree_poses:
        return "its confident pairs do not connect it to the reference scan"
    return ("its links to the reference scan were pruned, disagreed with the optimised poses, or were "
            "contradicted by another confident pair")


def rigid_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(rotation angle in degrees, translation distance) between two (4, 4) rigid transforms."""
    rotation = a[:3, :3] @ b[:3, :3].T  # (3, 3)
    cos = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos))), float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
