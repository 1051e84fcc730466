"""Registration metrics: pairwise and absolute pose errors, Chamfer distance and F-score, fusion.

Inputs: 4x4 rigid transforms as numpy arrays, poses as ``world_from_scan`` dicts keyed by scan
name (``p_world = T @ [p; 1]``), point clouds as (N, 3) arrays. Outputs: plain floats and dicts
of floats (JSON-ready), and :func:`fuse`'s fused (M, 3) cloud.

Conventions:

* rotation error: the angle of ``R_est^T R_gt``, in degrees; translation error: ``|t_est - t_gt|``
  (the 3DMatch / Deep Global Registration RRE and RTE).
* a pair ``(source, target, T)`` estimates ``T_target_from_source``; its ground truth is
  ``inv(gt[target]) @ gt[source]``. A pair succeeds when both errors are within thresholds;
  registration recall is the fraction of evaluated pairs that succeed.
* absolute pose errors compare poses expressed in a reference scan's frame,
  ``inv(P[reference]) @ P[name]``, so a global transform applied to all estimates cancels out.
* Chamfer distance and F-score follow Knapitsch et al. 2017 (Tanks and Temples): precision is the
  fraction of predicted points within ``threshold`` of the ground truth, recall the fraction of
  ground-truth points within ``threshold`` of the prediction, F = 2 P R / (P + R).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import open3d as o3d

logger = logging.getLogger(__name__)


def _as_transform(T: np.ndarray, what: str) -> np.ndarray:
    M = np.asarray(T, dtype=np.float64)
    if M.shape != (4, 4):
        raise ValueError(f"{what}: expected a 4x4 transform, got shape {M.shape}")
    return M


def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle in degrees of the rotation ``R_est^T R_gt``, both (3, 3)."""
    R_est = np.asarray(R_est, dtype=np.float64)
    R_gt = np.asarray(R_gt, dtype=np.float64)
    if R_est.shape != (3, 3) or R_gt.shape != (3, 3):
        raise ValueError(f"rotation error needs (3, 3) matrices, got {R_est.shape} and {R_gt.shape}")
    cos = (np.trace(R_est.T @ R_gt) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def relative_transform_errors(T_est: np.ndarray, T_gt: np.ndarray) -> tuple[float, float]:
    """(rotation error in degrees, translation error ``|t_est - t_gt|``) of two (4, 4) transforms."""
    T_est = _as_transform(T_est, "estimate")
    T_gt = _as_transform(T_gt, "ground truth")
    return rotation_error_deg(T_est[:3, :3], T_gt[:3, :3]), float(np.linalg.norm(T_est[:3, 3] - T_gt[:3, 3]))


def pair_metrics(
    pairs: list[tuple[str, str, np.ndarray]],
    gt: dict[str, np.ndarray],
    rot_thresh_deg: float = 15.0,
    trans_thresh: float = 0.30,
) -> dict[str, Any]:
    """Errors and success of each (source, target, T_target_from_source) estimate, and registration recall.

    Pairs whose scans have no ground truth are listed in ``"skipped"`` and not counted.
    ``registration_recall`` and the error statistics are None when no pair could be evaluated.
    """
    rows: list[dict[str, Any]] = []
    skipped: list[list[str]] = []
    for source, target, T in pairs:
        if source not in gt or target not in gt:
            skipped.append([source, target])
            continue
        T_gt = np.linalg.inv(_as_transform(gt[target], target)) @ _as_transform(gt[source], source)
        rot, trans = relative_transform_errors(_as_transform(T, f"pair {source}->{target}"), T_gt)
        rows.append(
            {
                "source": source,
                "target": target,
                "rotation_error_deg": rot,
                "translation_error": trans,
                "success": bool(rot <= rot_thresh_deg and trans <= trans_thresh),
            }
        )
    if skipped:
        logger.warning("%d pair(s) have no ground truth and were not evaluated", len(skipped))
    successes = sum(r["success"] for r in rows)
    rot_errors = [r["rotation_error_deg"] for r in rows]
    trans_errors = [r["translation_error"] for r in rows]
    return {
        "pairs": rows,
        "skipped": skipped,
        "num_pairs": len(rows),
        "num_success": int(successes),
        "registration_recall": successes / len(rows) if rows else None,
        "median_rotation_error_deg": float(np.median(rot_errors)) if rows else None,
        "median_translation_error": float(np.median(trans_errors)) if rows else None,
        "rot_thresh_deg": float(rot_thresh_deg),
        "trans_thresh": float(trans_thresh),
    }


def absolute_pose_errors(
    est: dict[str, np.ndarray], gt: dict[str, np.ndarray], reference: str
) -> dict[str, dict[str, float]]:
    """Per scan in both ``est`` and ``gt``: rotation (deg) and translation error in ``reference``'s frame."""
    if reference not in est or reference not in gt:
        where = "estimate" if reference not in est else "ground truth"
        raise ValueError(f"reference scan {reference!r} is missing from the {where}")
    est_ref_inv = np.linalg.inv(_as_transform(est[reference], reference))
    gt_ref_inv = np.linalg.inv(_as_transform(gt[reference], reference))
    errors = {}
    for name, pose in est.items():
        if name not in gt:
            continue
        rot, trans = relative_transform_errors(
            est_ref_inv @ _as_transform(pose, name), gt_ref_inv @ _as_transform(gt[name], name)
        )
        errors[name] = {"rotation_error_deg": rot, "translation_error": trans}
    return errors


def _cloud(points: np.ndarray, what: str) -> o3d.geometry.PointCloud:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"{what}: expected a non-empty (N, 3) array, got shape {points.shape}")
    return o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))


def chamfer_and_fscore(pred: np.ndarray, gt: np.ndarray, threshold: float) -> dict[str, float]:
    """Chamfer distance (both directions and their mean), precision, recall and F-score at ``threshold``.

    ``pred`` (N, 3), ``gt`` (M, 3). Keys: ``chamfer``, ``pred_to_gt``, ``gt_to_pred``,
    ``precision``, ``recall``, ``fscore``, ``threshold``.
    """
    if threshold <= 0.0:
        raise ValueError(f"F-score threshold must be positive, got {threshold}")
    pred_pcd, gt_pcd = _cloud(pred, "prediction"), _cloud(gt, "ground truth")
    d_pred = np.asarray(pred_pcd.compute_point_cloud_distance(gt_pcd))  # (N,) pred -> nearest gt
    d_gt = np.asarray(gt_pcd.compute_point_cloud_distance(pred_pcd))  # (M,) gt -> nearest pred
    precision = float(np.mean(d_pred < threshold))
    recall = float(np.mean(d_gt < threshold))
    fscore = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "chamfer": float(0.5 * (d_pred.mean() + d_gt.mean())),
        "pred_to_gt": float(d_pred.mean()),
        "gt_to_pred": float(d_gt.mean()),
        "precision": precision,
        "recall": recall,
        "fscore": float(fscore),
        "threshold": float(threshold),
    }


def fuse(clouds: list[np.ndarray], poses: list[np.ndarray], voxel: float) -> np.ndarray:
    """Transform each cloud (N_i, 3) by its (4, 4) pose, concatenate and voxel-downsample -> (M, 3).

    ``voxel <= 0`` skips the downsampling.
    """
    if len(clouds) != len(poses):
        raise ValueError(f"fuse: {len(clouds)} clouds but {len(poses)} poses")
    if not clouds:
        raise ValueError("fuse: no clouds given")
    parts = []
    for i, (points, pose) in enumerate(zip(clouds, poses)):
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"fuse: cloud {i} has shape {points.shape}, expected (N, 3)")
        T = _as_transform(pose, f"fuse: pose {i}")
        parts.append(points @ T[:3, :3].T + T[:3, 3])
    merged = np.concatenate(parts)
    if voxel <= 0.0:
        return merged
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(merged))
    return np.asarray(pcd.voxel_down_sample(voxel).points).copy()


def overlap_ratio(source: np.ndarray, target: np.ndarray, target_from_source: np.ndarray, radius: float) -> float:
    """Fraction of ``source`` points (N,3) within ``radius`` of ``target`` (M,3) once mapped by the 4x4."""
    if len(source) == 0 or len(target) == 0:
        return 0.0
    moved = source @ target_from_source[:3, :3].T + target_from_source[:3, 3]  # (N, 3)
    distances = np.asarray(
        o3d.geometry.PointCloud(o3d.utility.Vector3dVector(moved)).compute_point_cloud_distance(
            o3d.geometry.PointCloud(o3d.utility.Vector3dVector(target))
        )
    )  # (N,)
    return float(np.mean(distances <= radius))
