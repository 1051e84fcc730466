"""Load posed, undistorted photos for novel-view synthesis, and triangulate sparse points for them.

Inputs: one capture path in any of these formats (detected in this order):

* the SfM stage's output folder (``undistorted/sparse`` + ``undistorted/images``, PINHOLE model);
* an LLFF folder (``poses_bounds.npy`` + ``images/`` or ``images_N/``), with points from
  ``sparse/0`` when that model is present;
* a plain COLMAP folder (``sparse/0/`` or ``sparse/`` with cameras/images/points3D as .bin or .txt,
  and ``images/``); non-pinhole cameras are undistorted first, in a temporary folder;
* a nerfstudio / instant-ngp ``transforms.json`` (the file, or a folder holding it), pinhole only.

Outputs: :class:`~capture3d.tasks.nvs.scene.NvsScene` (views sorted by name, pinhole K for the
loaded image size with COLMAP's pixel-centre convention, ``cam_from_world`` in the OpenCV/COLMAP
convention ``x_cam = R @ X + t``, x right, y down, z forward), optionally resized by
``resolution_scale``. The views hold no pixels: each refers to its file
(:class:`~capture3d.tasks.nvs.images.ImageFile`), decoded (and resized) to uint8 RGB on demand
through one LRU cache of at most ``image_cache_mb`` MiB; loading decodes every image once, which
checks them all and fills the cache. :func:`triangulate_known_poses` fills the sparse points of a
scene that has none (LLFF) with COLMAP's point triangulator, the poses held fixed; it writes only
under its ``work_dir``.

Bad input raises :class:`~capture3d.errors.CaptureError` with a one-line message.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image, UnidentifiedImageError

from capture3d.errors import CaptureError
from capture3d.tasks.cameras import (
    PinholeCamera,
    cam_from_world_matrix,
    read_transforms_json,
)
from capture3d.tasks.nvs.images import MB, ImageCache, ImageFile, image_size, resize_rgb8
from capture3d.tasks.nvs.scene import NvsScene, PosedView

logger = logging.getLogger(__name__)

PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
MODEL_FILES = ("cameras", "images", "points3D")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
MIN_TRIANGULATED_POINTS = 100
DEFAULT_IMAGE_CACHE_MB = 2048.0


# ----------------------------------------------------------------------------- public API


def load_scene(
    path: Path,
    label: str,
    resolution_scale: float = 1.0,
    points_limit: int | None = None,
    image_cache_mb: float = DEFAULT_IMAGE_CACHE_MB,
) -> NvsScene:
    """Detect the format of ``path`` and load its posed views and sparse points.

    ``resolution_scale`` resizes every image (sizes rounded to int) and scales K to match; for
    LLFF it is relative to the largest image folder present. ``points_limit`` keeps a seeded
    random subset of the points when there are more. ``image_cache_mb`` caps the decoded uint8
    pixels kept in memory (the views share one LRU cache; see the module docstring).
    """
    path = Path(path)
    if not np.isfinite(resolution_scale) or resolution_scale <= 0:
        raise CaptureError(label, f"resolution_scale must be positive, got {resolution_scale}")
    if not np.isfinite(image_cache_mb) or image_cache_mb < 0:
        raise CaptureError(label, f"image_cache_mb must be >= 0, got {image_cache_mb}")
    if not path.exists():
        raise CaptureError(label, f"input {path} does not exist")
    cache = ImageCache(int(image_cache_mb * MB))

    if path.is_file():
        if path.suffix.lower() != ".json":
            raise CaptureError(label, f"{path} is a file but not a transforms.json")
        scene = _load_transforms(path, label, cache)
    elif (path / "undistorted" / "sparse").is_dir() and (path / "undistorted" / "images").is_dir():
        sparse, images = path / "undistorted" / "sparse", path / "undistorted" / "images"
        scene = _load_colmap_model(sparse, images, label, "sfm", cache)
    elif (path / "poses_bounds.npy").is_file():
        scene = _load_llff(path, label, resolution_scale, cache)
        resolution_scale = 1.0  # already applied while choosing the image folder and the served size
    elif (model_dir := _find_colmap_model(path)) is not None and (path / "images").is_dir():
        scene = _load_colmap_folder(model_dir, path / "images", label, cache)
    elif (path / "transforms.json").is_file():
        scene = _load_transforms(path / "transforms.json", label, cache)
    else:
        raise CaptureError(
            label,
            f"{path} is not a recognised capture: looked for undistorted/sparse + undistorted/images (sfm stage), "
            "poses_bounds.npy (LLFF), sparse/0 or sparse/ with cameras/images/points3D + images/ (COLMAP), "
            "transforms.json (nerfstudio)",
        )

    if len(scene.views) < 2:
        raise CaptureError(label, f"{path}: {len(scene.views)} posed view(s); at least 2 are needed")
    if resolution_scale != 1.0:
        scene = replace(scene, views=tuple(_resize_view(v, resolution_scale) for v in scene.views))
    if points_limit is not None and len(scene.points) > points_limit:
        keep = np.sort(np.random.default_rng(0).choice(len(scene.points), size=max(points_limit, 0), replace=False))
        scene = replace(scene, points=scene.points[keep], colors=scene.colors[keep])
    scene = replace(scene, image_cache=cache)
    for view in scene.views:  # every file decoded once: bad images fail now, and the cache fills
        view.pixel_array()
    v0 = scene.views[0]
    total = sum(v.width * v.height * 3 for v in scene.views)
    logger.info(
        "loaded %s capture %s: %d views (%dx%d), %d points; %.0f of %.0f MiB of uint8 pixels cached (cap %.0f MiB)",
        scene.source,
        path,
        len(scene.views),
        v0.width,
        v0.height,
        len(scene.points),
        cache.nbytes / MB,
        total / MB,
        cache.max_bytes / MB,
    )
    return scene


def triangulate_known_poses(
    scene: NvsScene, work_dir: Path, label: str, max_image_size: int = 1024, num_threads: int = -1
) -> NvsScene:
    """Fill ``scene.points``/``colors`` by SIFT + exhaustive matching + COLMAP's point triangulator.

    The views' poses and intrinsics stay fixed. Writes ``images/``, ``database.db`` and
    ``triangulated/`` under ``work_dir``. Raises :class:`CaptureError` when fewer than
    ``MIN_TRIANGULATED_POINTS`` points result.
    """
    start = time.perf_counter()
    work_dir = Path(work_dir)
    image_dir = work_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    database = work_dir / "database.db"
    database.unlink(missing_ok=True)
    out_dir = work_dir / "triangulated"
    out_dir.mkdir(parents=True, exist_ok=True)

    file_names = _png_names([v.name for v in scene.views])
    view_of = dict(zip(file_names, scene.views, strict=True))
    for file_name, view in view_of.items():
        Image.fromarray(view.image_u8()).save(image_dir / file_name)

    shared = _all_intrinsics_equal(scene.views)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "PINHOLE"
    if shared:
        reader.camera_params = ",".join(repr(float(p)) for p in _pinhole_params(scene.views[0].K))
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = int(max_image_size)
    extraction.num_threads = int(num_threads)
    pycolmap.extract_features(
        database,
        image_dir,
        image_names=file_names,
        camera_mode=pycolmap.CameraMode.SINGLE if shared else pycolmap.CameraMode.PER_IMAGE,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )

    # The database's cameras get the known intrinsics (used by geometric verification), and the
    # reconstruction mirrors the database's camera and image ids.
    reconstruction = pycolmap.Reconstruction()
    db = pycolmap.Database.open(database)
    try:
        db_images = {image.name: image for image in db.read_all_images()}
        missing = sorted(set(file_names) - set(db_images))
        if missing:
            raise CaptureError(label, f"COLMAP could not read {len(missing)} image(s) for triangulation: {missing[0]}")
        for camera in db.read_all_cameras():
            view = next(view_of[name] for name, im in db_images.items() if im.camera_id == camera.camera_id)
            camera.params = _pinhole_params(view.K)
            camera.has_prior_focal_length = True
            db.update_camera(camera)
            reconstruction.add_camera_with_trivial_rig(camera)
        for name, db_image in sorted(db_images.items(), key=lambda item: item[1].image_id):
            M = view_of[name].cam_from_world
            image = pycolmap.Image(name=name, camera_id=db_image.camera_id, image_id=db_image.image_id)
            pose = pycolmap.Rigid3d(pycolmap.Rotation3d(M[:3, :3]), M[:3, 3])
            reconstruction.add_image_with_trivial_frame(image, pose)
    finally:
        db.close()

    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = int(num_threads)
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = 0
    pycolmap.match_exhaustive(
        database, matching_options=matching, verification_options=verification, device=pycolmap.Device.cpu
    )

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = int(num_threads)
    options.random_seed = 0
    options.triangulation.random_seed = 0
    result = pycolmap.triangulate_points(reconstruction, database, image_dir, out_dir, options=options)

    ids = sorted(result.points3D)
    points = np.array([result.points3D[i].xyz for i in ids], dtype=np.float32).reshape(-1, 3)  # (P, 3)
    colors = np.array([result.points3D[i].color for i in ids], dtype=np.float32).reshape(-1, 3) / 255.0  # (P, 3)
    error = float(result.compute_mean_reprojection_error()) if ids else float("nan")
    logger.info(
        "triangulated %d points from %d views with known poses: mean reprojection error %.3f px (%.1f s)",
        len(ids),
        len(scene.views),
        error,
        time.perf_counter() - start,
    )
    if len(ids) < MIN_TRIANGULATED_POINTS:
        raise CaptureError(
            label, f"triangulation with the known poses gave only {len(ids)} points (< {MIN_TRIANGULATED_POINTS})"
        )
    return replace(scene, points=points, colors=colors)


# ----------------------------------------------------------------------------- formats


def _find_colmap_model(folder: Path) -> Path | None:
    """``sparse/0`` or ``sparse`` when it holds cameras/images/points3D as .bin or .txt."""
    for candidate in (folder / "sparse" / "0", folder / "sparse"):
        for ext in (".bin", ".txt"):
            if all((candidate / f"{name}{ext}").is_file() for name in MODEL_FILES):
                return candidate
    return None


def _read_model(model_dir: Path, label: str) -> pycolmap.Reconstruction:
    try:
        return pycolmap.Reconstruction(model_dir)
    except Exception as exc:  # pycolmap raises several types for unreadable models
        raise CaptureError(label, f"cannot read COLMAP model {model_dir}: {_one_line(exc)}") from exc


def _load_colmap_folder(model_dir: Path, image_dir: Path, label: str, cache: ImageCache) -> NvsScene:
    """A plain COLMAP folder: used as is when every camera is pinhole, else undistorted first.

    Undistorted images live in a temporary folder that the views keep alive (it is deleted once
    the last view referring to it is gone).
    """
    model = _read_model(model_dir, label)
    models = sorted({camera.model_name for camera in model.cameras.values()})
    if all(name in PINHOLE_MODELS for name in models):
        return _scene_from_model(model, image_dir, label, "colmap", cache)
    logger.info("undistorting COLMAP model %s (camera models %s) to PINHOLE", model_dir, ", ".join(models))
    tmp = tempfile.TemporaryDirectory(prefix="capture3d_undistort_")
    try:
        out = Path(tmp.name)
        _check_model_images(model, image_dir, label)
        try:
            pycolmap.undistort_images(out, model_dir, image_dir, output_type="COLMAP")
        except Exception as exc:
            raise CaptureError(label, f"undistorting {model_dir} failed: {_one_line(exc)}") from exc
        undistorted = _read_model(out / "sparse", label)
        return _scene_from_model(undistorted, out / "images", label, "colmap", cache, keepalive=tmp)
    except BaseException:
        tmp.cleanup()
        raise


def _load_colmap_model(model_dir: Path, image_dir: Path, label: str, source: str, cache: ImageCache) -> NvsScene:
    return _scene_from_model(_read_model(model_dir, label), image_dir, label, source, cache)


def _check_model_images(model: pycolmap.Reconstruction, image_dir: Path, label: str) -> None:
    for image_id in model.reg_image_ids():
        name = model.image(image_id).name
        if not (image_dir / name).is_file():
            raise CaptureError(label, f"image {name} named in the COLMAP model is missing from {image_dir}")


def _scene_from_model(
    model: pycolmap.Reconstruction,
    image_dir: Path,
    label: str,
    source: str,
    cache: ImageCache,
    keepalive: object | None = None,
) -> NvsScene:
    """Registered images of a PINHOLE-family model, and its points and colours."""
    _check_model_images(model, image_dir, label)
    file = partial(ImageFile, label=label, cache=cache, keepalive=keepalive)
    views = []
    for image_id in model.reg_image_ids():
        image = model.image(image_id)
        camera = model.camera(image.camera_id)
        if camera.model_name not in PINHOLE_MODELS:
            raise CaptureError(label, f"image {image.name}: camera model {camera.model_name} is not pinhole")
        pose = image.cam_from_world()
        M = cam_from_world_matrix(np.asarray(pose.rotation.matrix()), np.asarray(pose.translation))  # (4, 4)
        K = np.asarray(camera.calibration_matrix(), dtype=np.float64)  # (3, 3)
        size = image_size(image_dir / image.name, label)  # (W, H)
        K = _fit_K_to_image(K, (int(camera.width), int(camera.height)), size, image.name)
        views.append(PosedView(image.name, file(image_dir / image.name, size), K, M))
    ids = sorted(model.points3D)
    points = np.array([model.points3D[i].xyz for i in ids], dtype=np.float32).reshape(-1, 3)  # (P, 3)
    colors = np.array([model.points3D[i].color for i in ids], dtype=np.float32).reshape(-1, 3) / 255.0  # (P, 3)
    return NvsScene(tuple(sorted(views, key=lambda v: v.name)), points, colors, None, source)


def _load_transforms(json_path: Path, label: str, cache: ImageCache) -> NvsScene:
    """nerfstudio / instant-ngp ``transforms.json`` with a pinhole camera; file paths relative to it."""
    root = json_path.parent
    try:
        data = json.loads(json_path.read_text())
        frames = data["frames"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CaptureError(label, f"cannot read {json_path}: {_one_line(exc)}") from exc
    for frame in frames:
        merged = {**data, **frame}
        model = merged.get("camera_model")
        if model is not None and str(model).upper() not in PINHOLE_MODELS:
            raise CaptureError(
                label,
                f"{json_path.name}: camera model {model} is not pinhole; undistort it first "
                "(e.g. the sfm stage's undistorted/ output)",
            )
        distorted = [k for k in DISTORTION_KEYS if float(merged.get(k, 0.0) or 0.0) != 0.0]
        if distorted:
            raise CaptureError(
                label,
                f"{json_path.name}: camera model {model or 'PINHOLE'} has distortion ({', '.join(distorted)}) "
                "so it is not pinhole; undistort it first (e.g. the sfm stage's undistorted/ output)",
            )

    paths = [_resolve_frame_path(root, str(frame.get("file_path", "")), label) for frame in frames]
    sizes = [image_size(p, label) for p in paths]  # (W, H) each

    # instant-ngp files may omit w/h: take them from the images for read_transforms_json.
    def sized(frame: dict, size: tuple[int, int]) -> dict:
        merged = {**data, **frame}
        if "w" in merged and "h" in merged:
            return frame
        return {**frame, "w": size[0], "h": size[1]}

    filled_frames = [sized(f, size) for f, size in zip(frames, sizes, strict=True)]
    if filled_frames == frames:
        cameras = _read_cameras(json_path, label)
    else:
        with tempfile.TemporaryDirectory(prefix="capture3d_transforms_") as tmp:
            filled = Path(tmp) / "transforms.json"
            filled.write_text(json.dumps({**data, "frames": filled_frames}))
            cameras = _read_cameras(filled, label)

    views = []
    for cam, path, size in zip(cameras, paths, sizes, strict=True):
        K = _fit_K_to_image(cam.K, (cam.width, cam.height), size, path.name)
        views.append(PosedView(path.name, ImageFile(path, size, label, cache), K, cam_from_world_matrix(cam.R, cam.t)))
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise CaptureError(label, f"{json_path.name}: several frames share an image file name")

    points = np.zeros((0, 3), dtype=np.float32)
    colors = np.zeros((0, 3), dtype=np.float32)
    if data.get("ply_file_path"):
        points, colors = _read_ply(root / str(data["ply_file_path"]), label)
    return NvsScene(tuple(sorted(views, key=lambda v: v.name)), points, colors, None, "transforms")


def _read_cameras(json_path: Path, label: str) -> list[PinholeCamera]:
    try:
        return read_transforms_json(json_path)
    except (KeyError, ValueError, TypeError, IndexError, np.linalg.LinAlgError) as exc:
        raise CaptureError(label, f"cannot read the cameras of {json_path.name}: {_one_line(exc)}") from exc


def _resolve_frame_path(root: Path, file_path: str, label: str) -> Path:
    """A frame's image file; instant-ngp may omit the extension."""
    if not file_path:
        raise CaptureError(label, "a frame of transforms.json has no file_path")
    path = root / file_path
    if path.is_file():
        return path
    for ext in IMAGE_EXTENSIONS:
        candidate = path.with_name(path.name + ext)
        if candidate.is_file():
            return candidate
    raise CaptureError(label, f"image {file_path} named in transforms.json is missing")


def _read_ply(path: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(P, 3) float32 points and (P, 3) float32 colours in [0, 1] (0.5 grey when the PLY has none)."""
    import open3d as o3d  # heavy import, only needed here

    if not path.is_file():
        raise CaptureError(label, f"point file {path.name} named in transforms.json is missing")
    cloud = o3d.io.read_point_cloud(str(path))
    points = np.asarray(cloud.points, dtype=np.float32).reshape(-1, 3)  # (P, 3)
    if cloud.has_colors():
        colors = np.asarray(cloud.colors, dtype=np.float32).reshape(-1, 3)  # (P, 3)
    else:
        colors = np.full_like(points, 0.5)
    return points, colors


def _load_llff(folder: Path, label: str, resolution_scale: float, cache: ImageCache) -> NvsScene:
    """LLFF ``poses_bounds.npy`` (N, 17) and an image folder, resized to ``resolution_scale``.

    The scale is relative to the largest image folder present; the folder used is the smallest one
    whose width is still at least the target width (else the largest), then resized to the target.
    """
    try:
        poses_bounds = np.load(folder / "poses_bounds.npy")  # (N, 17)
    except (OSError, ValueError) as exc:
        raise CaptureError(label, f"cannot read {folder / 'poses_bounds.npy'}: {_one_line(exc)}") from exc
    if poses_bounds.ndim != 2 or poses_bounds.shape[1] != 17 or len(poses_bounds) == 0:
        raise CaptureError(label, f"poses_bounds.npy has shape {poses_bounds.shape}, expected (N, 17)")

    folders = {}
    for candidate in sorted(folder.glob("images*")):
        files = _image_files(candidate) if candidate.is_dir() else []
        if files and (candidate.name == "images" or candidate.name.removeprefix("images_").isdigit()):
            folders[candidate] = files
    if not folders:
        raise CaptureError(label, f"LLFF folder {folder} has no images/ or images_N/ folder with images")
    sizes = {}
    for candidate, files in folders.items():
        try:
            with Image.open(files[0]) as im:
                sizes[candidate] = im.size  # (W, H)
        except (OSError, UnidentifiedImageError) as exc:
            raise CaptureError(label, f"cannot read image {files[0]}: {_one_line(exc)}") from exc
    base = max(sizes, key=lambda c: sizes[c][0])
    target = (max(1, round(sizes[base][0] * resolution_scale)), max(1, round(sizes[base][1] * resolution_scale)))
    large_enough = [c for c in sizes if sizes[c][0] >= target[0]]
    chosen = min(large_enough, key=lambda c: sizes[c][0]) if large_enough else base
    files = folders[chosen]
    logger.info("LLFF: using %s (%dx%d) for %dx%d images", chosen.name, *sizes[chosen], *target)
    if len(files) != len(poses_bounds):
        raise CaptureError(
            label, f"LLFF: {len(files)} images in {chosen.name} but {len(poses_bounds)} poses in poses_bounds.npy"
        )

    views = []
    for row, path in zip(poses_bounds, files, strict=True):
        pose = row[:15].reshape(3, 5)  # [R | t | (h, w, f)], camera-to-world, columns (down, right, back)
        h_full, w_full, f_full = (float(x) for x in pose[:, 4])
        c2w = np.column_stack([pose[:, 1], pose[:, 0], -pose[:, 2]])  # (3, 3) columns: right, down, forward
        center = pose[:, 3]  # (3,)
        R = c2w.T
        M = cam_from_world_matrix(R, -R @ center)  # (4, 4)
        W, H = image_size(path, label)
        f = f_full * W / w_full
        K = np.array([[f, 0.0, W / 2.0], [0.0, f, H / 2.0], [0.0, 0.0, 1.0]])
        view = PosedView(path.name, ImageFile(path, (W, H), label, cache), K, M)
        if target != (W, H):
            view = _resize_view_to(view, target)
        views.append(view)
    if abs(views[0].width / views[0].height - w_full / h_full) > 0.02 * w_full / h_full:
        logger.warning(
            "LLFF: image aspect %dx%d differs from the poses' %gx%g", views[0].width, views[0].height, w_full, h_full
        )
    bounds = poses_bounds[:, 15:17]  # (N, 2) near, far
    depth_bounds = (float(bounds[:, 0].min()), float(bounds[:, 1].max()))

    points = np.zeros((0, 3), dtype=np.float32)
    colors = np.zeros((0, 3), dtype=np.float32)
    model_dir = _find_colmap_model(folder)
    if model_dir is not None:
        model = _read_model(model_dir, label)
        ids = sorted(model.points3D)
        points = np.array([model.points3D[i].xyz for i in ids], dtype=np.float32).reshape(-1, 3)  # (P, 3)
        colors = np.array([model.points3D[i].color for i in ids], dtype=np.float32).reshape(-1, 3) / 255.0
    return NvsScene(tuple(sorted(views, key=lambda v: v.name)), points, colors, depth_bounds, "llff")


# ----------------------------------------------------------------------------- images and intrinsics


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_EXTENSIONS)


def _fit_K_to_image(K: np.ndarray, size: tuple[int, int], image: tuple[int, int], name: str) -> np.ndarray:
    """Scale K (3, 3) from the camera's (W, H) ``size`` to the image file's (W, H), warning when they differ."""
    W, H = image
    if size == (W, H):
        return K
    logger.warning("image %s is %dx%d but its camera is %dx%d; intrinsics scaled to the image", name, W, H, *size)
    return _scale_K(K, W / size[0], H / size[1])


def _scale_K(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Pinhole K for an image resized by (sx, sy); COLMAP's pixel-centre convention keeps cx' = cx * sx."""
    S = np.diag([sx, sy, 1.0])
    return S @ K


def _resize_view(view: PosedView, scale: float) -> PosedView:
    target = (max(1, round(view.width * scale)), max(1, round(view.height * scale)))
    return _resize_view_to(view, target)


def _resize_view_to(view: PosedView, size: tuple[int, int]) -> PosedView:
    """Serve a view's image Lanczos-resized to ``size`` (W, H) (uint8) and scale its K per axis."""
    if size == (view.width, view.height):
        return view
    K = _scale_K(view.K, size[0] / view.width, size[1] / view.height)
    if isinstance(view.pixels, ImageFile):
        return replace(view, pixels=view.pixels.resized(size), K=K)
    return replace(view, pixels=resize_rgb8(view.image_u8(), size), K=K)


def _pinhole_params(K: np.ndarray) -> list[float]:
    """COLMAP PINHOLE params (fx, fy, cx, cy) of K (3, 3)."""
    return [float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])]


def _all_intrinsics_equal(views: tuple[PosedView, ...]) -> bool:
    first = views[0]
    return all(
        (v.width, v.height) == (first.width, first.height) and np.allclose(v.K, first.K, rtol=0, atol=1e-9)
        for v in views
    )


def _png_names(names: list[str]) -> list[str]:
    """Unique PNG file names for the views (``<stem>.png``, index-prefixed on a clash)."""
    stems = [Path(n).stem for n in names]
    if len(set(stems)) == len(stems):
        return [f"{s}.png" for s in stems]
    return [f"{i:05d}_{s}.png" for i, s in enumerate(stems)]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
