"""DVC stage ``register_scans``: a capture of scans -> one pose per scan, the fused model, metrics.

Inputs: a scan capture folder (point clouds in ``scans/`` or directly inside: PLY, PCD, XYZ, NPY)
and the ``register_scans`` section of params.yaml (preprocessing, features, pairwise and multiway
settings). Output folder (written atomically): ``poses.json`` (world_from_scan 4x4 for every
placed scan; world = the reference scan's frame; and each placed scan's confidence),
``pairs.json`` (every pairwise result with its hypotheses), ``fused.ply`` (the fused,
voxel-downsampled model) and ``metrics.json`` (placed, low-confidence and unplaced scans with
reasons, ``status``: ``ok`` when every scan is placed with high confidence, else ``partial``; what
the verification could use (sensor origins and their sources); pair statistics, the voxel size,
runtime per step).

Sensor origins (``sensor_origin``: ``auto`` | ``scan_frame`` | ``none``, see
:mod:`capture3d.tasks.sensor_origin`) give each scan a range image for the free-space test of
:mod:`capture3d.tasks.multiway`; without them registration falls back to the fitness / RMSE gates
and cycle consistency, and ``metrics.json`` says so.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.errors import CaptureError, ParamsError
from capture3d.stages.common import (
    CaptureInputs,
    params_from_args,
    stage_main,
    stage_parser,
    write_json,
)
from capture3d.tasks.fcgf_features import FCGF, registry_with_fcgf
from capture3d.tasks.multiway import MultiwayConfig, fuse_clouds, register_multiway
from capture3d.tasks.register_pair import PairConfig
from capture3d.tasks.scan_features import FeatureFn, feature_registry, get_feature
from capture3d.tasks.scan_io import Scan, list_scan_files, read_scans, write_poses_json
from capture3d.tasks.sensor_origin import OriginMode, sensor_origins
from capture3d.tasks.visibility import RangeImage, range_image
from capture3d.tasks.scan_preprocess import Preprocessed, auto_voxel_size, preprocess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessConfig:
    """Voxel size (metres after ``units_scale``, or ``auto``), outlier removal and normals."""

    units_scale: float
    voxel_size: Literal["auto"] | float
    auto_target_points: int
    outlier_neighbors: int
    outlier_std_ratio: float
    normal_radius_factor: float
    min_points: int


@dataclass(frozen=True)
class FcgfFeatureConfig:
    """The trained FCGF model used when ``features: fcgf``."""

    checkpoint: str  # capture3d or official FCGF checkpoint (train_fcgf writes models/fcgf/model.pt)
    device: Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class RegisterScansConfig:
    """The ``register_scans`` section."""

    preprocess: PreprocessConfig
    sensor_origin: OriginMode  # auto (file headers, sensor_origin.json) | scan_frame (origin of each scan) | none
    features: str
    fcgf: FcgfFeatureConfig
    pair: PairConfig
    multiway: MultiwayConfig
    fused_voxel_factor: float


class RegisterScansInputs(CaptureInputs):
    """A scan capture: its point clouds are in ``scans/`` or directly in the folder."""

    @property
    def scan_dir(self) -> Path:
        return self.data_dir("scans")


def load_config(params: Mapping[str, Any]) -> RegisterScansConfig:
    config = section(params, "register_scans", RegisterScansConfig)
    check_feature_names([config.features], "register_scans.features")
    return config


def check_feature_names(names: Sequence[str], key: str) -> None:
    """ParamsError (listing the known ones) for a name that is neither built in nor ``fcgf``."""
    known = {**feature_registry(), FCGF: None}
    for name in names:
        try:
            get_feature(name, known)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ParamsError(f"{key}: {exc}") from None


def load_scans(inputs: RegisterScansInputs, units_scale: float) -> list[Scan]:
    """Read and scale the capture's scans; bad files become a CaptureError naming the capture."""
    if not inputs.capture.is_dir():
        raise CaptureError(inputs.label, f"capture folder '{inputs.capture}' does not exist")
    try:
        scans = read_scans(inputs.scan_dir)
    except ValueError as exc:
        raise CaptureError(inputs.label, str(exc)) from None
    if len(scans) < 2:
        raise CaptureError(inputs.label, f"only {len(scans)} scan in '{inputs.scan_dir}': nothing to register")
    if units_scale != 1.0:
        scans = [Scan(s.name, s.points * units_scale, s.colors) for s in scans]
    return scans


def prepare_scans(inputs: RegisterScansInputs, pp: PreprocessConfig
                  ) -> tuple[list[Scan], float, list[Preprocessed], dict[str, float]]:
    """Read, scale, size the voxel of and preprocess a capture's scans (CaptureError naming it)."""
    t = time.perf_counter()
    scans = load_scans(inputs, pp.units_scale)
    timings = {"read_s": time.perf_counter() - t}
    try:
        voxel = auto_voxel_size(scans, pp.auto_target_points) if pp.voxel_size == "auto" else float(pp.voxel_size)
        t = time.perf_counter()
        prepared = [preprocess(s, voxel, pp.outlier_neighbors, pp.outlier_std_ratio, pp.normal_radius_factor,
                               min_points=pp.min_points) for s in scans]
    except ValueError as exc:
        raise CaptureError(inputs.label, str(exc)) from None
    timings["preprocess_s"] = time.perf_counter() - t
    return scans, voxel, prepared, timings


def sensor_views(inputs: RegisterScansInputs, scans: list[Scan], mode: OriginMode, units_scale: float
                 ) -> tuple[list[RangeImage | None], dict[str, str]]:
    """Each scan's range image from its sensor origin (None where unknown) and the origins' sources."""
    try:
        origins = sensor_origins([s.name for s in scans], list_scan_files(inputs.scan_dir), inputs.capture, mode)
        views = [None if origin is None else range_image(scan.points, origin * units_scale)
                 for scan, (origin, _) in zip(scans, origins)]
    except ValueError as exc:
        raise CaptureError(inputs.label, str(exc)) from None
    return views, {scan.name: source for scan, (_, source) in zip(scans, origins)}


def feature_registry_for(config: RegisterScansConfig, label: str) -> dict[str, FeatureFn]:
    """The built-in descriptors, plus ``fcgf`` from ``config.fcgf.checkpoint`` when ``features: fcgf``."""
    if config.features != FCGF:
        return feature_registry()
    try:
        return registry_with_fcgf(Path(config.fcgf.checkpoint), config.fcgf.device)
    except ValueError as exc:
        raise CaptureError(label, str(exc)) from None


def compute_features(label: str, prepared: list[Preprocessed], voxel: float, extract: FeatureFn) -> list[np.ndarray]:
    """One (N_i, D) descriptor array per preprocessed scan; a descriptor's ValueError names the scan."""
    out = []
    for p in prepared:
        try:
            out.append(extract(np.asarray(p.pcd.points), np.asarray(p.pcd.normals), voxel))
        except ValueError as exc:
            raise CaptureError(label, f"scan {p.name}: {exc}") from None
    return out


def run(inputs: RegisterScansInputs, out: Path, config: RegisterScansConfig) -> Path:
    """Register every scan of the capture into one frame and fuse them; returns ``out``."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    registry = feature_registry_for(config, inputs.label)
    scans, voxel, prepared, prep_timings = prepare_scans(inputs, config.preprocess)
    timings.update(prep_timings)

    t = time.perf_counter()
    features = compute_features(inputs.label, prepared, voxel, get_feature(config.features, registry))
    timings["features_s"] = time.perf_counter() - t

    t = time.perf_counter()
    views, origin_sources = sensor_views(inputs, scans, config.sensor_origin, config.preprocess.units_scale)
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
    fused = fuse_clouds([clouds[names.index(n)] for n in placed], [result.poses[n] for n in placed],
                        voxel * config.fused_voxel_factor)
    timings["fuse_s"] = time.perf_counter() - t
    with atomic_dir(out) as tmp:
        import open3d as o3d

        o3d.io.write_point_cloud(str(tmp / "fused.ply"), fused)
        write_poses_json(tmp / "poses.json", result.poses, confidence=result.confidence)
        write_json(tmp / "pairs.json", {"pairs": [_pair_record(p) for p in result.pairs]})
        timings["total_s"] = time.perf_counter() - start
        write_json(tmp / "metrics.json", _metrics(inputs.label, scans, prepared, voxel, result, timings,
                                                  len(fused.points), config, origin_sources))
    logger.info("capture '%s': %d/%d scans placed (%d low confidence) -> %s", inputs.label, len(result.poses),
                len(scans), len(result.low_confidence), out)
    return out


def _pair_record(pair: Any) -> dict[str, Any]:
    return {
        "source": pair.source, "target": pair.target, "transformation": np.asarray(pair.transformation).tolist(),
        "fitness": float(pair.fitness), "inlier_rmse": float(pair.inlier_rmse), "confident": bool(pair.confident),
        "reason": pair.reason, "method": pair.method, "seconds": pair.seconds,
        "hypotheses": [{"transformation": np.asarray(h.transformation).tolist(), "fitness": h.fitness,
                        "inlier_rmse": h.inlier_rmse, "confident": h.confident, "reason": h.reason,
                        "method": h.method} for h in pair.hypotheses],
    }


def _metrics(label: str, scans: list[Scan], prepared: list[Any], voxel: float, result: Any,
             timings: dict[str, float], num_fused: int, config: RegisterScansConfig,
             origin_sources: dict[str, str]) -> dict[str, Any]:
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
        "verification": {**result.verification, "sensor_origin_mode": config.sensor_origin,
                         "sensor_origin_sources": origin_sources},
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


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("capture3d.stages.register_scans", __doc__ or "")
    parser.add_argument("--capture", type=Path, required=True, help="scan capture folder (scans/ inside, or clouds)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(build_parser(), argv, lambda args: run(
        RegisterScansInputs(args.capture, args.name), args.out, load_config(params_from_args(args))))


if __name__ == "__main__":
    raise SystemExit(main())
