"""DVC stage ``evaluate_features``: FCGF against FPFH (or any descriptors) on one scan capture's pairs.

Inputs: a scan capture with ground-truth poses (as for ``evaluate_registration``), an FCGF
checkpoint (``--checkpoint``, needed when ``fcgf`` is among the descriptors), the
``evaluate_features`` section (descriptors, pair selection, thresholds, global method) and the
``register_scans`` section, whose preprocessing and pairwise settings are used unchanged so the
numbers describe what ``register_scans`` would do.
Output folder (written atomically): ``metrics.json`` (one summary per descriptor: feature-match
recall, mean inlier ratio, registration recall, median errors, extraction time per scan) and
``pairs.json`` (every pair and descriptor). Protocol: :mod:`capture3d.tasks.fcgf.evaluate`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from capture3d import stage_cli
from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.errors import CaptureError, ParamsError
from capture3d.stages.common import CaptureInputs, write_json
from capture3d.tasks.fcgf.evaluate import (
    FeatureEvalConfig,
    evaluate_descriptors,
    with_global_method,
)
from capture3d.tasks.fcgf.features import FCGF, registry_with_fcgf
from capture3d.tasks.registration.capture import (
    RegisterScansConfig,
    check_feature_names,
    compute_features,
    find_scan_ground_truth,
    prepare_scans,
    scale_translation,
)
from capture3d.tasks.registration.features import feature_registry, get_feature
from capture3d.tasks.registration.scan_io import read_gt_poses

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateFeaturesConfig(FeatureEvalConfig):
    """The ``evaluate_features`` section: the protocol's thresholds plus what to compare and how."""

    features: tuple[str, ...]
    """descriptors compared, e.g. [fpfh, fcgf]"""
    global_method: Literal["fgr", "ransac", "fgr_then_ransac"]
    """global registration of each pair (register_scans' other pairwise settings apply)"""
    gt_format: str
    """format of the ground-truth poses (auto: from the files found)"""
    device: Literal["auto", "cpu", "cuda"]
    """where FCGF extracts features (auto: CUDA when available)"""


@dataclass(frozen=True)
class EvaluateFeaturesInputs(CaptureInputs):
    """A scan capture with ground truth, the FCGF checkpoint and optional explicit ground truth."""

    capture: Path
    """scan capture folder with ground-truth poses"""
    checkpoint: Path | None = None
    """FCGF checkpoint (capture3d or official FCGF .pth), needed for the fcgf descriptor"""
    gt: Path | None = None
    """ground-truth poses (default: found in the capture)"""


Inputs = EvaluateFeaturesInputs
INPUT_ALIASES = {"scans": "capture"}
"""legacy flag: ``capture3d evaluate features --scans`` is ``--capture``"""


def has_ground_truth(inputs: EvaluateFeaturesInputs) -> bool:
    """Whether there are ground-truth poses (given, or found in the capture)."""
    return inputs.gt is not None or find_scan_ground_truth(inputs.capture) is not None


def load_config(params: Mapping[str, Any]) -> tuple[EvaluateFeaturesConfig, RegisterScansConfig]:
    config = section(params, "evaluate_features", EvaluateFeaturesConfig)
    check_feature_names(config.features, "evaluate_features.features")
    if not config.features:
        raise ParamsError("evaluate_features.features: name at least one descriptor")
    return config, section(params, "register_scans", RegisterScansConfig)


def run(inputs: EvaluateFeaturesInputs, out: Path, configs: tuple[EvaluateFeaturesConfig, RegisterScansConfig]) -> Path:
    """Compare the descriptors on every overlapping ground-truth pair of the capture; returns ``out``."""
    config, reg = configs
    label = inputs.label
    registry = feature_registry()
    if FCGF in config.features:
        if inputs.checkpoint is None:
            raise CaptureError(label, "descriptor 'fcgf' needs --checkpoint")
        try:
            registry = registry_with_fcgf(inputs.checkpoint, config.device)
        except ValueError as exc:
            raise CaptureError(label, str(exc)) from None
    scans, voxel, prepared, _, _ = prepare_scans(inputs.capture, inputs.label, reg.preprocess)
    names = [s.name for s in scans]
    gt_path = inputs.gt or find_scan_ground_truth(inputs.capture)
    if gt_path is None:
        raise CaptureError(label, "no ground-truth poses found (gt/poses.json, a .conf, .log, gt.npy or matrices)")
    try:
        gt = read_gt_poses(gt_path, names, config.gt_format, require_all=False)
    except ValueError as exc:
        raise CaptureError(label, str(exc)) from None
    if reg.preprocess.units_scale != 1.0:
        gt = {n: scale_translation(T, reg.preprocess.units_scale) for n, T in gt.items()}
    keep = [i for i, n in enumerate(names) if n in gt]
    if len(keep) < 2:
        raise CaptureError(label, f"ground truth covers {len(keep)} scan(s): need 2 to form a pair")

    kept = [prepared[i] for i in keep]
    features: dict[str, list[np.ndarray]] = {}
    timing: dict[str, float] = {}
    for name in config.features:
        t = time.perf_counter()
        features[name] = compute_features(label, kept, voxel, get_feature(name, registry))
        timing[name] = (time.perf_counter() - t) / len(kept)
    clouds = [p.pcd for p in kept]
    rows, summary = evaluate_descriptors(
        [names[i] for i in keep],
        clouds,
        features,
        [gt[names[i]] for i in keep],
        voxel,
        with_global_method(reg.pair, config.global_method),
        config,
    )
    if not rows:
        raise CaptureError(label, f"no scan pair overlaps at least {config.min_overlap:.0%} under the ground truth")
    for name in config.features:
        summary[name]["extract_s_per_scan"] = timing[name]
        summary[name]["dimension"] = int(features[name][0].shape[1])
    with atomic_dir(out) as tmp:
        write_json(tmp / "pairs.json", {"pairs": rows})
        write_json(
            tmp / "metrics.json",
            {
                "capture": label,
                "status": "ok",
                "voxel_size": voxel,
                "num_scans": len(keep),
                "global_method": config.global_method,
                "inlier_distance": config.inlier_distance * config.threshold_scale,
                "inlier_ratio_threshold": config.inlier_ratio,
                "checkpoint": str(inputs.checkpoint or ""),
                "features": summary,
            },
        )
    logger.info(
        "capture '%s': %s",
        label,
        ", ".join(
            f"{n} FMR {s['feature_match_recall']:.2f} RR {s['registration_recall']:.2f}" for n, s in summary.items()
        ),
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return stage_cli.stage_main(__name__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
