"""Body-fit metrics: 2D keypoint error, PCK, and MPJPE / PA-MPJPE against 3D ground truth.

Inputs: the fit records (one dict per body, as written to ``people.json`` by the ``fit_bodies``
stage: per view the image, the person id, keypoint names, the input keypoints and the fit's
reprojection, the box size; the fitted 3D keypoints), optional 2D ground truth (people by id) and
optional 3D ground truth (body id -> keypoint name -> point, metres). Output: a metrics dict with
per-body rows and medians. Without 2D ground truth the reference is the fitted input itself.
3D metrics, over the joints the ground truth shares with the fit (listed as ``joints_compared``):
MPJPE in the output frame (``mpjpe_mm``), root-aligned MPJPE (protocol 1, ``root_mpjpe_mm``; root
= mid-hip, the mean of both hips, when both are compared) and PA-MPJPE (protocol 2, ``pa_mpjpe_mm``).
A body the 3D ground truth lists must share at least :data:`MIN_JOINTS_3D` joints (finite points)
with the fitted keypoints, else :class:`GroundTruthError` names the body and the joints found.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from capture3d.tasks.body.keypoint_io import PersonKeypoints
from capture3d.tasks.body.metrics import keypoint_errors_2d, mpjpe, pa_mpjpe, root_aligned_mpjpe

logger = logging.getLogger(__name__)

MIN_JOINTS_3D = 3
"""joints a body's 3D ground truth must share with the fit (Procrustes alignment needs 3)"""

ROOT_JOINTS = ("left_hip", "right_hip")
"""the root of the root-aligned MPJPE is their mean (mid-hip), when both are compared"""


class GroundTruthError(ValueError):
    """Ground truth that cannot score a body (one line naming the body)."""


def _point(value: object) -> np.ndarray | None:
    """A ground-truth joint as (3,) float64, or None when it is null or not 3 finite numbers."""
    try:
        point = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return point if point.shape == (3,) and np.isfinite(point).all() else None


def shared_joints(truth: Mapping[str, object], names: Sequence[str]) -> list[str]:
    """The ``names`` (fit order) that ``truth`` gives as finite 3D points."""
    return [n for n in names if n in truth and _point(truth[n]) is not None]


def _too_few(body: str, shared: Sequence[str], truth: Mapping[str, object]) -> str:
    found = ", ".join(shared) if shared else "none"
    theirs = ", ".join(list(truth)[:8]) + (", ..." if len(truth) > 8 else "")
    return (
        f"body '{body}': 3D ground truth shares {len(shared)} joint(s) with the fitted keypoints ({found}), "
        f"at least {MIN_JOINTS_3D} are needed (ground truth joints: {theirs or 'none'})"
    )


def check_ground_truth_3d(
    bodies: Sequence[str], names: Sequence[str], gt3d: Mapping[str, Mapping[str, object]]
) -> None:
    """Raise :class:`GroundTruthError` for the first of ``bodies`` that ``gt3d`` lists with fewer
    than :data:`MIN_JOINTS_3D` of ``names``, or when ``gt3d`` lists bodies but none of ``bodies``
    (an evaluation that would silently compare nothing)."""
    listed = [b for b in bodies if b in gt3d]
    if gt3d and bodies and not listed:
        raise GroundTruthError(
            f"3D ground truth lists none of the {len(bodies)} fitted bodies (it has {', '.join(list(gt3d)[:3])}; "
            f"the fit has {', '.join(list(bodies)[:3])})"
        )
    for body in listed:
        truth = gt3d[body]
        if not isinstance(truth, Mapping):
            raise GroundTruthError(f"body '{body}': 3D ground truth is not a mapping of joint names to points")
        shared = shared_joints(truth, names)
        if len(shared) < MIN_JOINTS_3D:
            raise GroundTruthError(_too_few(body, shared, truth))


def _reference(view: Mapping, gt2d: Mapping[str, PersonKeypoints] | None) -> tuple[np.ndarray, np.ndarray, float]:
    """(K, 2) reference points, (K,) visibility and box size for one fitted view."""
    names = view["names"]
    if gt2d is not None and view["person"] in gt2d:
        gt = gt2d[view["person"]]
        where = {n: i for i, n in enumerate(gt.names)}
        xy = np.array([gt.xy[where[n]] if n in where else (np.nan, np.nan) for n in names])
        vis = np.array([n in where and gt.conf[where[n]] > 0 for n in names])
        box = float(max(gt.bbox[2], gt.bbox[3])) if gt.bbox is not None else float(view["box"])
        return xy, vis, box
    return np.asarray(view["input"], dtype=np.float64), np.asarray(view["input_conf"]) > 0, float(view["box"])


def evaluate_records(
    records: Sequence[Mapping],
    gt2d: Mapping[str, PersonKeypoints] | None = None,
    gt3d: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    pck_threshold: float = 0.1,
) -> dict:
    """Per-body and median metrics (2D per fitted view; 3D per body with ground truth).

    Raises :class:`GroundTruthError` when a body's 3D ground truth shares fewer than
    :data:`MIN_JOINTS_3D` joints with its fitted keypoints."""
    rows = []
    for rec in records:
        row: dict = {"body": rec["body"]}
        errs = []
        for view in rec["views"]:
            ref, vis, box = _reference(view, gt2d)
            errs.append(keypoint_errors_2d(np.asarray(view["reprojected"]), ref, vis, box, (pck_threshold,)))
        counted = [e for e in errs if e["num_visible"] > 0]
        if counted:
            row["error_px"] = float(np.mean([e["mean_px"] for e in counted]))
            row["error_norm"] = float(np.mean([e["mean_norm"] for e in counted]))
            row[f"pck_{pck_threshold:g}"] = float(np.mean([e[f"pck_{pck_threshold:g}"] for e in counted]))
        if gt3d is not None and rec["body"] in gt3d:
            truth = gt3d[rec["body"]]
            if not isinstance(truth, Mapping):
                raise GroundTruthError(
                    f"body '{rec['body']}': 3D ground truth is not a mapping of joint names to points"
                )
            names = shared_joints(truth, rec["keypoints3d"]["names"])
            if len(names) < MIN_JOINTS_3D:
                raise GroundTruthError(_too_few(rec["body"], names, truth))
            where = {n: i for i, n in enumerate(rec["keypoints3d"]["names"])}
            pred = np.array([rec["keypoints3d"]["points"][where[n]] for n in names])[None]
            gt = np.stack([_point(truth[n]) for n in names])[None]
            row["mpjpe_mm"] = float(mpjpe(pred, gt)[0] * 1000)
            row["pa_mpjpe_mm"] = float(pa_mpjpe(pred, gt)[0] * 1000)
            if all(r in names for r in ROOT_JOINTS):
                root = [names.index(r) for r in ROOT_JOINTS]
                row["root_mpjpe_mm"] = float(root_aligned_mpjpe(pred, gt, root)[0] * 1000)
            row["joints_3d"] = len(names)
            row["joints_compared"] = list(names)
        rows.append(row)
    summary: dict = {"bodies": len(rows), "reference_2d": "ground truth" if gt2d is not None else "input keypoints"}
    for key in ("error_px", "error_norm", f"pck_{pck_threshold:g}", "mpjpe_mm", "pa_mpjpe_mm", "root_mpjpe_mm"):
        values = [r[key] for r in rows if key in r]
        if values:
            summary[f"median_{key}"] = float(np.median(values))
            summary[f"mean_{key}"] = float(np.mean(values))
    compared = [r["joints_compared"] for r in rows if "joints_compared" in r]
    if compared:
        counts: dict[str, int] = {}
        for names in compared:
            for n in names:
                counts[n] = counts.get(n, 0) + 1
        summary["joints_compared"] = list(counts)  # first-seen (fit) order
        summary["joints_compared_bodies"] = counts  # how many bodies compared each joint
        if any(k.startswith("median_root") for k in summary):
            summary["root_joint"] = "mid_hip (mean of left_hip and right_hip)"
    return {"summary": summary, "per_body": rows}
