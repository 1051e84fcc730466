"""Held-out evaluation and outputs of novel-view synthesis: scores, side-by-side images, orbits.

Inputs: rendered images (H, W, 3) tensors in [0, 1] and the held-out
:class:`~capture3d.tasks.nvs.scene.PosedView` s they render; or the training views, for the orbit
path. Outputs: per-view PSNR / SSIM rows and their means, side-by-side PNGs (render | photo),
orbit camera poses (cam_from_world (4, 4)) around the capture, and PNG / animated GIF writers.
LPIPS is not computed: its network weights cannot be fetched here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from capture3d.tasks.cameras import look_at
from capture3d.tasks.nvs.image_metrics import psnr, ssim
from capture3d.tasks.nvs.scene import PosedView

logger = logging.getLogger(__name__)


def score_views(renders: Sequence[torch.Tensor], views: Sequence[PosedView]) -> list[dict[str, float | str]]:
    """One row per view: name, psnr (dB), ssim."""
    rows: list[dict[str, float | str]] = []
    for img, view in zip(renders, views):
        target = torch.tensor(view.image, dtype=torch.float32)
        pred = img.detach().float().cpu().clamp(0, 1)
        rows.append({"view": view.name, "psnr": float(psnr(pred, target)), "ssim": float(ssim(pred, target))})
    return rows


def summarize(rows: Sequence[dict[str, float | str]]) -> dict[str, float]:
    """Mean PSNR and SSIM over the rows (NaN when there are none)."""
    if not rows:
        return {"psnr": float("nan"), "ssim": float("nan")}
    return {"psnr": float(np.mean([r["psnr"] for r in rows])), "ssim": float(np.mean([r["ssim"] for r in rows]))}


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> uint8."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_png(path: Path, image: torch.Tensor | np.ndarray) -> None:
    Image.fromarray(to_uint8(image)).save(path)


def write_side_by_side(path: Path, render: torch.Tensor, view: PosedView) -> None:
    """PNG of the render (left) next to the held-out photo (right), 4 px white gap."""
    a, b = to_uint8(render), view.image_u8()
    gap = np.full((a.shape[0], 4, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([a, gap, b], axis=1)).save(path)


def write_gif(path: Path, frames: Sequence[torch.Tensor | np.ndarray], fps: int = 15) -> None:
    """Animated GIF (looping) of the frames."""
    images = [Image.fromarray(to_uint8(f)) for f in frames]
    if images:
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def focus_point(views: Sequence[PosedView]) -> np.ndarray:
    """The point (3,) closest, in least squares, to every camera's optical axis."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for v in views:
        R = v.cam_from_world[:3, :3]
        d = R[2]  # forward axis in world
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ v.center
    return np.linalg.lstsq(A, b, rcond=None)[0]


def orbit_poses(views: Sequence[PosedView], num_frames: int) -> list[np.ndarray]:
    """Cameras on an ellipse through the capture's camera centres, all looking at the focus point.

    The ellipse lies in the plane of the two main directions of the centres, with semi-axes
    sqrt(2) x their standard deviations: a ring of cameras gives back its circle, a forward-facing
    capture (LLFF) a small ellipse inside the region it covered.
    """
    centers = np.stack([v.center for v in views])  # (N, 3)
    mean = centers.mean(0)
    _, s, vt = np.linalg.svd(centers - mean, full_matrices=False)
    std = s / np.sqrt(len(views))
    up = -np.mean([v.cam_from_world[1, :3] for v in views], axis=0)  # minus the cameras' y (down) axes
    up = up / np.linalg.norm(up)
    target = focus_point(views)
    poses = []
    for theta in np.linspace(0, 2 * np.pi, num_frames, endpoint=False):
        c = mean + np.sqrt(2) * (std[0] * np.cos(theta) * vt[0] + std[1] * np.sin(theta) * vt[1])
        poses.append(look_at(c, target, up))
    return poses
