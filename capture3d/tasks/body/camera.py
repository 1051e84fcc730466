"""Pinhole cameras for body fitting: focal length from a field of view, projection, and SMPLify's
initial depth from the torso length.

Inputs/outputs are torch tensors (batched) or numpy arrays as annotated. Cameras are OpenCV
style: x right, y down, z forward; ``x_cam = R x_world + t``; pixels ``K x_cam``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

logger = logging.getLogger(__name__)


def focal_from_fov(width: int, height: int, fov_deg: float) -> float:
    """Focal length in pixels for a field of view ``fov_deg`` across the longer image side."""
    return 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2)


def intrinsics(width: int, height: int, focal: float) -> np.ndarray:
    """(3, 3) pinhole K with the principal point at the image centre."""
    return np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def project(
    points: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor, k: torch.Tensor, min_depth: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into views.

    points: (B, N, 3); rot: (B, V, 3, 3); trans: (B, V, 3); k: (B, V, 3, 3).
    Returns pixels (B, V, N, 2) and depths (B, V, N) (clamped at ``min_depth`` for the division).
    """
    cam = torch.einsum("bvij,bnj->bvni", rot, points) + trans[:, :, None, :]
    depth = cam[..., 2]
    uv = cam[..., :2] / depth.clamp_min(min_depth)[..., None]
    pix = torch.einsum("bvij,bvnj->bvni", k[..., :2, :2], uv) + k[:, :, None, :2, 2]
    return pix, depth


def depth_from_lengths(model_lengths: np.ndarray, image_lengths: np.ndarray, focal: float) -> float | None:
    """SMPLify's initial depth: focal x (3D length / 2D length), the median over the given
    segment pairs (torso sides first). Returns None when no segment is usable."""
    ok = image_lengths > 1.0
    if not ok.any():
        return None
    return float(focal * np.median(model_lengths[ok] / image_lengths[ok]))
