"""Export an SfM result in the formats later stages and viewers read.

Inputs: reconstructed models (largest first) and the image folder. Outputs, under ``out``:

* ``sparse/0/`` the largest model as COLMAP binary (``sparse/1/`` ... further models, if any);
* ``points.ply`` the coloured sparse points of model 0;
* ``undistorted/images/`` and ``undistorted/sparse/`` images and model with PINHOLE cameras;
* ``transforms.json`` nerfstudio convention, pointing at the undistorted images.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pycolmap

from capture3d.tasks.cameras import PinholeCamera, write_transforms_json

logger = logging.getLogger(__name__)


def write_models(models: list[pycolmap.Reconstruction], out: Path) -> list[Path]:
    """Write each model as COLMAP binary into ``out/sparse/<i>/``; returns the folders."""
    folders = []
    for i, model in enumerate(models):
        folder = out / "sparse" / str(i)
        folder.mkdir(parents=True, exist_ok=True)
        model.write_binary(folder)
        folders.append(folder)
    return folders


def write_points_ply(model: pycolmap.Reconstruction, path: Path) -> int:
    """Binary PLY of the model's 3D points with colours (x y z red green blue); returns the count."""
    ids = sorted(model.points3D)
    xyz = np.array([model.points3D[i].xyz for i in ids], dtype=np.float32).reshape(-1, 3)  # (N, 3)
    rgb = np.array([model.points3D[i].color for i in ids], dtype=np.uint8).reshape(-1, 3)  # (N, 3)
    vertex = np.empty(
        len(ids), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    )
    vertex["x"], vertex["y"], vertex["z"] = xyz.T
    vertex["red"], vertex["green"], vertex["blue"] = rgb.T
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(ids)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(vertex.tobytes())
    return len(ids)


def undistort(model_dir: Path, image_dir: Path, out_dir: Path, num_threads: int = -1) -> pycolmap.Reconstruction:
    """Undistort the registered images to PINHOLE cameras; returns the undistorted model."""
    pycolmap.undistort_images(out_dir, model_dir, image_dir, output_type="COLMAP", num_threads=num_threads)
    for extra in ("stereo", "run-colmap-geometric.sh", "run-colmap-photometric.sh"):
        target = out_dir / extra
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    return pycolmap.Reconstruction(out_dir / "sparse")


def pinhole_cameras(model: pycolmap.Reconstruction) -> list[PinholeCamera]:
    """Registered images of a model with PINHOLE-family cameras as :class:`PinholeCamera`, by name."""
    cams = []
    for image_id in model.reg_image_ids():
        image = model.image(image_id)
        camera = model.camera(image.camera_id)
        if camera.model_name not in ("PINHOLE", "SIMPLE_PINHOLE"):
            raise ValueError(f"image {image.name}: camera model {camera.model_name} is not pinhole")
        pose = image.cam_from_world()
        cams.append(
            PinholeCamera(
                image.name,
                int(camera.width),
                int(camera.height),
                np.asarray(camera.calibration_matrix()),
                np.asarray(pose.rotation.matrix()),
                np.asarray(pose.translation),
            )
        )
    return sorted(cams, key=lambda c: c.name)


def export_result(
    models: list[pycolmap.Reconstruction], image_dir: Path, out: Path, num_threads: int = -1
) -> dict[str, int]:
    """Write models, points, undistorted images and transforms.json under ``out``; returns counts."""
    folders = write_models(models, out)
    num_points = write_points_ply(models[0], out / "points.ply")
    undistorted = undistort(folders[0], image_dir, out / "undistorted", num_threads)
    cams = pinhole_cameras(undistorted)
    write_transforms_json(out / "transforms.json", cams, file_prefix="undistorted/images/", ply_file_path="points.ply")
    return {"num_points_exported": num_points, "num_undistorted": len(cams)}
