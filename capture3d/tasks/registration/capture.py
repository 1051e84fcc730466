"""A scan capture on disk, read for registration: its scans, sensor views, descriptors, ground truth.

Inputs: a scan capture folder (point clouds in ``scans/`` or directly inside; ground truth as
``gt/poses.json``, ``gt.log``, a Stanford ``.conf`` or ``gt/`` matrices) and the ``register_scans``
settings as :class:`RegisterScansConfig`. Outputs: scaled :class:`Scan` lists, preprocessed clouds,
(N_i, D) descriptor arrays, range images. Problems raise :class:`CaptureError` naming the capture.
Shared by the ``register_scans``, ``evaluate_registration``, ``evaluate_features`` and
``train_fcgf`` stages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from capture3d.errors import CaptureError, ParamsError
from capture3d.tasks.fcgf.features import FCGF, registry_with_fcgf
from capture3d.tasks.registration.features import (
    FeatureFn,
    feature_registry,
    get_feature,
)
from capture3d.tasks.registration.multiway import MultiwayConfig
from capture3d.tasks.registration.pair import PairConfig
from capture3d.tasks.registration.preprocess import (
    Preprocessed,
    auto_voxel_size,
    preprocess,
)
from capture3d.tasks.registration.scan_io import Scan, list_scan_files, read_scans
from capture3d.tasks.registration.sensor_origin import OriginMode, sensor_origins
from capture3d.tasks.registration.visibility import RangeImage, range_image

logger = logging.getLogger(__name__)

GT_CANDIDATES = ("gt/poses.json", "gt/gt.log", "gt.log", "poses.json", "gt", "gt.npy")


def scan_dir(capture: Path) -> Path:
    """``<capture>/scans`` when it exists, else the capture folder itself."""
    inner = Path(capture) / "scans"
    return inner if inner.is_dir() else Path(capture)


@dataclass(frozen=True)
class PreprocessConfig:
    """Voxel size (metres after ``units_scale``, or ``auto``), outlier removal and normals."""

    units_scale: float
    """multiplies input coordinates (0.001 for scans in millimetres)"""
    voxel_size: Literal["auto"] | float
    """downsampling voxel in metres, or auto (from the bounding box and point density)"""
    auto_target_points: int
    """voxel_size auto: about this many points per scan after downsampling"""
    outlier_neighbors: int
    """statistical outlier removal: neighbours considered per point"""
    outlier_std_ratio: float
    """statistical outlier removal: points beyond this many standard deviations are removed"""
    normal_radius_factor: float
    """normal estimation radius = factor * voxel"""
    min_points: int
    """a scan with fewer points after downsampling refuses the capture"""


@dataclass(frozen=True)
class FcgfFeatureConfig:
    """The trained FCGF model used when ``features: fcgf``."""

    checkpoint: str
    """capture3d or official FCGF checkpoint (train_fcgf writes models/fcgf/model.pt)"""
    device: Literal["auto", "cpu", "cuda"]
    """where the network extracts features (auto: CUDA when available)"""


@dataclass(frozen=True)
class RegisterScansConfig:
    """The ``register_scans`` section."""

    preprocess: PreprocessConfig
    """units, voxel size, outlier removal and normals"""
    sensor_origin: OriginMode
    """auto (PCD VIEWPOINT, PLY 'comment viewpoint', sensor_origin.json) | scan_frame | none"""
    features: str
    """descriptor from the feature registry: fpfh | fcgf (learned; needs fcgf.checkpoint)"""
    fcgf: FcgfFeatureConfig
    """the trained FCGF model used when features is fcgf"""
    pair: PairConfig
    """pairwise registration"""
    multiway: MultiwayConfig
    """multiway registration and the verification of its links and poses"""
    fused_voxel_factor: float
    """fused.ply is downsampled at factor * voxel"""


def check_feature_names(names: Sequence[str], key: str) -> None:
    """ParamsError (listing the known ones) for a name that is neither built in nor ``fcgf``."""
    known = {**feature_registry(), FCGF: None}
    for name in names:
        try:
            get_feature(name, known)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ParamsError(f"{key}: {exc}") from None


def load_scans(capture: Path, label: str, units_scale: float) -> list[Scan]:
    """Read and scale the capture's scans; bad files become a CaptureError naming the capture."""
    if not capture.is_dir():
        raise CaptureError(label, f"capture folder '{capture}' does not exist")
    try:
        scans = read_scans(scan_dir(capture))
    except ValueError as exc:
        raise CaptureError(label, str(exc)) from None
    if len(scans) < 2:
        raise CaptureError(label, f"only {len(scans)} scan in '{scan_dir(capture)}': nothing to register")
    if units_scale != 1.0:
        scans = [Scan(s.name, s.points * units_scale, s.colors) for s in scans]
    return scans


def prepare_scans(
    capture: Path, label: str, pp: PreprocessConfig
) -> tuple[list[Scan], float, list[Preprocessed], dict[str, float]]:
    """Read, scale, size the voxel of and preprocess a capture's scans (CaptureError naming it)."""
    t = time.perf_counter()
    scans = load_scans(capture, label, pp.units_scale)
    timings = {"read_s": time.perf_counter() - t}
    try:
        voxel = auto_voxel_size(scans, pp.auto_target_points) if pp.voxel_size == "auto" else float(pp.voxel_size)
        t = time.perf_counter()
        prepared = [
            preprocess(
                s, voxel, pp.outlier_neighbors, pp.outlier_std_ratio, pp.normal_radius_factor, min_points=pp.min_points
            )
            for s in scans
        ]
    except ValueError as exc:
        raise CaptureError(label, str(exc)) from None
    timings["preprocess_s"] = time.perf_counter() - t
    return scans, voxel, prepared, timings


def sensor_views(
    capture: Path, label: str, scans: list[Scan], mode: OriginMode, units_scale: float
) -> tuple[list[RangeImage | None], dict[str, str]]:
    """Each scan's range image from its sensor origin (None where unknown) and the origins' sources."""
    try:
        origins = sensor_origins([s.name for s in scans], list_scan_files(scan_dir(capture)), capture, mode)
        views = [
            None if origin is None else range_image(scan.points, origin * units_scale)
            for scan, (origin, _) in zip(scans, origins)
        ]
    except ValueError as exc:
        raise CaptureError(label, str(exc)) from None
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


def find_scan_ground_truth(capture: Path) -> Path | None:
    """The ground-truth poses inside a scan capture folder, if any."""
    for rel in GT_CANDIDATES:
        path = capture / rel
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            return path
    confs = sorted(capture.glob("*.conf"))
    return confs[0] if confs else None


def scale_translation(T: np.ndarray, units: float) -> np.ndarray:
    """A copy of the 4x4 T with its translation multiplied by ``units``."""
    T = np.array(T, dtype=np.float64)
    T[:3, 3] *= units
    return T
