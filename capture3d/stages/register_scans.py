"""DVC stage ``register_scans``: a capture of scans -> one pose per scan, the fused model, metrics.

Inputs: a scan capture folder (point clouds in ``scans/`` or directly inside: PLY, PCD, XYZ, NPY)
and the ``register_scans`` section of params.yaml (preprocessing, features, pairwise and multiway
settings). Output folder (written atomically): ``poses.json`` (world_from_scan 4x4 for every
placed scan; world = the reference scan's frame; and each placed scan's confidence),
``pairs.json`` (every pairwise result with its hypotheses), ``fused.ply`` (the fused,
voxel-downsampled model), ``fcgf_adapted/`` (always present: ``info.json`` says whether the FCGF
model was adapted to this capture; when the adapted model was used it also holds it as
``model.pt``, a DVC-tracked output) and ``metrics.json`` (placed, low-confidence and unplaced scans with
reasons, ``status``: ``ok`` when every scan is placed with high confidence, else ``partial``; what
the verification could use (sensor origins and their sources); pair statistics, the voxel size,
runtime per step; with ``fcgf.adapt`` the self-supervised validation FMR before and after
adaptation, ``fcgf_adaptation``).

FCGF adaptation (``features: fcgf`` with ``fcgf.adapt: true``): the checkpoint's model is first
fine-tuned on self-supervised pairs cut from this capture's own scans
(:mod:`capture3d.tasks.fcgf.adapt`, time-boxed by ``fcgf.adapt_max_seconds``), then extracts the
features. When adaptation lowers the validation FMR, the original model is used and the metrics
say so.

Pairs registered (``multiway.pairs``): every pair up to ``multiway.max_all_pairs_scans`` scans; above
that (or with ``scalable``) sequential odometry pairs plus loop closures found by predicted overlap
after odometry and by global-descriptor retrieval, O(N * k) pairs
(:mod:`capture3d.tasks.registration.candidates`); ``metrics.json`` counts them by source
(``verification.num_pairs_by_source``).

Sensor origins (``sensor_origin``: ``auto`` | ``scan_frame`` | ``none``, see
:mod:`capture3d.tasks.registration.sensor_origin`) give each scan a range image for the free-space test of
:mod:`capture3d.tasks.registration.multiway`; without them registration falls back to the fitness / RMSE gates
and cycle consistency, and ``metrics.json`` says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capture3d import stage_cli
from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.errors import CaptureError
from capture3d.stages.common import CaptureInputs, write_json
from capture3d.tasks.device import resolve_device
from capture3d.tasks.fcgf.adapt import AdaptConfig, adapt_model
from capture3d.tasks.fcgf.checkpoint import save_checkpoint
from capture3d.tasks.fcgf.features import FCGF
from capture3d.tasks.registration.capture import (
    RegisterScansConfig,
    check_feature_names,
    compute_features,
    feature_registry_for,
    load_fcgf_model,
    prepare_scans,
    sensor_views,
)
from capture3d.tasks.registration.features import (
    get_feature,
)
from capture3d.tasks.registration.graph import fuse_clouds
from capture3d.tasks.registration.multiway import register_multiway
from capture3d.tasks.registration.scan_io import (
    Scan,
    write_poses_json,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisterScansInputs(CaptureInputs):
    """A scan capture: its point clouds are in ``scans/`` or directly in the folder."""

    capture: Path
    """scan capture folder: point clouds (PLY, PCD, XYZ, NPY) in ``scans/`` or directly inside"""

    @property
    def scan_dir(self) -> Path:
        return self.data_dir("scans")


Inputs = RegisterScansInputs
INPUT_ALIASES = {"scans": "capture"}
"""legacy flag: ``capture3d register --scans`` is ``--capture``"""
CLI_ALIASES = {
    "voxel": "preprocess.voxel_size",
    "global-method": "pair.global_method",
    "icp": "pair.icp_method",
    "pairs": "multiway.pairs",
}
"""legacy flags of ``capture3d register``: other names of the dotted flags"""


def load_config(params: Mapping[str, Any]) -> RegisterScansConfig:
    config = section(params, "register_scans", RegisterScansConfig)
    check_feature_names([config.features], "register_scans.features")
    return config


def run(inputs: RegisterScansInputs, out: Path, config: RegisterScansConfig) -> Path:
    """Register every scan of the capture into one frame and fuse them; returns ``out``."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    fcgf = load_fcgf_model(config.fcgf, inputs.label) if config.features == FCGF else None
    registry = feature_registry_for(config, inputs.label, fcgf[0] if fcgf else None)
    scans, voxel, prepared, prep_timings, skipped = prepare_scans(inputs.capture, inputs.label, config.preprocess)
    timings.update(prep_timings)
    adaptation: dict[str, Any] = {
        "adapted": False,
        "reason": "features is not fcgf" if fcgf is None else "adapt: false",
    }
    adapted = None
    if fcgf is not None and config.fcgf.adapt:
        t = time.perf_counter()
        adapted, adaptation = _adapt(inputs.label, config, fcgf, scans, voxel)
        timings["adapt_s"] = time.perf_counter() - t
        if adapted is not None:
            registry = feature_registry_for(config, inputs.label, adapted)

    t = time.perf_counter()
    features = compute_features(inputs.label, prepared, voxel, get_feature(config.features, registry))
    timings["features_s"] = time.perf_counter() - t

    t = time.perf_counter()
    views, origin_sources = sensor_views(
        inputs.capture, inputs.label, scans, config.sensor_origin, config.preprocess.units_scale
    )
    timings["range_images_s"] = time.perf_counter() - t

    names = [s.name for s in scans]
    clouds = [p.pcd for p in prepared]
    result = register_multiway(names, clouds, features, voxel, config.pair, config.multiway, views)
    timings.update({f"multiway_{k}": v for k, v in result.seconds.items()})
    if len(result.poses) < 2:
        reasons = "; ".join(f"{n}: {r}" for n, r in list(result.unplaced.items())[:3])
        raise CaptureError(inputs.label, f"no two scans could be registered confidently ({reasons})")

    t = time.perf_counter()
    placed = [n for n in names if n in result.poses]
    fused = fuse_clouds(
        [clouds[names.index(n)] for n in placed], [result.poses[n] for n in placed], voxel * config.fused_voxel_factor
    )
    timings["fuse_s"] = time.perf_counter() - t
    with atomic_dir(out) as tmp:
        import open3d as o3d

        o3d.io.write_point_cloud(str(tmp / "fused.ply"), fused)
        (tmp / "fcgf_adapted").mkdir()
        if adapted is not None and fcgf is not None:
            save_checkpoint(
                tmp / "fcgf_adapted" / "model.pt",
                adapted,
                fcgf[1],
                adapted_from=str(fcgf[2]),
                adaptation={k: v for k, v in adaptation.items() if k != "model"},
            )
        write_json(tmp / "fcgf_adapted" / "info.json", adaptation)
        write_poses_json(tmp / "poses.json", result.poses, confidence=result.confidence)
        write_json(tmp / "pairs.json", {"pairs": [_pair_record(p) for p in result.pairs]})
        timings["total_s"] = time.perf_counter() - start
        write_json(
            tmp / "metrics.json",
            {
                **_metrics(
                    inputs.label, scans, prepared, voxel, result, timings, len(fused.points), config, origin_sources
                ),
                "fcgf_adaptation": adaptation,
                "skipped_scans": skipped,
                "num_skipped_scans": len(skipped),
            },
        )
    logger.info(
        "capture '%s': %d/%d scans placed (%d low confidence) -> %s",
        inputs.label,
        len(result.poses),
        len(scans),
        len(result.low_confidence),
        out,
    )
    return out


def _adapt(
    label: str, config: RegisterScansConfig, fcgf: tuple[Any, Any, Path], scans: list[Scan], voxel: float
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune the FCGF model on the capture's scans: (the adapted model, or None when it matched the
    validation pairs worse than the original, and what happened, for metrics.json)."""
    f = config.fcgf
    adapt_config = AdaptConfig(
        max_seconds=f.adapt_max_seconds,
        max_iterations=f.adapt_max_iterations,
        learning_rate=f.adapt_learning_rate,
        val_pairs=f.adapt_val_pairs,
        val_inlier_voxels=f.adapt_val_inlier_voxels,
        inlier_ratio=0.05,
        views=f.adapt_views,
    )
    try:
        res = adapt_model(
            fcgf[0], [(s.name, s.points) for s in scans], voxel, adapt_config, f.adapt_seed, resolve_device(f.device)
        )
    except ValueError as exc:
        raise CaptureError(label, f"FCGF adaptation: {exc}") from None
    info = {
        "adapted": True,
        "used": "adapted" if res.improved else "original",
        "reason": "" if res.improved else "adaptation lowered the validation FMR: the original model was used",
        "checkpoint": str(fcgf[2]),
        "val_fmr_before": res.fmr_before,
        "val_fmr_after": res.fmr_after,
        "val_inlier_ratio_before": res.inlier_ratio_before,
        "val_inlier_ratio_after": res.inlier_ratio_after,
        "num_val_pairs": res.num_val_pairs,
        "iterations": res.iterations,
        "seconds": res.seconds,
        "loss_first": res.losses[0] if res.losses else None,
        "loss_last": res.losses[-1] if res.losses else None,
    }
    return (res.model if res.improved else None), info


def _pair_record(pair: Any) -> dict[str, Any]:
    return {
        "source": pair.source,
        "target": pair.target,
        "transformation": np.asarray(pair.transformation).tolist(),
        "fitness": float(pair.fitness),
        "inlier_rmse": float(pair.inlier_rmse),
        "confident": bool(pair.confident),
        "reason": pair.reason,
        "method": pair.method,
        "seconds": pair.seconds,
        "hypotheses": [
            {
                "transformation": np.asarray(h.transformation).tolist(),
                "fitness": h.fitness,
                "inlier_rmse": h.inlier_rmse,
                "confident": h.confident,
                "reason": h.reason,
                "method": h.method,
            }
            for h in pair.hypotheses
        ],
    }


def _metrics(
    label: str,
    scans: list[Scan],
    prepared: list[Any],
    voxel: float,
    result: Any,
    timings: dict[str, float],
    num_fused: int,
    config: RegisterScansConfig,
    origin_sources: dict[str, str],
) -> dict[str, Any]:
    confident = [p for p in result.pairs if p.confident]
    partial = bool(result.unplaced or result.low_confidence)
    return {
        "capture": label,
        "status": "partial" if partial else "ok",
        "partial": partial,  # flows, manifests and the report mark the capture partial
        "num_scans": len(scans),
        "num_placed": len(result.poses),
        "num_low_confidence": len(result.low_confidence),
        "placed_fraction": len(result.poses) / len(scans),
        "unplaced": result.unplaced,
        "low_confidence": result.low_confidence,
        "confidence": result.confidence,
        "reference_scan": result.reference,
        "verification": {
            **result.verification,
            "sensor_origin_mode": config.sensor_origin,
            "sensor_origin_sources": origin_sources,
        },
        "voxel_size": voxel,
        "units_scale": config.preprocess.units_scale,
        "features": config.features,
        "global_method": config.pair.global_method,
        "icp_method": config.pair.icp_method,
        "num_pairs": len(result.pairs),
        "num_confident_pairs": len(confident),
        "num_kept_edges": len(result.kept_edges),
        "mean_pair_fitness": float(np.mean([p.fitness for p in confident])) if confident else 0.0,
        "mean_pair_inlier_rmse": float(np.mean([p.inlier_rmse for p in confident])) if confident else 0.0,
        "num_points_input": int(sum(len(s.points) for s in scans)),
        "num_points_downsampled": int(sum(len(p.pcd.points) for p in prepared)),
        "num_outliers_removed": int(sum(p.num_removed_outliers for p in prepared)),
        "num_points_fused": num_fused,
        "timings": timings,
    }


def main(argv: Sequence[str] | None = None) -> int:
    return stage_cli.stage_main(__name__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
