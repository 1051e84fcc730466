"""DVC stage ``evaluate_registration``: a ``register_scans`` result against ground-truth poses.

Inputs: the ``register_scans`` output folder (poses.json, pairs.json, fused.ply, metrics.json), the
scan capture (its scans, and ground truth found inside it: ``gt/poses.json``, ``gt.log``, a
Stanford ``.conf``, or ``gt/`` with one 4x4 matrix per scan; or an explicit path) and the
``evaluate_registration`` section. Output folder (written atomically): ``metrics.json`` with per
pair rotation/translation errors, fitness, inlier RMSE and the registration recall; per scan the
absolute pose error in the reference scan's frame; Chamfer distance and F-score of the fused
model against the ground-truth fused model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import open3d as o3d

from capture3d import stage_cli
from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.errors import CaptureError
from capture3d.stages.common import write_json
from capture3d.tasks.registration.capture import (
    find_scan_ground_truth,
    load_scans,
    scale_translation,
)
from capture3d.tasks.registration.evaluate import (
    absolute_pose_errors,
    chamfer_and_fscore,
    fuse,
    overlap_ratio,
    pair_metrics,
)
from capture3d.tasks.registration.scan_io import read_gt_poses

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateRegistrationConfig:
    """The ``evaluate_registration`` section. Translation thresholds are in metres and multiplied by
    ``threshold_scale`` (e.g. 0.01 for objects of a few centimetres). Registration recall counts the
    pairs whose ground-truth overlap is at least ``recall_min_overlap`` (3DMatch protocol: 30 %); the
    F-score threshold is ``fscore_voxel_factor`` times the registration voxel size."""

    gt_format: Literal["auto", "stanford", "3dmatch", "matrices", "json"]
    """format of the ground-truth poses (auto: from the files found)"""
    rotation_threshold_deg: float
    """registration recall: pair rotation error under this, degrees ..."""
    translation_threshold: float
    """... and translation error under this (metres, times threshold_scale)"""
    ape_rotation_threshold_deg: float
    """a scan's absolute pose is within tolerance under this rotation error ..."""
    ape_translation_threshold: float
    """... and this translation error (metres, times threshold_scale)"""
    recall_min_overlap: float
    """recall counts pairs overlapping at least this much (3DMatch protocol: 0.3)"""
    fscore_voxel_factor: float
    """F-score threshold = factor * registration voxel size"""
    threshold_scale: float
    """multiplies the translation thresholds (0.1 for small objects)"""


@dataclass(frozen=True)
class EvaluateRegistrationInputs:
    """A register_scans output folder, its scan capture, and optional explicit ground truth."""

    result: Path
    """register_scans output folder (poses.json, pairs.json, fused.ply, metrics.json)"""
    capture: Path
    """the scan capture folder (its scans, and ground truth found inside it)"""
    gt: Path | None = None
    """ground-truth poses (default: found in the capture)"""
    name: str = ""
    """capture name for messages (default: the capture folder name)"""

    @property
    def label(self) -> str:
        return self.name or self.capture.name


Inputs = EvaluateRegistrationInputs
INPUT_ALIASES = {"scans": "capture"}
"""legacy flag: ``capture3d evaluate registration --scans`` is ``--capture``"""


def has_ground_truth(inputs: EvaluateRegistrationInputs) -> bool:
    """Whether there are ground-truth poses (given, or found in the capture)."""
    return inputs.gt is not None or find_scan_ground_truth(inputs.capture) is not None


def load_config(params: Mapping[str, Any]) -> EvaluateRegistrationConfig:
    return section(params, "evaluate_registration", EvaluateRegistrationConfig)


def read_metrics(out: Path) -> dict[str, Any]:
    return json.loads((Path(out) / "metrics.json").read_text())


def run(inputs: EvaluateRegistrationInputs, out: Path, config: EvaluateRegistrationConfig) -> Path:
    """Evaluate one registration result; returns ``out``."""
    label = inputs.label
    for required in ("poses.json", "pairs.json", "metrics.json", "fused.ply"):
        if not (inputs.result / required).is_file():
            raise CaptureError(label, f"'{inputs.result}' is not a register_scans result (no {required})")
    reg = json.loads((inputs.result / "metrics.json").read_text())
    pairs = json.loads((inputs.result / "pairs.json").read_text())["pairs"]
    gt_path = inputs.gt or find_scan_ground_truth(inputs.capture)
    if gt_path is None:
        raise CaptureError(label, f"no ground-truth poses found in '{inputs.capture}'")
    units = float(reg.get("units_scale", 1.0))
    scans, _ = load_scans(inputs.capture, label, units)
    names = [s.name for s in scans]
    try:
        gt = read_gt_poses(gt_path, names, config.gt_format)
    except ValueError as exc:
        raise CaptureError(label, f"ground truth does not match the scans: {exc}") from None
    missing = [n for n in names if n not in gt]
    if missing:
        raise CaptureError(label, f"ground truth does not match the scans: no pose for {', '.join(missing[:5])}")
    gt = {n: scale_translation(T, units) for n, T in gt.items()}
    est = read_gt_poses(inputs.result / "poses.json", names, "json", require_all=False)

    scale = config.threshold_scale
    pair_list = [(p["source"], p["target"], np.asarray(p["transformation"])) for p in pairs]
    voxel = float(reg["voxel_size"])
    pm = pair_metrics(pair_list, gt, config.rotation_threshold_deg, config.translation_threshold * scale)
    sampled = {s.name: fuse([s.points], [np.eye(4)], voxel) for s in scans}
    for record, p in zip(pm["pairs"], pairs):
        T_gt = np.linalg.inv(gt[p["target"]]) @ gt[p["source"]]
        overlap = overlap_ratio(sampled[p["source"]], sampled[p["target"]], T_gt, voxel)
        record.update(fitness=p["fitness"], inlier_rmse=p["inlier_rmse"], confident=p["confident"], gt_overlap=overlap)
    overlapping = [r for r in pm["pairs"] if r["gt_overlap"] >= config.recall_min_overlap]
    confident = [r for r in pm["pairs"] if r["confident"]]
    reference = reg["reference_scan"]
    ape = absolute_pose_errors(est, gt, reference)
    ape_t = config.ape_translation_threshold * scale
    within = [
        n
        for n, e in ape.items()
        if e["rotation_error_deg"] <= config.ape_rotation_threshold_deg and e["translation_error"] <= ape_t
    ]
    wrong = sorted(set(ape) - set(within))

    ref_inv = np.linalg.inv(gt[reference])
    gt_fused = fuse([s.points for s in scans], [ref_inv @ gt[n] for n in names], voxel)
    pred = np.asarray(o3d.io.read_point_cloud(str(inputs.result / "fused.ply")).points)
    surface = chamfer_and_fscore(pred, gt_fused, config.fscore_voxel_factor * voxel)

    rot = [e["rotation_error_deg"] for e in ape.values()]
    trans = [e["translation_error"] for e in ape.values()]
    metrics: dict[str, Any] = {
        "capture": label,
        "num_scans": len(names),
        "num_placed": len(est),
        "num_within_tolerance": len(within),
        "placed_beyond_tolerance": wrong,
        "low_confidence_beyond_tolerance": sorted(n for n in wrong if n in reg.get("low_confidence", {})),
        "unplaced": reg.get("unplaced", {}),
        "low_confidence": reg.get("low_confidence", {}),
        "partial": bool(reg.get("partial", False)),
        "ape_rotation_deg_median": float(np.median(rot)),
        "ape_rotation_deg_max": float(np.max(rot)),
        "ape_translation_median": float(np.median(trans)),
        "ape_translation_max": float(np.max(trans)),
        "registration_recall": _fraction(overlapping, "success"),
        "num_overlapping_pairs": len(overlapping),
        "registration_recall_all_pairs": pm["registration_recall"],
        "confident_pair_precision": _fraction(confident, "success"),
        "num_confident_pairs": len(confident),
        "num_pairs": len(pair_list),
        **{f"fused_{k}": v for k, v in surface.items()},
        "thresholds": {
            "pair_rotation_deg": config.rotation_threshold_deg,
            "pair_translation": config.translation_threshold * scale,
            "ape_rotation_deg": config.ape_rotation_threshold_deg,
            "ape_translation": ape_t,
            "fscore": config.fscore_voxel_factor * voxel,
            "recall_min_overlap": config.recall_min_overlap,
        },
        "per_scan": ape,
        "pairs": pm["pairs"],
        "register_timings": reg.get("timings", {}),
    }
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", metrics)
    return out


def _fraction(rows: list[dict[str, Any]], key: str) -> float | None:
    return sum(bool(r[key]) for r in rows) / len(rows) if rows else None


def main(argv: Sequence[str] | None = None) -> int:
    return stage_cli.stage_main(__name__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
