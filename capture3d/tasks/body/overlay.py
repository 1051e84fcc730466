"""Overlays of a fitted body on its image: the projected mesh and keypoint skeletons (numpy + PIL).

Inputs: an image (H, W, 3) uint8; optionally a projected mesh (vertex pixels (V, 2), vertex
depths (V,) along the camera axis, faces (F, 3)); keypoint sets ``(names, xy (K, 2), conf (K,),
colour)`` in canonical names. Output: a new (H, W, 3) uint8 image: the mesh as semi-transparent
shaded triangles drawn back to front (painter's algorithm), faces with a vertex behind the camera
skipped, then each skeleton's :data:`SKELETON_EDGES` and points, confident points only.
:func:`write_png` writes an image through a temporary file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from capture3d.atomic import atomic_file
from capture3d.tasks.body.keypoint_formats import SKELETON_EDGES

logger = logging.getLogger(__name__)

KeypointSet = tuple[Sequence[str], np.ndarray, np.ndarray, tuple[int, int, int]]

GT_COLOR = (40, 220, 60)  # ground truth / detections: green
FIT_COLOR = (230, 40, 200)  # the fitted model's projected keypoints: magenta
MESH_COLOR = (150, 180, 255)  # light blue


def _mesh_layer(
    size: tuple[int, int],
    mesh_xy: np.ndarray,
    mesh_depth: np.ndarray | None,
    faces: np.ndarray,
    color: tuple[int, int, int],
    alpha: float,
    focal_px: float,
) -> Image.Image | None:
    """An RGBA layer (W, H) with the visible faces drawn far to near, or None when none is."""
    w, h = size
    xy = np.asarray(mesh_xy, dtype=np.float64).reshape(-1, 2)  # (V, 2)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)  # (F, 3)
    if faces.size and (faces.min() < 0 or faces.max() >= len(xy)):
        raise ValueError(f"draw_overlay: face indices outside 0..{len(xy) - 1}")
    tri = xy[faces]  # (F, 3, 2)
    keep = np.isfinite(tri).all(axis=(1, 2))
    if mesh_depth is not None:
        depth = np.asarray(mesh_depth, dtype=np.float64).reshape(-1)  # (V,)
        if len(depth) != len(xy):
            raise ValueError(f"draw_overlay: {len(depth)} depths for {len(xy)} vertices")
        tri_z = depth[faces]  # (F, 3)
        keep &= (tri_z > 1e-9).all(axis=1) & np.isfinite(tri_z).all(axis=1)  # behind the camera
    lo, hi = tri.min(axis=1), tri.max(axis=1)  # (F, 2) screen boxes
    keep &= (hi[:, 0] >= 0) & (lo[:, 0] < w) & (hi[:, 1] >= 0) & (lo[:, 1] < h)
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return None
    tri = tri[idx]
    if mesh_depth is not None:
        z = tri_z[idx]  # (F', 3)
        # Lambert-ish shading: back-project to camera coordinates with a guessed focal length
        # (principal point at the centre), shade by |cos| between the normal and the view ray.
        centre = np.array([w / 2.0, h / 2.0])
        pts = np.concatenate([(tri - centre) * z[..., None] / focal_px, z[..., None]], axis=2)  # (F', 3, 3)
        normal = np.cross(pts[:, 1] - pts[:, 0], pts[:, 2] - pts[:, 0])  # (F', 3)
        ray = pts.mean(axis=1)  # (F', 3)
        denom = np.linalg.norm(normal, axis=1) * np.linalg.norm(ray, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.abs((normal * ray).sum(axis=1)) / denom
        shade = 0.35 + 0.65 * np.nan_to_num(cos, nan=0.5)
        order = np.argsort(-z.mean(axis=1), kind="stable")  # far first
    else:
        shade = np.ones(len(tri))
        order = np.arange(len(tri))
    rgb = np.clip(np.outer(shade, color), 0, 255).astype(np.int64)  # (F', 3)
    a = int(round(255 * float(np.clip(alpha, 0.0, 1.0))))
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)  # RGBA fills replace pixels: nearer faces overwrite farther ones
    polygons = tri.astype(np.float32).tolist()
    colors = rgb.tolist()
    for i in order.tolist():
        p = polygons[i]
        c = colors[i]
        draw.polygon((p[0][0], p[0][1], p[1][0], p[1][1], p[2][0], p[2][1]), fill=(c[0], c[1], c[2], a))
    return layer


def draw_overlay(
    image: np.ndarray,
    *,
    mesh_xy: np.ndarray | None = None,
    mesh_depth: np.ndarray | None = None,
    faces: np.ndarray | None = None,
    keypoints: Sequence[KeypointSet] = (),
    mesh_color: tuple[int, int, int] = MESH_COLOR,
    mesh_alpha: float = 0.6,
    min_conf: float = 0.1,
    focal_px: float | None = None,
) -> np.ndarray:
    """The image (H, W, 3) uint8 with the mesh and the skeletons drawn over it (a new array).

    ``mesh_xy`` (V, 2) pixels and ``faces`` (F, 3) draw the mesh; with ``mesh_depth`` (V,) faces
    are sorted back to front, shaded, and those with a vertex at depth <= 0 skipped (without it,
    drawn in order, unshaded). ``focal_px`` (default max(H, W)) only affects the shading. Each
    keypoint set ``(names, xy (K, 2), conf (K,), colour)`` draws its edges and points whose
    confidence exceeds ``min_conf``."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"draw_overlay: expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    canvas = Image.fromarray(img, "RGB")
    if mesh_xy is not None and faces is not None and len(faces):
        layer = _mesh_layer(
            (w, h),
            mesh_xy,
            mesh_depth,
            faces,
            mesh_color,
            mesh_alpha,
            float(focal_px) if focal_px else float(max(h, w)),
        )
        if layer is not None:
            canvas = Image.alpha_composite(canvas.convert("RGBA"), layer).convert("RGB")
    if keypoints:
        draw = ImageDraw.Draw(canvas)
        width = max(1, round(max(h, w) / 320))
        radius = max(1.5, 1.2 * width)
        for names, xy, conf, color in keypoints:
            xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)  # (K, 2)
            conf = np.asarray(conf, dtype=np.float64).reshape(-1)  # (K,)
            if not len(names) == len(xy) == len(conf):
                raise ValueError(f"draw_overlay: {len(names)} names, {len(xy)} points, {len(conf)} confidences")
            ok = (conf > min_conf) & np.isfinite(xy).all(axis=1)
            where = {n: i for i, n in enumerate(names) if ok[i]}
            color = tuple(int(c) for c in color)
            for a, b in SKELETON_EDGES:
                if a in where and b in where:
                    pa, pb = xy[where[a]], xy[where[b]]
                    draw.line((float(pa[0]), float(pa[1]), float(pb[0]), float(pb[1])), fill=color, width=width)
            for i in where.values():
                x, y = float(xy[i, 0]), float(xy[i, 1])
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)
    return np.asarray(canvas, dtype=np.uint8).copy()


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) or (H, W) uint8 image as PNG through a temporary file."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"write_png: expected a uint8 (H, W[, 3]) image, got {img.shape} {img.dtype}")
    with atomic_file(Path(path)) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
