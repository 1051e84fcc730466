"""Pairwise registration of two preprocessed point clouds: global (FGR and/or RANSAC) + multi-scale ICP.

Inputs: two ``o3d.geometry.PointCloud`` with normals, already voxel-downsampled at ``voxel`` metres,
their per-point features as numpy arrays (N, D) float32 (e.g. FPFH), and a :class:`PairConfig`.
Outputs: a :class:`PairResult` holding the 4x4 transformation that maps source points into the
target frame, its ICP fitness / inlier RMSE, the 6x6 information matrix at the finest ICP scale
(for pose graphs), whether it is confident and why not, and timings. Nothing is written.

Global registration: ``fgr`` (Fast Global Registration, Zhou et al. 2016), ``ransac`` (feature
matching + RANSAC with edge-length 0.9 and distance checkers) or ``fgr_then_ransac``: FGR, then
ICP; when that refined result is not confident, RANSAC, then ICP, and the better of the two is
kept (confident first, then higher fitness, then lower RMSE). FGR is fast but fragile: on the
3DMatch pair with FPFH at 2.5 cm voxels it fails (131 deg off) on clouds that are only voxel-
downsampled, yet succeeds (0.9 deg) after capture3d's outlier removal and normal orientation; on
low-overlap bunny pairs it fails on 3 of 24, which RANSAC recovers (benchmarks/bench_registration.py).

Confidence: the refined result is confident when ``fitness >= min_fitness`` and
``inlier_rmse < max_rmse_factor * voxel`` (both from ICP at the finest scale).

Multi-scale ICP: ``icp_scales`` are correspondence distances as multiples of ``voxel``, coarse to
fine, each run for up to ``icp_max_iterations``. The clouds are used as given at every scale (no
further downsampling): they are already at ``voxel`` and hold normals computed at that
resolution, which re-downsampling would have to re-estimate; the coarse scales only widen the
correspondence distance to pull in a rough initial guess.

Seeding: Open3D's RANSAC and FGR's tuple test draw from Open3D's global generator, which is
seeded with ``config.seed`` (``o3d.utility.random.seed``) right before each call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import open3d as o3d

logger = logging.getLogger(__name__)

reg = o3d.pipelines.registration


@dataclass(frozen=True)
class PairConfig:
    """Settings of pairwise registration."""

    global_method: Literal["fgr", "ransac", "fgr_then_ransac"]
    ransac_max_iterations: int  # e.g. 100000
    ransac_confidence: float  # e.g. 0.999
    mutual_filter: bool
    distance_factor: float  # global correspondence distance = distance_factor * voxel
    icp_method: Literal["point_to_point", "point_to_plane", "colored", "generalized"]
    icp_scales: tuple[float, ...]  # ICP correspondence distances as multiples of voxel, coarse -> fine
    icp_max_iterations: int  # per scale
    min_fitness: float  # below this the pair is not confident
    max_rmse_factor: float  # inlier RMSE must be below max_rmse_factor * voxel
    seed: int


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
    method: str  # e.g. "fgr+point_to_plane", "fgr->ransac+point_to_plane", "init+point_to_plane"
    seconds: dict[str, float] = field(default_factory=dict)  # global_s, icp_s


def global_registration(
    source: o3d.geometry.PointCloud,
    target: o3d.geometry.PointCloud,
    source_features: np.ndarray,
    target_features: np.ndarray,
    voxel: float,
    config: PairConfig,
    method: Literal["fgr", "ransac"] | None = None,
) -> tuple[np.ndarray, str]:
    """A (4, 4) source->target estimate from features and the name of the method that made it.

    ``method`` overrides ``config.global_method``; ``fgr_then_ransac`` alone means its first stage,
    FGR (the fallback to RANSAC needs ICP and is done by :func:`register_pair`).
    """
    if method is None:
        method = "ransac" if config.global_method == "ransac" else "fgr"
    src_feat = _feature(source_features, len(source.points))  # (D, N)
    tgt_feat = _feature(target_features, len(target.points))  # (D, M)
    distance = config.distance_factor * voxel
    o3d.utility.random.seed(config.seed)
    if method == "fgr":
        option = reg.FastGlobalRegistrationOption(maximum_correspondence_distance=distance)
        result = reg.registration_fgr_based_on_feature_matching(source, target, src_feat, tgt_feat, option)
    elif method == "ransac":
        result = reg.registration_ransac_based_on_feature_matching(
            source, target, src_feat, tgt_feat, config.mutual_filter, distance,
            reg.TransformationEstimationPointToPoint(False), 3,
            [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9), reg.CorrespondenceCheckerBasedOnDistance(distance)],
            reg.RANSACConvergenceCriteria(config.ransac_max_iterations, config.ransac_confidence),
        )
    else:
        raise ValueError(f"unknown global registration method {method!r}")
    logger.debug("%s: fitness %.3f, rmse %.4f", method, result.fitness, result.inlier_rmse)
    return np.array(result.transformation), method


def refine(
    source: o3d.geometry.PointCloud,
    target: o3d.geometry.PointCloud,
    init: np.ndarray,
    voxel: float,
    config: PairConfig,
) -> reg.RegistrationResult:
    """Multi-scale ICP from ``init`` (4, 4); the result of the finest scale.

    ``colored`` needs colours on both clouds and falls back to ``point_to_plane`` otherwise (see
    :func:`icp_name`); ``point_to_plane`` and ``colored`` need target normals.
    """
    name = icp_name(source, target, config)
    if name != config.icp_method:
        logger.warning("%s ICP is not possible here: running %s", config.icp_method, name)
    transformation = np.asarray(init, dtype=np.float64)
    result = None
    for scale in config.icp_scales:
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
    """Register ``source`` onto ``target``; with ``init`` (4, 4) global registration is skipped."""
    seconds = {"global_s": 0.0, "icp_s": 0.0}
    finest = (config.icp_scales[-1] if config.icp_scales else config.distance_factor) * voxel
    if init is not None:
        stages: list[str] = ["init"]
    elif config.global_method == "fgr_then_ransac":
        stages = ["fgr", "ransac"]
    else:
        stages = [config.global_method]

    tried: list[tuple[str, reg.RegistrationResult, bool, str]] = []
    for stage in stages:
        t0 = time.perf_counter()
        if stage == "init":
            guess = np.asarray(init, dtype=np.float64)
        else:
            guess, _ = global_registration(
                source, target, source_features, target_features, voxel, config, method=stage  # type: ignore[arg-type]
            )
        seconds["global_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        refined = refine(source, target, guess, voxel, config)
        seconds["icp_s"] += time.perf_counter() - t0
        confident, reason = judge(refined.fitness, refined.inlier_rmse, voxel, config)
        logger.debug("%s -> %s via %s: fitness %.3f rmse %.4f %s", source_name, target_name, stage,
                     refined.fitness, refined.inlier_rmse, reason or "confident")
        tried.append((stage, refined, confident, reason))
        if confident:
            break

    best = max(range(len(tried)), key=lambda i: (tried[i][2], tried[i][1].fitness, -tried[i][1].inlier_rmse))
    stage, refined, confident, reason = tried[best]
    transformation = np.array(refined.transformation)  # (4, 4)
    information = np.array(
        reg.get_information_matrix_from_point_clouds(source, target, finest, transformation)
    )  # (6, 6)
    method = _method_string([t[0] for t in tried], stage, icp_name(source, target, config))
    logger.info("%s -> %s: %s fitness %.3f rmse %.4f %s", source_name, target_name, method,
                refined.fitness, refined.inlier_rmse, "confident" if confident else f"NOT confident: {reason}")
    return PairResult(
        source=source_name, target=target_name, transformation=transformation,
        fitness=float(refined.fitness), inlier_rmse=float(refined.inlier_rmse), information=information,
        confident=confident, reason=reason, method=method, seconds=seconds,
    )


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


def _method_string(stages: list[str], kept: str, icp: str) -> str:
    """"fgr+icp", "fgr->ransac+icp" (RANSAC ran and was kept) or "fgr->ransac(kept fgr)+icp"."""
    chain = "->".join(stages)
    if len(stages) > 1 and kept != stages[-1]:
        chain += f"(kept {kept})"
    return f"{chain}+{icp}"


def _feature(features: np.ndarray, num_points: int) -> reg.Feature:
    """An Open3D Feature from (N, D) features (Open3D stores them as (D, N) float64)."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != num_points:
        raise ValueError(f"features must be (N, D) with N = {num_points} points, got {features.shape}")
    feature = reg.Feature()
    feature.data = np.ascontiguousarray(features.T, dtype=np.float64)  # (D, N)
    return feature
