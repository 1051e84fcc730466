"""Structure-from-Motion with COLMAP (pycolmap): SIFT, matching, mapping, a health gate and its ladder.

Inputs: a folder of images, the names to use, a :class:`SfmConfig`, optional known intrinsics, and
a scratch folder. Outputs: :class:`SfmResult` holding every reconstructed model of the best attempt
(largest first) and a record of each attempt. Nothing outside ``work_dir`` is written; exporting
the result (models, points, transforms.json, undistorted images) is done by :mod:`sfm_export`.

Health gate: an attempt passes when its largest model holds at least ``min_registered_fraction``
of the images and the reconstruction did not split into several models. Otherwise the attempts
of ``fallback`` run in order, each rung's overrides added to those before it (a ladder), and the
best attempt is kept. Feature extraction runs once; matching adds only pairs not matched yet.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pycolmap

from capture3d.progress import report as report_progress

logger = logging.getLogger(__name__)

# Settings a fallback rung may change (feature extraction is shared by all attempts).
LADDER_KEYS = frozenset(
    {"matcher", "sequential_overlap", "mapper", "min_num_matches", "init_min_num_inliers", "abs_pose_min_num_inliers"}
)


@dataclass(frozen=True)
class SfmConfig:
    """Settings of the SfM task (the ``sfm`` section of params.yaml)."""

    matcher: Literal["exhaustive", "sequential"]
    """feature matching: exhaustive (every pair) or sequential (video-like captures: neighbours only)"""
    sequential_overlap: int
    """neighbours matched per image by the sequential matcher"""
    mapper: Literal["incremental", "global"]
    """incremental, or global (COLMAP's global mapper, GLOMAP)"""
    camera_mode: Literal["single", "per_image", "auto"]
    """one camera for all images or one per image (auto: single if all images share a size)"""
    intrinsics: Literal["auto", "known", "self_calibrate"]
    """auto: the capture's intrinsics.json if present; known: required; self_calibrate: estimated"""
    camera_model: str
    """COLMAP camera model for self-calibration, or of camera_params (PINHOLE, SIMPLE_RADIAL ...)"""
    camera_params: str
    """known intrinsics for camera_model, e.g. "fx, fy, cx, cy" for PINHOLE ("": none)"""
    max_image_size: int
    """longer image side used for feature extraction, pixels (larger images are downscaled)"""
    max_num_features: int
    """SIFT features per image at most"""
    min_num_matches: int
    """image pairs with fewer verified matches are not used"""
    init_min_num_inliers: int
    """inliers the mapper's initial image pair needs"""
    abs_pose_min_num_inliers: int
    """inliers an image needs to be registered (absolute pose)"""
    min_registered_fraction: float
    """health gate: the largest model must hold this fraction of the images, in one model"""
    fallback: tuple[dict[str, Any], ...]
    """ladder tried in order when the gate fails; each rung adds its overrides to the ones before"""
    seed: int
    """random seed of COLMAP's RANSAC and mapper"""
    num_threads: int
    """CPU threads (-1: all cores)"""
    device: Literal["auto", "cpu", "cuda"]
    """where SIFT extraction and matching run (auto: the GPU when pycolmap has CUDA)"""


@dataclass(frozen=True)
class KnownIntrinsics:
    """A COLMAP camera model name and its parameters, e.g. ("PINHOLE", (fx, fy, cx, cy))."""

    model: str
    params: tuple[float, ...]


@dataclass
class Attempt:
    """One mapping attempt of the ladder and its outcome."""

    index: int
    overrides: dict[str, Any]
    matcher: str
    mapper: str
    num_registered: int = 0
    num_models: int = 0
    registered_fraction: float = 0.0
    healthy: bool = False
    reason: str = ""
    seconds: float = 0.0


@dataclass
class SfmResult:
    """The best attempt's models (largest first), all attempts, and timings."""

    models: list[pycolmap.Reconstruction]
    attempts: list[Attempt]
    best: int
    num_images: int
    timings: dict[str, float] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # images COLMAP refused to import

    @property
    def healthy(self) -> bool:
        return bool(self.attempts) and self.attempts[self.best].healthy


def run_sfm(
    image_dir: Path,
    image_names: list[str],
    work_dir: Path,
    config: SfmConfig,
    known: KnownIntrinsics | None = None,
) -> SfmResult:
    """Extract, match and map ``image_names`` under ``image_dir``, climbing the ladder when unhealthy."""
    work_dir.mkdir(parents=True, exist_ok=True)
    pycolmap.set_random_seed(config.seed)
    database = work_dir / "database.db"
    database.unlink(missing_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    extract_features(database, image_dir, image_names, config, known)
    timings["extract_s"] = time.perf_counter() - t0
    dropped = sorted(set(image_names) - set(imported_images(database)))
    if dropped:
        logger.warning("COLMAP did not import %d image(s): %s", len(dropped), ", ".join(dropped[:10]))

    attempts: list[Attempt] = []
    results: list[list[pycolmap.Reconstruction]] = []
    matched: set[tuple[str, int]] = set()
    current = config
    rungs: list[dict[str, Any]] = [{}, *[dict(r) for r in config.fallback]]
    accumulated: dict[str, Any] = {}
    timings["match_s"] = 0.0
    timings["map_s"] = 0.0
    for index, rung in enumerate(rungs):
        previous = current
        accumulated = {**accumulated, **rung}
        current = dataclasses.replace(config, **accumulated)
        if index > 0 and current == previous:
            logger.info("fallback rung %d changes nothing (%s); skipped", index, rung)
            continue
        attempt = Attempt(index, dict(accumulated), current.matcher, current.mapper)
        start = time.perf_counter()
        key = (current.matcher, current.sequential_overlap if current.matcher == "sequential" else 0)
        if key not in matched:
            match_features(database, current)
            matched.add(key)
        timings["match_s"] += time.perf_counter() - start
        t_map = time.perf_counter()
        models = map_images(database, image_dir, work_dir / f"attempt_{index}", current, known)
        timings["map_s"] += time.perf_counter() - t_map
        attempt.seconds = time.perf_counter() - start
        _judge(attempt, models, len(image_names), config.min_registered_fraction)
        logger.info(
            "attempt %d (%s, %s, %s): %d/%d registered in %d model(s): %s",
            index,
            current.matcher,
            current.mapper,
            accumulated or "base",
            attempt.num_registered,
            len(image_names),
            attempt.num_models,
            attempt.reason,
        )
        attempts.append(attempt)
        results.append(models)
        if attempt.healthy:
            break
    best = max(range(len(attempts)), key=lambda i: _score(attempts[i]))
    return SfmResult(results[best], attempts, best, len(image_names), timings, dropped)


def extract_features(
    database: Path, image_dir: Path, image_names: list[str], config: SfmConfig, known: KnownIntrinsics | None
) -> None:
    """SIFT features of ``image_names`` into ``database``; cameras per ``config.camera_mode``."""
    reader = pycolmap.ImageReaderOptions()
    if known is not None:
        reader.camera_model = known.model
        reader.camera_params = ",".join(repr(float(v)) for v in known.params)
    else:
        reader.camera_model = config.camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = config.max_image_size
    extraction.num_threads = config.num_threads
    extraction.sift.max_num_features = config.max_num_features
    # "auto" is resolved by the caller from the image sizes; COLMAP's AUTO makes one camera per image.
    mode = {
        "single": pycolmap.CameraMode.SINGLE,
        "per_image": pycolmap.CameraMode.PER_IMAGE,
        "auto": pycolmap.CameraMode.PER_IMAGE,
    }[config.camera_mode]
    pycolmap.extract_features(
        database,
        image_dir,
        image_names=list(image_names),
        camera_mode=mode,
        reader_options=reader,
        extraction_options=extraction,
        device=_device(config.device),
    )


def imported_images(database: Path) -> list[str]:
    """Names of the images in a COLMAP database."""
    db = pycolmap.Database.open(database)
    try:
        return [image.name for image in db.read_all_images()]
    finally:
        db.close()


def match_features(database: Path, config: SfmConfig) -> None:
    """Match features exhaustively or sequentially, with geometric verification (seeded RANSAC)."""
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = config.num_threads
    verification = pycolmap.TwoViewGeometryOptions()
    verification.min_num_inliers = config.min_num_matches
    verification.ransac.random_seed = config.seed
    if config.matcher == "exhaustive":
        pycolmap.match_exhaustive(
            database, matching_options=matching, verification_options=verification, device=_device(config.device)
        )
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = config.sequential_overlap
        pycolmap.match_sequential(
            database,
            matching_options=matching,
            pairing_options=pairing,
            verification_options=verification,
            device=_device(config.device),
        )


def map_images(
    database: Path, image_dir: Path, out_dir: Path, config: SfmConfig, known: KnownIntrinsics | None
) -> list[pycolmap.Reconstruction]:
    """Run COLMAP's incremental or global mapper; returns the models, largest first."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    refine = known is None
    if config.mapper == "incremental":
        options = pycolmap.IncrementalPipelineOptions()
        options.min_num_matches = config.min_num_matches
        options.num_threads = config.num_threads
        options.random_seed = config.seed
        options.min_model_size = 3
        options.ba_refine_focal_length = refine
        options.ba_refine_extra_params = refine
        options.mapper.init_min_num_inliers = config.init_min_num_inliers
        options.mapper.abs_pose_min_num_inliers = config.abs_pose_min_num_inliers
        options.mapper.abs_pose_refine_focal_length = refine
        options.mapper.abs_pose_refine_extra_params = refine
        options.mapper.random_seed = config.seed
        options.triangulation.random_seed = config.seed
        registered, num_images = [0], len(imported_images(database))

        def next_image() -> None:  # COLMAP calls this once per image it adds to a model
            registered[0] += 1
            report_progress(logger, "sfm (images registered)", registered[0], num_images)

        found = pycolmap.incremental_mapping(database, image_dir, out_dir, options, next_image_callback=next_image)
    else:
        options = pycolmap.GlobalPipelineOptions()
        options.min_num_matches = config.min_num_matches
        options.num_threads = config.num_threads
        options.random_seed = config.seed
        options.mapper.random_seed = config.seed
        options.mapper.bundle_adjustment.refine_focal_length = refine
        options.mapper.bundle_adjustment.refine_extra_params = refine
        options.mapper.global_positioning.use_gpu = config.device != "cpu" and pycolmap.has_cuda
        options.mapper.bundle_adjustment.ceres.use_gpu = config.device != "cpu" and pycolmap.has_cuda
        found = pycolmap.global_mapping(database, image_dir, out_dir, options)
    return sorted(found.values(), key=lambda r: r.num_reg_images(), reverse=True)


def _judge(attempt: Attempt, models: list[pycolmap.Reconstruction], num_images: int, min_fraction: float) -> None:
    attempt.num_models = len(models)
    attempt.num_registered = models[0].num_reg_images() if models else 0
    attempt.registered_fraction = attempt.num_registered / max(num_images, 1)
    if not models:
        attempt.reason = "no model: no image pair with enough verified matches to initialise"
    elif attempt.registered_fraction < min_fraction:
        attempt.reason = (
            f"only {attempt.num_registered}/{num_images} images registered "
            f"({attempt.registered_fraction:.0%} < {min_fraction:.0%})"
        )
    elif len(models) > 1:
        sizes = "+".join(str(m.num_reg_images()) for m in models)
        attempt.reason = f"split into {len(models)} models ({sizes} images)"
    else:
        attempt.healthy = True
        attempt.reason = "healthy"


def _score(attempt: Attempt) -> tuple[bool, int, int]:
    return (attempt.healthy, attempt.num_registered, -attempt.num_models)


def _device(name: str) -> pycolmap.Device:
    return {"auto": pycolmap.Device.auto, "cpu": pycolmap.Device.cpu, "cuda": pycolmap.Device.cuda}[name]
