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
from capture3d.tasks.device import resolve_device
from capture3d.tasks.fcgf.checkpoint import FcgfModelConfig, load_checkpoint
from capture3d.tasks.fcgf.features import FCGF, fcgf_feature
from capture3d.tasks.fcgf.model import ResUNetBN2C
from capture3d.tasks.fcgf.self_supervised import SelfSupervisedConfig
from capture3d.tasks.registration.features import (
    FeatureFn,
    feature_registry,
    get_feature,
    register_feature,
)
from capture3d.tasks.registration.multiway import MultiwayConfig
from capture3d.tasks.registration.pair import PairConfig
from capture3d.tasks.registration.preprocess import (
    Preprocessed,
    auto_voxel_size,
    preprocess,
)
from capture3d.tasks.registration.scan_io import Scan, list_scan_files, read_readable_scans
from capture3d.tasks.registration.sensor_origin import OriginMode, sensor_origins
from capture3d.tasks.registration.visibility import RangeImage, range_image

logger = logging.getLogger(__name__)

GT_CANDIDATES = ("gt/poses.json", "gt/gt.log", "gt.log", "poses.json", "gt", "gt.npy")
#: The folder holding the ``capture3d`` package: relative checkpoint paths absent from the working
#: directory are looked up here (``capture3d/models/fcgf_default.pt`` ships inside the package).
PACKAGE_PARENT = Path(__file__).resolve().parents[3]


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
    """The trained FCGF model used when ``features: fcgf``, and its optional adaptation to the capture."""

    checkpoint: str
    """capture3d or official FCGF checkpoint; default: the model shipped in the package
    (capture3d/models/fcgf_default.pt); a relative path is tried in the working directory, then
    beside the installed package; train_fcgf writes models/fcgf/model.pt"""
    device: Literal["auto", "cpu", "cuda"]
    """where the network extracts features (auto: CUDA when available)"""
    adapt: bool
    """first fine-tune the model on the capture's own scans (self-supervised), then extract features with it"""
    adapt_max_seconds: float
    """adaptation time box, seconds"""
    adapt_max_iterations: int
    """adaptation stops after this many steps at the latest (reproducible when reached before the time box)"""
    adapt_learning_rate: float
    """adaptation Adam learning rate"""
    adapt_val_pairs: int
    """self-supervised validation pairs cut from the capture's scans for the FMR before / after"""
    adapt_val_inlier_voxels: float
    """adaptation validation: a match is an inlier within this many voxels"""
    adapt_seed: int
    """seed of the adaptation's pairs and validation pairs"""
    adapt_views: SelfSupervisedConfig
    """how adaptation cuts two overlapping views from one scan"""


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


def load_scans(capture: Path, label: str, units_scale: float) -> tuple[list[Scan], dict[str, str]]:
    """Read and scale the capture's readable scans, and the reasons of the files skipped as
    unreadable or invalid by name (:func:`read_readable_scans`; the stage's metrics list them); a
    CaptureError naming the capture when fewer than two readable scans remain, no scan files are
    found or names clash."""
    if not capture.is_dir():
        raise CaptureError(label, f"capture folder '{capture}' does not exist")
    try:
        scans, skipped = read_readable_scans(scan_dir(capture))
    except ValueError as exc:
        raise CaptureError(label, str(exc)) from None
    if len(scans) < 2:
        listed = "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:3])
        raise CaptureError(
            label,
            f"only {len(scans)} readable scan(s) in '{scan_dir(capture)}': nothing to register"
            + (f" ({len(skipped)} skipped: {listed})" if skipped else ""),
        )
    if units_scale != 1.0:
        scans = [Scan(s.name, s.points * units_scale, s.colors) for s in scans]
    return scans, skipped


def prepare_scans(
    capture: Path, label: str, pp: PreprocessConfig
) -> tuple[list[Scan], float, list[Preprocessed], dict[str, float], dict[str, str]]:
    """Read, scale, size the voxel of and preprocess a capture's scans (CaptureError naming it);
    the last value names the files skipped as unreadable (:func:`load_scans`)."""
    t = time.perf_counter()
    scans, skipped = load_scans(capture, label, pp.units_scale)
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
    return scans, voxel, prepared, timings, skipped


def sensor_views(
    capture: Path, label: str, scans: list[Scan], mode: OriginMode, units_scale: float
) -> tuple[list[RangeImage | None], dict[str, str]]:
    """Each scan's range image from its sensor origin (None where unknown) and the origins' sources."""
    try:
        names = [s.name for s in scans]  # the readable scans (unreadable files were skipped)
        files = [p for p in list_scan_files(scan_dir(capture)) if p.stem in set(names)]
        origins = sensor_origins(names, files, capture, mode)
        views = [
            None if origin is None else range_image(scan.points, origin * units_scale)
            for scan, (origin, _) in zip(scans, origins)
        ]
    except ValueError as exc:
        raise CaptureError(label, str(exc)) from None
    return views, {scan.name: source for scan, (_, source) in zip(scans, origins)}


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint path: as given when absolute or present from the working directory, else
    relative to the folder holding the installed ``capture3d`` package (the shipped default)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    packaged = PACKAGE_PARENT / p
    return packaged if packaged.exists() else p


def load_fcgf_model(config: FcgfFeatureConfig, label: str) -> tuple[ResUNetBN2C, FcgfModelConfig, Path]:
    """The FCGF model of ``config.checkpoint`` on its device, its shape and the resolved path (CaptureError)."""
    path = resolve_checkpoint(config.checkpoint)
    try:
        model, shape, _ = load_checkpoint(path, resolve_device(config.device))
    except ValueError as exc:
        raise CaptureError(label, str(exc)) from None
    return model, shape, path


def feature_registry_for(
    config: RegisterScansConfig, label: str, model: ResUNetBN2C | None = None
) -> dict[str, FeatureFn]:
    """The built-in descriptors, plus ``fcgf`` when ``features: fcgf``: ``model`` when given, else
    the network of ``config.fcgf.checkpoint``."""
    registry = feature_registry()
    if config.features != FCGF:
        return registry
    if model is None:
        model, _, _ = load_fcgf_model(config.fcgf, label)
    register_feature(FCGF, fcgf_feature(model), registry, replace=True)
    return registry


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
