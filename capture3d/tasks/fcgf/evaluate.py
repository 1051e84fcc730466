"""Descriptors compared on the same scan pairs: feature-match recall, inlier ratio, registration recall.

Inputs: preprocessed clouds (``o3d.geometry.PointCloud`` with normals, all at one ``voxel``),
per-descriptor features for every cloud ({name: [(N_i, D) float32]}), ground-truth
``world_from_scan`` poses, a :class:`~capture3d.tasks.registration.pair.PairConfig` and
:class:`FeatureEvalConfig`. Outputs: one row per (pair, descriptor) and one summary per
descriptor (:func:`evaluate_descriptors`).

Protocol (3DMatch, as in FCGF's evaluation): pairs whose overlap -- the larger directed fraction
of points within ``3 * voxel`` of the other cloud under the ground truth -- is at least
``min_overlap`` (30 %); every source point matched to its nearest neighbour in feature space in
the target; feature-match recall = fraction of pairs whose inlier ratio (matches within
``inlier_distance``, 10 cm) exceeds ``inlier_ratio`` (5 %); both distances scaled by
``threshold_scale`` for small objects. Registration: the pair pipeline of ``register_scans``
(RANSAC or FGR on these features, then ICP); a pair succeeds when the rotation error is under
``rotation_threshold_deg`` and the translation error under ``translation_threshold * threshold_scale``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import open3d as o3d

from capture3d.tasks.fcgf.loss import feature_match_recall
from capture3d.tasks.registration.evaluate import (
    overlap_ratio,
    relative_transform_errors,
)
from capture3d.tasks.registration.pair import PairConfig, register_pair

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureEvalConfig:
    """Pair selection and success thresholds."""

    min_overlap: float
    """pairs overlapping less under the ground truth are not evaluated (3DMatch: 0.3)"""
    inlier_distance: float
    """a match is an inlier within this distance under the ground truth (3DMatch: 0.10)"""
    inlier_ratio: float
    """feature-match recall counts pairs with at least this inlier ratio (3DMatch: 0.05)"""
    rotation_threshold_deg: float
    """registration recall: rotation error under this, degrees ..."""
    translation_threshold: float
    """... and translation error under this (times threshold_scale)"""
    threshold_scale: float
    """multiplies inlier_distance and translation_threshold (0.1 for small objects)"""


def overlapping_pairs(
    clouds: list[np.ndarray], poses: list[np.ndarray], radius: float, min_overlap: float
) -> list[tuple[int, int, float]]:
    """(i, j, overlap) for i < j whose overlap (larger directed ratio within ``radius``) >= min_overlap."""
    out = []
    for i in range(len(clouds)):
        for j in range(i + 1, len(clouds)):
            T = np.linalg.inv(poses[j]) @ poses[i]  # (4, 4) j_from_i
            ov = max(
                overlap_ratio(clouds[i], clouds[j], T, radius),
                overlap_ratio(clouds[j], clouds[i], np.linalg.inv(T), radius),
            )
            if ov >= min_overlap:
                out.append((i, j, ov))
    return out


def evaluate_descriptors(
    names: list[str],
    clouds: list[o3d.geometry.PointCloud],
    features: dict[str, list[np.ndarray]],
    poses: list[np.ndarray],
    voxel: float,
    pair_config: PairConfig,
    config: FeatureEvalConfig,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Rows per (pair, descriptor) and a summary per descriptor; see the module docstring."""
    points = [np.asarray(c.points) for c in clouds]
    pairs = overlapping_pairs(points, poses, 3 * voxel, config.min_overlap)
    inlier_dist = config.inlier_distance * config.threshold_scale
    trans_thresh = config.translation_threshold * config.threshold_scale
    rows: list[dict[str, Any]] = []
    for i, j, ov in pairs:
        T_gt = np.linalg.inv(poses[j]) @ poses[i]  # (4, 4) maps cloud i into cloud j
        for name, feats in features.items():
            ok, frac = feature_match_recall(
                feats[i], feats[j], points[i], points[j], T_gt, inlier_dist, config.inlier_ratio
            )
            t = time.perf_counter()
            result = register_pair(names[i], clouds[i], feats[i], names[j], clouds[j], feats[j], voxel, pair_config)
            rot, trans = relative_transform_errors(result.transformation, T_gt)
            rows.append(
                {
                    "source": names[i],
                    "target": names[j],
                    "overlap": ov,
                    "feature": name,
                    "feature_match": bool(ok),
                    "inlier_ratio": frac,
                    "registered": bool(rot <= config.rotation_threshold_deg and trans <= trans_thresh),
                    "rotation_error_deg": rot,
                    "translation_error": trans,
                    "confident": result.confident,
                    "method": result.method,
                    "registration_s": time.perf_counter() - t,
                }
            )
    logger.info(
        "evaluated %d descriptor(s) on %d pairs with overlap >= %.2f", len(features), len(pairs), config.min_overlap
    )
    return rows, summarize(rows, list(features))


def summarize(rows: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per descriptor: pairs, feature-match recall, mean inlier ratio, registration recall, median errors."""
    out = {}
    for name in names:
        mine = [r for r in rows if r["feature"] == name]
        n = len(mine)
        out[name] = {
            "num_pairs": n,
            "feature_match_recall": float(np.mean([r["feature_match"] for r in mine])) if n else None,
            "inlier_ratio": float(np.mean([r["inlier_ratio"] for r in mine])) if n else None,
            "registration_recall": float(np.mean([r["registered"] for r in mine])) if n else None,
            "median_rotation_error_deg": float(np.median([r["rotation_error_deg"] for r in mine])) if n else None,
            "median_translation_error": float(np.median([r["translation_error"] for r in mine])) if n else None,
        }
    return out


def with_global_method(config: PairConfig, method: str) -> PairConfig:
    """``config`` with another global registration method."""
    return dataclasses.replace(config, global_method=method)  # type: ignore[arg-type]
