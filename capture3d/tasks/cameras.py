"""Camera conventions and pose-file I/O shared by every stage.

Inputs: rotations/translations as numpy arrays, or ``transforms.json`` files.
Outputs: poses in one convention, the COLMAP/OpenCV one used everywhere in capture3d:

* ``cam_from_world`` (R: (3, 3), t: (3,)) maps a world point ``X`` to camera axes
  ``x_cam = R @ X + t``; camera axes are x right, y down, z forward.
* nerfstudio's ``transforms.json`` stores camera-to-world 4x4 matrices with OpenGL camera axes
  (x right, y up, z back) and, when written from COLMAP, a world axis permutation recorded as
  ``applied_transform`` (3x4). :func:`write_transforms_json` writes that convention and
  :func:`read_transforms_json` undoes it, so a round trip returns the COLMAP-frame poses.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pycolmap

logger = logging.getLogger(__name__)

# OpenCV camera axes -> OpenGL camera axes (flip y and z).
_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
# World transform nerfstudio's ``colmap_to_json`` applies: swap x/y, negate z. (3, 4)
NERFSTUDIO_APPLIED_TRANSFORM = np.array([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class PinholeCamera:
    """A pinhole camera with its pose. K: (3, 3); R: (3, 3) cam_from_world; t: (3,)."""

    name: str
    width: int
    height: int
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates, (3,)."""
        return -self.R.T @ self.t


def cam_from_world_matrix(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(3, 3), (3,) -> (4, 4) homogeneous cam_from_world."""
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = t
    return M


def opencv_to_nerfstudio_c2w(R: np.ndarray, t: np.ndarray, applied: np.ndarray | None = None) -> np.ndarray:
    """cam_from_world (OpenCV axes) -> camera-to-world (OpenGL axes), (4, 4).

    ``applied`` (3, 4) is an extra world transform applied on the left (nerfstudio's
    ``applied_transform``); ``None`` means identity.
    """
    c2w = np.linalg.inv(cam_from_world_matrix(R, t)) @ _CV_TO_GL
    if applied is not None:
        A = np.eye(4)
        A[:3, :] = applied
        c2w = A @ c2w
    return c2w


def nerfstudio_c2w_to_opencv(c2w: np.ndarray, applied: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`opencv_to_nerfstudio_c2w`: (4, 4) -> R (3, 3), t (3,)."""
    M = np.asarray(c2w, dtype=np.float64)
    if M.shape == (3, 4):
        M = np.vstack([M, [0.0, 0.0, 0.0, 1.0]])
    if applied is not None:
        A = np.eye(4)
        A[:3, :] = applied
        M = np.linalg.inv(A) @ M
    w2c = np.linalg.inv(M @ _CV_TO_GL)
    return w2c[:3, :3], w2c[:3, 3]


def write_transforms_json(
    path: Path,
    cameras: list[PinholeCamera],
    file_prefix: str = "images/",
    ply_file_path: str | None = None,
    nerfstudio_world: bool = True,
) -> None:
    """Write pinhole cameras as a nerfstudio ``transforms.json``.

    Intrinsics are written once at the top level when all cameras share them, else per frame.
    With ``nerfstudio_world`` the world axes are permuted as nerfstudio's COLMAP converter does
    and the permutation is stored as ``applied_transform``.
    """
    applied = NERFSTUDIO_APPLIED_TRANSFORM if nerfstudio_world else None

    def intr(cam: PinholeCamera) -> dict[str, float | int]:
        return {
            "fl_x": float(cam.K[0, 0]),
            "fl_y": float(cam.K[1, 1]),
            "cx": float(cam.K[0, 2]),
            "cy": float(cam.K[1, 2]),
            "w": int(cam.width),
            "h": int(cam.height),
        }

    shared = len({tuple(sorted(intr(c).items())) for c in cameras}) == 1
    out: dict = {"camera_model": "PINHOLE"}
    if shared and cameras:
        out.update(intr(cameras[0]))
    frames = []
    for cam in cameras:
        frame: dict = {
            "file_path": f"{file_prefix}{cam.name}",
            "transform_matrix": opencv_to_nerfstudio_c2w(cam.R, cam.t, applied).tolist(),
        }
        if not shared:
            frame.update(intr(cam))
        frames.append(frame)
    out["frames"] = frames
    if applied is not None:
        out["applied_transform"] = applied.tolist()
    if ply_file_path is not None:
        out["ply_file_path"] = ply_file_path
    Path(path).write_text(json.dumps(out, indent=2))


def read_transforms_json(path: Path) -> list[PinholeCamera]:
    """Read a nerfstudio/instant-ngp ``transforms.json`` into OpenCV-convention cameras.

    Supports top-level or per-frame ``fl_x/fl_y/cx/cy/w/h`` and instant-ngp's ``camera_angle_x``.
    Camera names are the basenames of ``file_path`` (with an extension added when missing is not
    attempted: names are compared as written).
    """
    data = json.loads(Path(path).read_text())
    applied = np.asarray(data["applied_transform"], dtype=np.float64) if "applied_transform" in data else None
    cams = []
    for frame in data["frames"]:
        merged = {**data, **frame}
        w, h = int(merged["w"]), int(merged["h"])
        if "fl_x" in merged:
            fx = float(merged["fl_x"])
            fy = float(merged.get("fl_y", fx))
        else:
            fx = fy = 0.5 * w / np.tan(0.5 * float(merged["camera_angle_x"]))
        cx = float(merged.get("cx", w / 2.0))
        cy = float(merged.get("cy", h / 2.0))
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        R, t = nerfstudio_c2w_to_opencv(np.asarray(frame["transform_matrix"]), applied)
        cams.append(PinholeCamera(Path(frame["file_path"]).name, w, h, K, R, t))
    return cams


def look_at(center: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """cam_from_world (4, 4) of a camera at ``center`` looking at ``target`` (OpenCV axes, y down)."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    M = np.eye(4)
    M[:3, :3] = np.stack([x, y, z])
    M[:3, 3] = -M[:3, :3] @ center
    return M


def _calibration_matrix(camera: pycolmap.Camera) -> np.ndarray:
    """Pinhole part of a COLMAP camera, (3, 3); distortion parameters are ignored."""
    try:
        K = np.asarray(camera.calibration_matrix(), dtype=np.float64)
        if K.shape == (3, 3) and np.all(np.isfinite(K)):
            return K
    except Exception:  # noqa: BLE001  # pragma: no cover - models without a calibration matrix
        pass
    return np.array(
        [
            [camera.focal_length_x, 0.0, camera.principal_point_x],
            [0.0, camera.focal_length_y, camera.principal_point_y],
            [0.0, 0.0, 1.0],
        ]
    )


def cameras_from_reconstruction(rec: pycolmap.Reconstruction) -> dict[str, PinholeCamera]:
    """Registered images of a reconstruction as cameras keyed by ``image.name``."""
    cams: dict[str, PinholeCamera] = {}
    for image_id in sorted(rec.reg_image_ids()):
        image = rec.image(image_id)
        pose = image.cam_from_world()
        camera = image.camera
        R = np.asarray(pose.rotation.matrix(), dtype=np.float64)  # (3, 3)
        t = np.asarray(pose.translation, dtype=np.float64).reshape(3)  # (3,)
        if image.name in cams:
            logger.warning("duplicate image name %s in reconstruction; keeping the first", image.name)
            continue
        cams[image.name] = PinholeCamera(
            image.name, int(camera.width), int(camera.height), _calibration_matrix(camera), R, t
        )
    return cams


def is_colmap_model_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "cameras.bin").is_file() or (path / "cameras.txt").is_file())


def read_colmap_cameras(model_dir: Path) -> dict[str, PinholeCamera]:
    """Registered cameras of a COLMAP model folder (binary or text), keyed by image name."""
    model_dir = Path(model_dir)
    if not is_colmap_model_dir(model_dir):
        raise ValueError(f"{model_dir}: not a COLMAP model folder (no cameras.bin or cameras.txt)")
    import pycolmap

    rec = pycolmap.Reconstruction(str(model_dir))
    cams = cameras_from_reconstruction(rec)
    logger.debug("read %d registered cameras from COLMAP model %s", len(cams), model_dir)
    return cams


_EXIF_IFD = 0x8769
_EXIF_FOCAL_35MM = 0xA405  # FocalLengthIn35mmFilm
_EXIF_FOCAL_MM = 0x920A  # FocalLength
_EXIF_PLANE_X_RES = 0xA20E  # FocalPlaneXResolution
_EXIF_PLANE_UNIT = 0xA210  # FocalPlaneResolutionUnit: 2 inch, 3 cm, 4 mm
_EXIF_PIXEL_WIDTH = 0xA002  # PixelXDimension: the width the focal-plane resolution refers to


def focal_from_exif(path: Path) -> float | None:
    """A photo's focal length in pixels from its EXIF, or None when it has none usable.

    The 35 mm-equivalent focal length (``FocalLengthIn35mmFilm``) gives ``f35 * longer side / 36``
    (a 36 mm wide frame); else ``FocalLength`` (mm) times ``FocalPlaneXResolution`` (pixels per
    unit), rescaled when the image is narrower than ``PixelXDimension`` (a resized photo)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
            ifd = img.getexif().get_ifd(_EXIF_IFD)
    except OSError:
        return None
    f35 = float(ifd.get(_EXIF_FOCAL_35MM) or 0)
    if f35 > 0:
        return f35 * max(width, height) / 36.0
    f_mm = float(ifd.get(_EXIF_FOCAL_MM) or 0)
    res = float(ifd.get(_EXIF_PLANE_X_RES) or 0)
    mm_per_unit = {2: 25.4, 3: 10.0, 4: 1.0}.get(int(ifd.get(_EXIF_PLANE_UNIT) or 2))
    if f_mm <= 0 or res <= 0 or mm_per_unit is None:
        return None
    focal = f_mm * res / mm_per_unit
    full_width = float(ifd.get(_EXIF_PIXEL_WIDTH) or 0)
    if full_width > 0:
        focal *= width / full_width
    return focal
