"""Structure-from-Motion with COLMAP (pycolmap): SIFT, matching, mapping, a health gate and its ladder.

Inputs: a folder of images, the names to use, a :class:`SfmConfig`, optional known intrinsics, and
a scratch folder. Outputs: :class:`SfmResult` holding every reconstructed model of the best attempt
(largest first) and a record of each attempt. Nothing outside ``work_dir`` is written; exporting
the result (models, points, transforms.json, undistorted images) is done by :mod:`sfm_export`.

Health gate: an attempt passes when its largest model holds at least ``min_registered_fraction``
of the images and the reconstruction did not split into several models. Otherwise the attempts
of ``fallback`` run in order, each rung's overrides added to those before it (a ladder), and the
best attempt is kept. Feature extraction runs once; matching adds only pairs not matched yet.

Matching: ``exhaustive`` (every pair, N(N-1)/2), ``sequential`` (COLMAP's video neighbours),
``retrieval`` (each image with its most similar images by a bag of visual words learnt from the
capture itself, plus frame-sequence neighbours: :mod:`capture3d.tasks.sfm.retrieval`, about
``retrieval_top_k`` x N pairs) or ``auto`` (exhaustive up to ``retrieval_min_images`` images,
retrieval above). Mapping: ``incremental``, ``global``, ``hierarchical`` (COLMAP's partitioned
incremental mapper) or ``auto`` (hierarchical from ``hierarchical_min_images`` images).
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
from capture3d.tasks.sfm.retrieval import RetrievalConfig, read_descriptors, retrieve_pairs, write_pairs

logger = logging.getLogger(__name__)

# Settings a fallback rung may change (feature extraction is shared by all attempts).
LADDER_KEYS = frozenset(
    {
        "matcher",
        "sequential_overlap",
        "retrieval_top_k",
        "mapper",
        "min_num_matches",
        "init_min_num_inliers",
        "abs_pose_min_num_inliers",
    }
)


@dataclass(frozen=True)
class SfmConfig:
    """Settings of the SfM task (the ``sfm`` section of params.yaml)."""

    matcher: Literal["exhaustive", "sequential", "retrieval", "auto"]
    """feature matching: exhaustive (every pair), sequential (video-like captures: neighbours only),
    retrieval (top-k most similar images by a vocabulary learnt from the capture), auto (exhaustive
    up to retrieval_min_images images, retrieval above)"""
    sequential_overlap: int
    """neighbours matched per image by the sequential matcher"""
    retrieval_min_images: int
    """matcher auto: exhaustive for captures of at most this many images, retrieval above"""
    retrieval_top_k: int
    """retrieval: most similar images matched with each image"""
    retrieval_vocab_size: int
    """retrieval: visual words (leaves of a two-level vocabulary tree, sqrt(size) branches) learnt by
    k-means from the capture's own SIFT descriptors"""
    retrieval_sample_descriptors: int
    """retrieval: descriptors sampled from the capture to learn the vocabulary"""
    retrieval_kmeans_iterations: int
    """retrieval: mini-batch k-means iterations"""
    retrieval_sequential_overlap: int
    """retrieval: successors also matched with each frame when the file names are a numeric sequence"""
    mapper: Literal["incremental", "global", "hierarchical", "auto"]
    """incremental, global (COLMAP's global mapper, GLOMAP), hierarchical (scene split into
    overlapping clusters mapped separately and merged) or auto (hierarchical from
    hierarchical_min_images images, incremental below)"""
    hierarchical_min_images: int
    """mapper auto: captures of at least this many images use the hierarchical mapper (measured on
    synthetic captures of 100 and 200 views, benchmarks/bench_scale.py: no mapping speed-up and larger
    rotation errors, hence far above that)"""
    hierarchical_leaf_images: int
    """hierarchical mapper: images per cluster at most"""
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
    pairs_matched: int = 0  # image pairs matched in the database after this attempt's matching


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

    num_images = len(image_names) - len(dropped)
    attempts: list[Attempt] = []
    results: list[list[pycolmap.Reconstruction]] = []
    matched: set[tuple[Any, ...]] = set()
    previous: SfmConfig | None = None
    rungs: list[dict[str, Any]] = [{}, *[dict(r) for r in config.fallback]]
    accumulated: dict[str, Any] = {}
    timings["match_s"] = 0.0
    timings["map_s"] = 0.0
    pairs_matched = 0
    for index, rung in enumerate(rungs):
        accumulated = {**accumulated, **rung}
        current = resolve(dataclasses.replace(config, **accumulated), num_images, imported_images(database))
        if current == previous:
            logger.info("fallback rung %d changes nothing (%s); skipped", index, rung)
            continue
        previous = current
        attempt = Attempt(index, dict(accumulated), current.matcher, current.mapper)
        start = time.perf_counter()
        key = matching_key(current)
        if key not in matched:
            match_features(database, current, work_dir, timings)
            matched.add(key)
            pairs_matched = matched_pairs(database)
        attempt.pairs_matched = pairs_matched
        timings["match_s"] += time.perf_counter() - start
        t_map = time.perf_counter()
        models = map_images(database, image_dir, work_dir / f"attempt_{index}", current, known)
        timings["map_s"] += time.perf_counter() - t_map
        attempt.seconds = time.perf_counter() - start
        _judge(attempt, models, len(image_names), config.min_registered_fraction)
        logger.info(
            "attempt %d (%s, %d pairs, %s, %s): %d/%d registered in %d model(s): %s",
            index,
            current.matcher,
            pairs_matched,
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


def resolve(config: SfmConfig, num_images: int, names: list[str]) -> SfmConfig:
    """``config`` with matcher and mapper ``auto`` decided for ``num_images`` and the settings that
    the chosen matcher does not use set to 0, so that two rungs doing the same work compare equal."""
    matcher = config.matcher
    if matcher == "auto":
        matcher = "retrieval" if num_images > config.retrieval_min_images else "exhaustive"
    if matcher == "retrieval" and any(any(c.isspace() for c in name) for name in names):
        logger.warning("image names hold white space, which COLMAP's pairs file cannot: exhaustive matching instead")
        matcher = "exhaustive"
    mapper = config.mapper
    if mapper == "auto":
        mapper = "hierarchical" if num_images >= config.hierarchical_min_images else "incremental"
    unused: dict[str, Any] = {}
    if matcher != "sequential":
        unused["sequential_overlap"] = 0
    if matcher != "retrieval":
        unused.update(
            retrieval_top_k=0,
            retrieval_vocab_size=0,
            retrieval_sample_descriptors=0,
            retrieval_kmeans_iterations=0,
            retrieval_sequential_overlap=0,
        )
    if mapper != "hierarchical":
        unused["hierarchical_leaf_images"] = 0
    return dataclasses.replace(
        config, matcher=matcher, mapper=mapper, retrieval_min_images=0, hierarchical_min_images=0, **unused
    )


def matching_key(config: SfmConfig) -> tuple[Any, ...]:
    """What decides the pairs matched by a resolved ``config`` (equal keys: nothing new to match)."""
    return (
        config.matcher,
        config.sequential_overlap,
        config.retrieval_top_k,
        config.retrieval_vocab_size,
        config.retrieval_sample_descriptors,
        config.retrieval_kmeans_iterations,
        config.retrieval_sequential_overlap,
    )


def matched_pairs(database: Path) -> int:
    """Image pairs whose features were matched so far (verified or not)."""
    db = pycolmap.Database.open(database)
    try:
        return int(db.num_matched_image_pairs())
    finally:
        db.close()


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


def match_features(database: Path, config: SfmConfig, work_dir: Path, timings: dict[str, float]) -> None:
    """Match features of a resolved ``config``: exhaustively, sequentially or retrieved pairs.

    Geometric verification is the same for every matcher (seeded RANSAC, ``min_num_matches``
    inliers). Pairs already in the database are not matched again. Retrieval writes its pairs list
    to ``work_dir / "retrieval_pairs.txt"`` and adds ``retrieval_s`` (vocabulary and ranking) to
    ``timings``.
    """
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = config.num_threads
    verification = pycolmap.TwoViewGeometryOptions()
    verification.min_num_inliers = config.min_num_matches
    verification.ransac.random_seed = config.seed
    device = _device(config.device)
    if config.matcher == "exhaustive":
        pycolmap.match_exhaustive(database, matching_options=matching, verification_options=verification, device=device)
    elif config.matcher == "sequential":
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = config.sequential_overlap
        pycolmap.match_sequential(
            database,
            matching_options=matching,
            pairing_options=pairing,
            verification_options=verification,
            device=device,
        )
    elif config.matcher == "retrieval":
        start = time.perf_counter()
        names, descriptors = read_descriptors(database)
        found = retrieve_pairs(names, descriptors, retrieval_config(config))
        pairs_file = work_dir / "retrieval_pairs.txt"
        write_pairs(found.pairs, pairs_file)
        timings["retrieval_s"] = timings.get("retrieval_s", 0.0) + time.perf_counter() - start
        imported = pycolmap.ImportedPairingOptions()
        imported.match_list_path = pairs_file
        pycolmap.match_image_pairs(
            database,
            matching_options=matching,
            pairing_options=imported,
            verification_options=verification,
            device=device,
        )
    else:
        raise ValueError(f"matcher {config.matcher!r} must be resolved first (see resolve())")


def retrieval_config(config: SfmConfig) -> RetrievalConfig:
    """The retrieval settings of an :class:`SfmConfig`."""
    return RetrievalConfig(
        top_k=config.retrieval_top_k,
        vocab_size=config.retrieval_vocab_size,
        sample_descriptors=config.retrieval_sample_descriptors,
        kmeans_iterations=config.retrieval_kmeans_iterations,
        sequential_overlap=config.retrieval_sequential_overlap,
        seed=config.seed,
    )


def map_images(
    database: Path, image_dir: Path, out_dir: Path, config: SfmConfig, known: KnownIntrinsics | None
) -> list[pycolmap.Reconstruction]:
    """Run COLMAP's incremental, hierarchical or global mapper (``config`` resolved); models, largest first."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    refine = known is None
    if config.mapper in ("incremental", "hierarchical"):
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

        if config.mapper == "hierarchical":
            hierarchical = pycolmap.HierarchicalPipelineOptions()
            hierarchical.incremental_options = options
            hierarchical.num_threads = config.num_threads
            hierarchical.clustering_options.leaf_max_num_images = config.hierarchical_leaf_images
            found = pycolmap.hierarchical_mapping(database, image_dir, out_dir, hierarchical)
        else:
            found = pycolmap.incremental_mapping(database, image_dir, out_dir, options, next_image_callback=next_image)
    elif config.mapper == "global":
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
    else:
        raise ValueError(f"mapper {config.mapper!r} must be resolved first (see resolve())")
    return drop_redundant(sorted(found.values(), key=lambda r: r.num_reg_images(), reverse=True))


def registered_names(model: pycolmap.Reconstruction) -> set[str]:
    """Names of the images ``model`` registered."""
    return {model.image(i).name for i in model.reg_image_ids()}


def drop_redundant(models: list[pycolmap.Reconstruction]) -> list[pycolmap.Reconstruction]:
    """``models`` (largest first) without the later ones whose every image a larger model already
    registered: COLMAP can start a small second model from pairs of images the first one holds,
    which is no split of the capture (a model adding any image of its own is kept)."""
    kept: list[pycolmap.Reconstruction] = []
    seen: set[str] = set()
    for model in models:
        names = registered_names(model)
        if kept and names <= seen:
            logger.info("dropped a redundant %d-image model: a larger model registered all its images", len(names))
            continue
        kept.append(model)
        seen |= names
    return kept


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
