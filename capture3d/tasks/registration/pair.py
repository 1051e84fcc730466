"""Pairwise registration of two preprocessed point clouds: several global hypotheses + multi-scale ICP.

Inputs: two ``o3d.geometry.PointCloud`` with normals, already voxel-downsampled at ``voxel`` metres,
their per-point features as numpy arrays (N, D) float32 (e.g. FPFH), and a :class:`PairConfig`.
Outputs: a :class:`PairResult` holding every distinct refined hypothesis (:class:`Hypothesis`: the
4x4 transformation that maps source points into the target frame, its ICP fitness / inlier RMSE,
whether it passes the gates and why not) and, in its own fields, the best of them with the 6x6
information matrix at the finest ICP scale (for pose graphs), and timings. Nothing is written.

Several hypotheses, not one: on repeated structure (a ring wall, a corridor, a facade, a
turntable object) a wrong alignment can match surfaces as well as the right one (fitness 0.41-0.50
for wrong pairs of the synthetic courtyard, 0.33-0.63 for right ones), so committing to the best
single answer per pair is a coin toss. Each pair keeps up to ``num_hypotheses`` distinct modes per
global method; :mod:`capture3d.tasks.registration.multiway` picks among them with free-space checks and cycle
consistency.

Global registration: ``fgr`` (Fast Global Registration, Zhou et al. 2016) on the features, then
again on the feature matches the earlier modes do not explain, up to ``num_hypotheses`` modes
(FGR converges to the dominant mode of its correspondences; peeling it off exposes the next);
``ransac``: the distinct modes of the repeatable numpy RANSAC
of :mod:`capture3d.tasks.registration.ransac` (edge-length 0.9 and distance checks, as Open3D's, but several
modes and the same result for any thread count); ``fgr_then_ransac``: both sets pooled. FGR alone is
fast but fragile: on the 3DMatch pair with FPFH at 2.5 cm voxels it fails (131 deg off) on clouds
that are only voxel-downsampled, yet succeeds (0.9 deg) after capture3d's outlier removal and
normal orientation; on low-overlap bunny pairs it fails on 3 of 24, which RANSAC recovers
(benchmarks/bench_registration.py).

Confidence: a refined hypothesis is confident when ``fitness >= min_fitness`` and
``inlier_rmse < max_rmse_factor * voxel`` (both from ICP at the finest scale). That says the
surfaces meet, not that the pose is right: multiway registration verifies it.

Multi-scale ICP: ``icp_scales`` are correspondence distances as multiples of ``voxel``, coarse to
fine, each run for up to ``icp_max_iterations``. The clouds are used as given at every scale (no
further downsampling): they are already at ``voxel`` and hold normals computed at that
resolution, which re-downsampling would have to re-estimate; the coarse scales only widen the
correspondence distance to pull in a rough initial guess. Open3D's ICP and FGR gave the same
poses to 1e-15 with 1 and 2 OpenMP threads (measured on the synthetic courtyard scans).

Seeding: FGR's tuple test draws from Open3D's global generator, seeded with ``config.seed + k``
(``o3d.utility.random.seed``) right before the k-th run; RANSAC uses ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import open3d as o3d

from capture3d.tasks.registration.ransac import (
    feature_matches,
    ransac_modes,
    rotation_angle_deg,
)

logger = logging.getLogger(__name__)

reg = o3d.pipelines.registration


@dataclass(frozen=True)
class PairConfig:
    """Settings of pairwise registration."""

    global_method: Literal["fgr", "ransac", "fgr_then_ransac"]
    """global registration (fgr_then_ransac: both sets of hypotheses pooled)"""
    ransac_max_iterations: int
    """RANSAC: sampled correspondence triplets (repeatable numpy RANSAC), e.g. 100000"""
    mutual_filter: bool
    """keep only mutual nearest-neighbour feature correspondences"""
    distance_factor: float
    """global correspondence distance = factor * voxel"""
    icp_method: Literal["point_to_point", "point_to_plane", "colored", "generalized"]
    """ICP variant of the refinement"""
    icp_scales: tuple[float, ...]
    """multi-scale ICP: correspondence distances as multiples of voxel, coarse to fine"""
    icp_max_iterations: int
    """ICP iterations per scale"""
    min_fitness: float
    """a pair below this fitness is not confident (no overlap)"""
    max_rmse_factor: float
    """a confident pair's inlier RMSE stays below factor * voxel"""
    seed: int
    """random seed of FGR and RANSAC"""
    num_hypotheses: int = 4
    """distinct global modes kept per method and pair (FGR seeds, RANSAC modes)"""


@dataclass(frozen=True)
class Hypothesis:
    """One refined candidate alignment of a pair."""

    transformation: np.ndarray  # (4, 4) maps source points into the target frame
    fitness: float
    inlier_rmse: float
    confident: bool  # passes the fitness and RMSE gates
    reason: str  # why not confident ("" when confident)
    method: str  # e.g. "ransac#1+point_to_plane", "fgr#0+point_to_plane", "init+point_to_plane"


@dataclass
class PairResult:
    """The refined registration of ``source`` onto ``target`` and how far it can be trusted."""

    source: str
    target: str
    transformation: np.ndarray  # (4, 4) maps source points into the target frame
    fitness: float
    inlier_rmse: float
    information: np.ndarray  # (6, 6) at the finest ICP scale
    confident: bool
    reason: str  # why not confident ("" when confident)
    method: str  # the best hypothesis' method, e.g. "ransac#0+point_to_plane"
    seconds: dict[str, float] = field(default_factory=dict)  # global_s, icp_s
    hypotheses: list[Hypothesis] = field(default_factory=list)  # distinct refined modes, best first


def global_registration(
    source: o3d.geometry.PointCloud,
    target: o3d.geometry.PointCloud,
    source_features: np.ndarray,
    target_features: np.ndarray,
    voxel: float,
    config: PairConfig,
    method: Literal["fgr", "ransac"] | None = None,
) -> tuple[np.ndarray, str]:
    """The best (4, 4) source->target estimate of one method and the method's name.

    ``method`` overrides ``config.global_method``; ``fgr_then_ransac`` alone means FGR here.
    ``ransac`` is the best mode of :func:`global_hypotheses`.
    """
    if method is None:
        method = "ransac" if config.global_method == "ransac" else "fgr"
    src_feat = _feature(source_features, len(source.points))  # (D, N)
    tgt_feat = _feature(target_features, len(target.points))  # (D, M)
    if method == "ransac":
        modes = global_hypotheses(
            source,
            target,
            source_features,
            target_features,
            voxel,
            dataclasses.replace(config, num_hypotheses=1),
            "ransac",
        )
        return (modes[0][0] if modes else np.eye(4)), method
    if method != "fgr":
        raise ValueError(f"unknown global registration method {method!r}")
    o3d.utility.random.seed(config.seed)
    option = reg.FastGlobalRegistrationOption(maximum_correspondence_distance=config.distance_factor * voxel)
    result = reg.registration_fgr_based_on_feature_matching(source, target, src_feat, tgt_feat, option)
    logger.debug("fgr: fitness %.3f, rmse %.4f", result.fitness, result.inlier_rmse)
    return np.array(result.transformation), method


def refine(
    source: o3d.geometry.PointCloud,
    target: o3d.geometry.PointCloud,
    init: np.ndarray,
    voxel: float,
    config: PairConfig,
    scales: tuple[float, ...] | None = None,
) -> reg.RegistrationResult:
    """Multi-scale ICP from ``init`` (4, 4) at ``scales`` (default ``config.icp_scales``); the last scale's result.

    ``colored`` needs colours on both clouds and falls back to ``point_to_plane`` otherwise (see
    :func:`icp_name`); ``point_to_plane`` and ``colored`` need target normals.
    """
    name = icp_name(source, target, config)
    if name != config.icp_method:
        logger.warning("%s ICP is not possible here: running %s", config.icp_method, name)
    transformation = np.asarray(init, dtype=np.float64)
    result = None
    for scale in config.icp_scales if scales is None else scales:
        distance = scale * voxel
        criteria = reg.ICPConvergenceCriteria(
            relative_fitness=1e-6, relative_rmse=1e-6, max_iteration=config.icp_max_iterations
        )
        if name == "generalized":
            result = reg.registration_generalized_icp(
                source, target, distance, transformation, reg.TransformationEstimationForGeneralizedICP(), criteria
            )
        elif name == "colored":
            result = reg.registration_colored_icp(
                source, target, distance, transformation, reg.TransformationEstimationForColoredICP(), criteria
            )
        else:
            estimation = (
                reg.TransformationEstimationPointToPlane()
                if name.startswith("point_to_plane")
                else reg.TransformationEstimationPointToPoint(False)
            )
            result = reg.registration_icp(source, target, distance, transformation, estimation, criteria)
        transformation = np.array(result.transformation)
    if result is None:  # no scales: evaluate the initial guess as it is
        result = reg.evaluate_registration(source, target, config.distance_factor * voxel, transformation)
    return result


def icp_name(source: o3d.geometry.PointCloud, target: o3d.geometry.PointCloud, config: PairConfig) -> str:
    """The ICP variant :func:`refine` runs: ``config.icp_method``, or the colour-less fallback."""
    if config.icp_method == "colored" and not (source.has_colors() and target.has_colors()):
        return "point_to_plane(no colours)"
    return config.icp_method


def global_hypotheses(
    source: o3d.geometry.PointCloud,
    target: o3d.geometry.PointCloud,
    source_features: np.ndarray,
    target_features: np.ndarray,
    voxel: float,
    config: PairConfig,
    method: Literal["fgr", "ransac"],
    matches: np.ndarray | None = None,
) -> list[tuple[np.ndarray, str]]:
    """Up to ``config.num_hypotheses`` (4, 4) source->target guesses of one method, with labels.

    ``ransac``: the distinct modes of :func:`~capture3d.tasks.registration.ransac.ransac_modes`. ``fgr``: FGR,
    then FGR again on the correspondences earlier modes do not explain (:func:`_fgr_modes`);
    duplicates are removed later, after ICP. ``matches`` (K, 2): the feature matches of
    :func:`~capture3d.tasks.registration.ransac.feature_matches`, computed here when not given.
    """
    n = max(1, config.num_hypotheses)
    src_points, tgt_points = np.asarray(source.points), np.asarray(target.points)
    _feature(source_features, len(src_points))  # shape checks, one line each
    _feature(target_features, len(tgt_points))
    if matches is None and (method == "ransac" or n > 1):
        matches = feature_matches(source_features, target_features, config.mutual_filter)
    if method == "ransac":
        modes = ransac_modes(
            src_points,
            tgt_points,
            matches,
            config.distance_factor * voxel,
            config.ransac_max_iterations,
            n,
            config.seed,
        )
        return [(m.transformation, f"ransac#{k}") for k, m in enumerate(modes)]
    return _fgr_modes(source, target, source_features, target_features, voxel, config, n, matches)


def _fgr_modes(
    source: o3d.geometry.PointCloud,
    target: o3d.geometry.PointCloud,
    source_features: np.ndarray,
    target_features: np.ndarray,
    voxel: float,
    config: PairConfig,
    n: int,
    matches: np.ndarray | None,
) -> list[tuple[np.ndarray, str]]:
    """FGR's answer, then FGR again on the correspondences the earlier answers do not explain.

    FGR converges to the dominant mode of its correspondences; peeling that mode's inliers off
    (within ``distance_factor * voxel``) lets the next run find the next mode, as sequential RANSAC
    does. Stops when fewer than 3 correspondences are left. The first run is FGR on features,
    exactly as :func:`global_registration` with ``fgr``.
    """
    T, _ = global_registration(source, target, source_features, target_features, voxel, config, method="fgr")
    out = [(T, "fgr#0")]
    if n < 2 or matches is None:
        return out
    src = np.asarray(source.points)[matches[:, 0]]
    tgt = np.asarray(target.points)[matches[:, 1]]
    distance = config.distance_factor * voxel
    left = np.ones(len(matches), dtype=bool)
    option = reg.FastGlobalRegistrationOption(maximum_correspondence_distance=distance)
    for k in range(1, n):
        moved = src @ T[:3, :3].T + T[:3, 3]
        left &= np.sum((moved - tgt) ** 2, axis=1) >= distance * distance
        if left.sum() < 3:
            break
        o3d.utility.random.seed(config.seed + k)
        corres = o3d.utility.Vector2iVector(np.ascontiguousarray(matches[left], dtype=np.int32))
        T = np.array(reg.registration_fgr_based_on_correspondence(source, target, corres, option).transformation)
        out.append((T, f"fgr#{k}"))
    return out


def register_pair(
    source_name: str,
    source: o3d.geometry.PointCloud,
    source_features: np.ndarray,
    target_name: str,
    target: o3d.geometry.PointCloud,
    target_features: np.ndarray,
    voxel: float,
    config: PairConfig,
    init: np.ndarray | None = None,
) -> PairResult:
    """Register ``source`` onto ``target``: every global hypothesis refined by ICP, best first.

    With ``init`` (4, 4) global registration is skipped. ``hypotheses`` of the result hold the
    distinct refined modes (after ICP, two guesses closer than 2 degrees and 2 voxels are one);
    its own fields describe the best of them (confident first, then fitness, then RMSE).
    """
    seconds = {"global_s": 0.0, "icp_s": 0.0}
    finest = (config.icp_scales[-1] if config.icp_scales else config.distance_factor) * voxel
    t0 = time.perf_counter()
    if init is not None:
        guesses = [(np.asarray(init, dtype=np.float64), "init")]
    else:
        methods = ["fgr", "ransac"] if config.global_method == "fgr_then_ransac" else [config.global_method]
        matches = None
        if "ransac" in methods or config.num_hypotheses > 1:
            _feature(source_features, len(source.points))  # shape checks, one line each
            _feature(target_features, len(target.points))
            matches = feature_matches(source_features, target_features, config.mutual_filter)  # (K, 2)
        guesses = [
            g
            for m in methods
            for g in global_hypotheses(source, target, source_features, target_features, voxel, config, m, matches)
        ]  # type: ignore[arg-type]
    seconds["global_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    icp = icp_name(source, target, config)
    hypotheses: list[Hypothesis] = []
    for guess, label in _coarse_survivors(source, target, guesses, voxel, config):
        refined = refine(source, target, guess, voxel, config, scales=config.icp_scales[1:])
        T = np.array(refined.transformation)  # (4, 4)
        if any(_same_pose(T, h.transformation, voxel) for h in hypotheses):
            continue
        confident, reason = judge(refined.fitness, refined.inlier_rmse, voxel, config)
        hypotheses.append(
            Hypothesis(T, float(refined.fitness), float(refined.inlier_rmse), confident, reason, f"{label}+{icp}")
        )
    seconds["icp_s"] = time.perf_counter() - t0
    if not hypotheses:  # no guess at all (e.g. fewer than 3 feature matches): the identity, judged
        refined = reg.evaluate_registration(source, target, finest, np.eye(4))
        hypotheses.append(
            Hypothesis(
                np.eye(4),
                float(refined.fitness),
                float(refined.inlier_rmse),
                False,
                "no global hypothesis",
                f"none+{icp}",
            )
        )
    hypotheses.sort(key=lambda h: (not h.confident, -h.fitness, h.inlier_rmse))
    best = hypotheses[0]
    information = information_matrix(source, target, best.transformation, finest)
    logger.info(
        "%s -> %s: %d hypotheses, best %s fitness %.3f rmse %.4f %s",
        source_name,
        target_name,
        len(hypotheses),
        best.method,
        best.fitness,
        best.inlier_rmse,
        "confident" if best.confident else f"NOT confident: {best.reason}",
    )
    return PairResult(
        source=source_name,
        target=target_name,
        transformation=best.transformation,
        fitness=best.fitness,
        inlier_rmse=best.inlier_rmse,
        information=information,
        confident=best.confident,
        reason=best.reason,
        method=best.method,
        seconds=seconds,
        hypotheses=hypotheses,
    )


def _coarse_survivors(
    source: o3d.geometry.PointCloud,
    target: o3d.geometry.PointCloud,
    guesses: list[tuple[np.ndarray, str]],
    voxel: float,
    config: PairConfig,
) -> list[tuple[np.ndarray, str]]:
    """Guesses after the coarsest ICP scale, duplicates removed, those that cannot pass the gate dropped.

    Fitness at the coarsest (widest) correspondence distance bounds the fitness at the finer ones
    for the same pose, so a guess below ``min_fitness`` there is not refined further; when none
    passes, the best one is kept so that the pair still reports what it found.
    """
    if len(config.icp_scales) < 2:
        return [(np.asarray(g, dtype=np.float64), label) for g, label in guesses]
    staged: list[tuple[np.ndarray, str, float]] = []
    distinct: list[np.ndarray] = []
    for guess, label in guesses:
        if any(_same_pose(guess, other, voxel, 5.0, 3.0) for other in distinct):
            continue  # the same basin of ICP as a guess already refined
        distinct.append(guess)
        coarse = refine(source, target, guess, voxel, config, scales=config.icp_scales[:1])
        T = np.array(coarse.transformation)  # (4, 4)
        if not any(_same_pose(T, other, voxel) for other, _, _ in staged):
            staged.append((T, label, float(coarse.fitness)))
    viable = [(T, label) for T, label, fitness in staged if fitness >= config.min_fitness]
    if not viable and staged:
        T, label, _ = max(staged, key=lambda item: item[2])
        viable = [(T, label)]
    return viable


def information_matrix(
    source: o3d.geometry.PointCloud, target: o3d.geometry.PointCloud, transformation: np.ndarray, distance: float
) -> np.ndarray:
    """The (6, 6) information matrix of ``transformation`` (4, 4) at correspondence ``distance``."""
    return np.array(reg.get_information_matrix_from_point_clouds(source, target, distance, transformation))


def _same_pose(a: np.ndarray, b: np.ndarray, voxel: float, degrees: float = 2.0, voxels: float = 2.0) -> bool:
    return rotation_angle_deg(a, b) < degrees and float(np.linalg.norm(a[:3, 3] - b[:3, 3])) < voxels * voxel


def judge(fitness: float, inlier_rmse: float, voxel: float, config: PairConfig) -> tuple[bool, str]:
    """(confident, reason): the fitness and RMSE gates of :class:`PairConfig`."""
    reasons = []
    if fitness < config.min_fitness:
        reasons.append(f"fitness {fitness:.3f} < {config.min_fitness:g}")
    max_rmse = config.max_rmse_factor * voxel
    if fitness <= 0.0:
        reasons.append("no correspondences")
    elif inlier_rmse >= max_rmse:
        reasons.append(f"inlier rmse {inlier_rmse:.4g} >= {max_rmse:.4g}")
    return not reasons, "; ".join(reasons)


def _feature(features: np.ndarray, num_points: int) -> reg.Feature:
    """An Open3D Feature from (N, D) features (Open3D stores them as (D, N) float64)."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != num_points:
        raise ValueError(f"features must be (N, D) with N = {num_points} points, got {features.shape}")
    feature = reg.Feature()
    feature.data = np.ascontiguousarray(features.T, dtype=np.float64)  # (D, N)
    return feature
