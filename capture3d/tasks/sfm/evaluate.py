"""Structure-from-motion evaluation: reconstruction statistics and camera pose accuracy.

Pure computation, no workflow or file-format glue beyond reading cameras.

Inputs:

* estimated models as ``pycolmap.Reconstruction`` objects (e.g. the output of incremental
  mapping, or a COLMAP model folder read with :func:`read_colmap_cameras`);
* ground-truth cameras from a Strecha ``*.camera`` folder, a COLMAP model folder (bin or txt)
  or a nerfstudio ``transforms.json`` (:func:`read_ground_truth`).

Outputs: flat ``dict[str, float | int]`` metrics (:func:`reconstruction_stats`,
:func:`pose_errors`, :func:`evaluate_sfm`).

All cameras are :class:`~capture3d.tasks.cameras.PinholeCamera` in the project convention:
``R``, ``t`` are cam_from_world in OpenCV axes, ``x_cam = R @ X + t``.

Pose accuracy has two parts:

* absolute: the estimated camera centres are aligned to the ground-truth centres with a
  similarity (Umeyama 1991); rotation and position errors are measured after alignment;
* relative (alignment-free): for every pair of ground-truth images the error is the larger of
  the relative-rotation angle error and the angle between the relative translation directions;
  the area under the recall curve up to 5 degrees is reported as in SuperGlue/LightGlue. Images
  of the ground truth that were not registered count as failures (infinite error) for every pair
  they belong to.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pycolmap

from capture3d.tasks.cameras import (
    PinholeCamera,
    cameras_from_reconstruction,
    is_colmap_model_dir,
    read_colmap_cameras,
    read_transforms_json,
)

logger = logging.getLogger(__name__)

GROUND_TRUTH_FORMATS = ("auto", "strecha", "colmap", "transforms")


# ----------------------------------------------------------------------------- readers


def _parse_strecha_file(path: Path, scale: float) -> PinholeCamera:
    """One Strecha ``.camera`` file -> camera named after the file minus ``.camera``."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: not a Strecha .camera file ({exc})") from None
    if values.size != 26:
        raise ValueError(f"{path}: expected 26 numbers in a Strecha .camera file, found {values.size}")
    K = values[0:9].reshape(3, 3).copy()  # (3, 3)
    # values[9:12]: radial distortion, all zero in the benchmark; not modelled.
    R_world_from_cam = values[12:21].reshape(3, 3)  # (3, 3), camera axes -> world axes
    C = values[21:24]  # (3,), camera centre in world coordinates
    width, height = values[24], values[25]
    K[:2, :] *= scale
    # The files print R to 6 digits; snap it to the nearest rotation so that R.T @ R = I and the
    # camera centre is reproduced exactly.
    U, _, Vt = np.linalg.svd(R_world_from_cam)
    R_world_from_cam = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    R = R_world_from_cam.T  # cam_from_world
    t = -R @ C
    name = path.name[: -len(".camera")]
    return PinholeCamera(name, int(round(width * scale)), int(round(height * scale)), K, R, t)


def read_strecha_cameras(folder: Path, scale: float = 1.0) -> dict[str, PinholeCamera]:
    """Read every ``*.camera`` file of a Strecha-benchmark folder.

    Names are the file names minus ``.camera`` (``0000.jpg.camera`` -> ``0000.jpg``). ``scale``
    multiplies the first two rows of K and the image size (0.25 for images downscaled by 4).
    """
    folder = Path(folder)
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    files = sorted(folder.glob("*.camera"))
    if not files:
        raise ValueError(f"{folder}: no *.camera files found")
    cams = {}
    for f in files:
        cam = _parse_strecha_file(f, scale)
        cams[cam.name] = cam
    logger.debug("read %d Strecha cameras from %s", len(cams), folder)
    return cams


def read_ground_truth(path: Path, fmt: str = "auto") -> dict[str, PinholeCamera]:
    """Ground-truth cameras keyed by image name.

    ``fmt``: ``"strecha"`` (folder of ``*.camera``), ``"colmap"`` (model folder, bin or txt),
    ``"transforms"`` (nerfstudio ``transforms.json``) or ``"auto"``, which picks by content:
    a ``*.json`` file -> transforms, a folder with ``*.camera`` files -> strecha, a folder with
    ``cameras.bin``/``cameras.txt`` -> colmap. Anything else raises ``ValueError``.
    """
    path = Path(path)
    if fmt not in GROUND_TRUTH_FORMATS:
        raise ValueError(f"{path}: unknown ground-truth format {fmt!r}, expected one of {GROUND_TRUTH_FORMATS}")
    if not path.exists():
        raise ValueError(f"{path}: ground-truth path does not exist")
    if fmt == "auto":
        if path.is_file() and path.suffix.lower() == ".json":
            fmt = "transforms"
        elif path.is_dir() and any(path.glob("*.camera")):
            fmt = "strecha"
        elif is_colmap_model_dir(path):
            fmt = "colmap"
        else:
            raise ValueError(
                f"{path}: cannot detect ground-truth format "
                "(expected a .json file, a folder of *.camera files or a COLMAP model folder)"
            )
        logger.debug("ground truth %s detected as %s", path, fmt)
    if fmt == "strecha":
        if not path.is_dir():
            raise ValueError(f"{path}: Strecha ground truth must be a folder of *.camera files")
        return read_strecha_cameras(path)
    if fmt == "colmap":
        return read_colmap_cameras(path)
    if not path.is_file():
        raise ValueError(f"{path}: transforms ground truth must be a transforms.json file")
    cams: dict[str, PinholeCamera] = {}
    for cam in read_transforms_json(path):
        if cam.name in cams:
            logger.warning("duplicate frame name %s in %s; keeping the first", cam.name, path)
            continue
        cams[cam.name] = cam
    return cams


# ----------------------------------------------------------------------------- geometry


def umeyama_similarity(
    src: np.ndarray, dst: np.ndarray, with_scale: bool = True
) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity with ``dst ≈ s * R @ src + t`` (Umeyama 1991).

    src, dst: (N, 3) corresponding points. Returns s (float; 1.0 when ``with_scale`` is False),
    R (3, 3) proper rotation, t (3,).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"umeyama_similarity needs two (N, 3) arrays of equal shape, got {src.shape} and {dst.shape}")
    n = src.shape[0]
    if n < 2:
        raise ValueError(f"umeyama_similarity needs at least 2 points, got {n}")
    mu_src = src.mean(axis=0)
    mu_dst = dst.mean(axis=0)
    src_c = src - mu_src
    dst_c = dst - mu_dst
    var_src = float(np.sum(src_c**2) / n)
    if var_src <= 1e-24:
        raise ValueError("umeyama_similarity: source points are all identical")
    cov = dst_c.T @ src_c / n  # (3, 3)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / var_src) if with_scale else 1.0
    t = mu_dst - s * R @ mu_src
    return s, R, t


def _rotation_angle_deg(R: np.ndarray) -> float:
    """Angle of a rotation matrix (3, 3), degrees."""
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def _vector_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two 3-vectors, degrees (0 if either is zero)."""
    return float(np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b)), float(np.dot(a, b)))))


def relative_pose_auc(errors_deg: np.ndarray, threshold_deg: float) -> float:
    """Area under the recall-vs-error curve up to ``threshold_deg``, normalised to [0, 1].

    errors_deg: (M,) errors in degrees; ``inf``/``nan`` count as failures. As in the
    SuperGlue/LightGlue pose AUC: the recall curve through the sorted errors (starting at
    (0, 0)) is integrated with the trapezoid rule over [0, threshold] and divided by threshold.
    An empty input gives 0.0.
    """
    if not threshold_deg > 0:
        raise ValueError(f"threshold_deg must be positive, got {threshold_deg}")
    errors = np.asarray(errors_deg, dtype=np.float64).reshape(-1)
    if errors.size == 0:
        return 0.0
    errors = np.where(np.isnan(errors), np.inf, errors)
    errors = np.sort(errors)
    recall = np.arange(1, errors.size + 1) / errors.size
    errors = np.concatenate([[0.0], errors])
    recall = np.concatenate([[0.0], recall])
    last = int(np.searchsorted(errors, threshold_deg))
    r = np.concatenate([recall[:last], [recall[last - 1]]])
    e = np.concatenate([errors[:last], [threshold_deg]])
    area = float(np.sum(np.diff(e) * (r[1:] + r[:-1]) / 2.0))
    return area / threshold_deg


# ----------------------------------------------------------------------------- metrics


def _largest_model(models: list[pycolmap.Reconstruction]) -> pycolmap.Reconstruction | None:
    if not models:
        return None
    return max(models, key=lambda r: (r.num_reg_images(), r.num_points3D()))


def _mean_reprojection_error(rec: pycolmap.Reconstruction) -> float:
    """Mean reprojection error in pixels; recomputed on a copy when point errors are unset."""
    if rec.num_points3D() == 0:
        return float("nan")
    if all(p.has_error() for p in rec.points3D.values()):
        return float(rec.compute_mean_reprojection_error())
    copy = pycolmap.Reconstruction(rec)
    copy.update_point_3d_errors()
    return float(copy.compute_mean_reprojection_error())


def reconstruction_stats(models: list[pycolmap.Reconstruction], num_images: int) -> dict[str, float | int]:
    """Completeness and quality of a mapping result.

    models: all models the mapper produced; num_images: images given to the mapper.
    ``registered_fraction``, ``num_registered``, ``num_points3d``, ``mean_track_length`` and
    ``mean_reprojection_error_px`` describe the largest model (most registered images);
    ``num_models`` counts all models. With no model, counts are 0 and the reprojection error NaN.
    """
    largest = _largest_model(models)
    if largest is None:
        num_registered, num_points, track_len, reproj = 0, 0, 0.0, float("nan")
    else:
        num_registered = int(largest.num_reg_images())
        num_points = int(largest.num_points3D())
        track_len = float(largest.compute_mean_track_length()) if num_points else 0.0
        reproj = _mean_reprojection_error(largest)
    return {
        "registered_fraction": float(num_registered / num_images) if num_images > 0 else 0.0,
        "num_registered": num_registered,
        "num_images": int(num_images),
        "num_models": len(models),
        "num_points3d": num_points,
        "mean_track_length": track_len,
        "mean_reprojection_error_px": reproj,
    }


def _relative_pose_error_deg(
    a_i: PinholeCamera, a_j: PinholeCamera, b_i: PinholeCamera, b_j: PinholeCamera
) -> tuple[float, float]:
    """(rotation, translation-direction) error in degrees of the relative pose i -> j, a vs b."""
    R_a = a_j.R @ a_i.R.T  # cam_j_from_cam_i
    t_a = a_j.t - R_a @ a_i.t
    R_b = b_j.R @ b_i.R.T
    t_b = b_j.t - R_b @ b_i.t
    return _rotation_angle_deg(R_a.T @ R_b), _vector_angle_deg(t_a, t_b)


def pose_errors(
    est: dict[str, PinholeCamera], gt: dict[str, PinholeCamera], auc_threshold_deg: float = 5.0
) -> dict[str, float | int]:
    """Pose accuracy of estimated cameras against ground truth, matched by name.

    Keys: ``rotation_error_deg_median``/``_max`` and ``position_error_median``/``_max`` (gt
    units) after a similarity alignment of the camera centres; ``auc_rel_pose_<T>deg`` (AUC of the
    pairwise relative pose error up to ``auc_threshold_deg``; pairs involving a gt image missing
    from ``est`` count as failures), ``rel_rotation_error_deg_median`` and
    ``rel_translation_error_deg_median`` (over pairs of evaluated images), ``num_gt_images``,
    ``num_evaluated``. Needs at least 3 common images, else ``ValueError``.
    """
    common = sorted(set(est) & set(gt))
    if len(common) < 3:
        raise ValueError(f"pose_errors needs at least 3 images in both estimate and ground truth, found {len(common)}")
    missing = sorted(set(gt) - set(est))
    if missing:
        logger.info("%d of %d ground-truth images not registered", len(missing), len(gt))

    C_est = np.stack([est[n].center for n in common])  # (N, 3)
    C_gt = np.stack([gt[n].center for n in common])  # (N, 3)
    s, R_align, t_align = umeyama_similarity(C_est, C_gt, with_scale=True)
    C_aligned = s * C_est @ R_align.T + t_align  # (N, 3)
    position_errors = np.linalg.norm(C_aligned - C_gt, axis=1)  # (N,)
    rotation_errors = np.array([_rotation_angle_deg(gt[n].R @ (est[n].R @ R_align.T).T) for n in common])  # (N,)

    gt_names = sorted(gt)
    pair_errors = []
    rel_rot, rel_trans = [], []
    for a in range(len(gt_names)):
        for b in range(a + 1, len(gt_names)):
            ni, nj = gt_names[a], gt_names[b]
            if ni not in est or nj not in est:
                pair_errors.append(np.inf)
                continue
            e_rot, e_trans = _relative_pose_error_deg(est[ni], est[nj], gt[ni], gt[nj])
            rel_rot.append(e_rot)
            rel_trans.append(e_trans)
            pair_errors.append(max(e_rot, e_trans))

    return {
        "rotation_error_deg_median": float(np.median(rotation_errors)),
        "rotation_error_deg_max": float(np.max(rotation_errors)),
        "position_error_median": float(np.median(position_errors)),
        "position_error_max": float(np.max(position_errors)),
        f"auc_rel_pose_{auc_threshold_deg:g}deg": relative_pose_auc(np.array(pair_errors), auc_threshold_deg),
        "rel_rotation_error_deg_median": float(np.median(rel_rot)),
        "rel_translation_error_deg_median": float(np.median(rel_trans)),
        "num_gt_images": len(gt),
        "num_evaluated": len(common),
    }


def evaluate_sfm(
    models: list[pycolmap.Reconstruction],
    num_images: int,
    gt: dict[str, PinholeCamera] | None,
    auc_threshold_deg: float = 5.0,
) -> dict[str, float | int]:
    """:func:`reconstruction_stats`, plus :func:`pose_errors` of the largest model when ``gt`` is given.

    Raises ``ValueError`` (from :func:`pose_errors`) when ``gt`` is given and the largest model
    shares fewer than 3 images with it.
    """
    metrics = reconstruction_stats(models, num_images)
    if gt is not None:
        largest = _largest_model(models)
        est = cameras_from_reconstruction(largest) if largest is not None else {}
        metrics.update(pose_errors(est, gt, auc_threshold_deg))
    logger.info("SfM evaluation: %s", metrics)
    return metrics
