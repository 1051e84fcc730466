"""What the novel-view-synthesis stages (``fit_gaussians``, ``fit_nerf``) share.

Inputs: a posed capture (the ``sfm`` stage's output folder, a COLMAP folder, a nerfstudio
``transforms.json`` or an LLFF folder with ``poses_bounds.npy``) and the ``data`` part of the
stage's params section. Outputs: the scene with its train / held-out split (every
``holdout_every``-th view held out, LLFF convention), sparse points triangulated with the known
poses when the input has none, and the evaluation files every fit writes (held-out side-by-side
PNGs, scores, the orbit, the curve CSV).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from capture3d.errors import CaptureError
from capture3d.stages.common import CaptureInputs
from capture3d.tasks.nvs.data import load_scene, triangulate_known_poses
from capture3d.tasks.nvs.evaluate import (
    orbit_poses,
    score_views,
    write_gif,
    write_png,
    write_side_by_side,
)
from capture3d.tasks.nvs.scene import NvsScene, PosedView, holdout_split

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NvsDataConfig:
    """How a posed capture becomes training and held-out views."""

    resolution_scale: float
    """images (and intrinsics) scaled by this"""
    holdout_every: int
    """LLFF convention: views 0, k, 2k ... are held out for evaluation"""
    max_points: int
    """sparse points kept for initialisation (0: all)"""
    triangulate: Literal["auto", "never"]
    """auto: triangulate points with the known poses when the input has none (LLFF)"""
    image_cache_mb: float
    """photos are kept as uint8 in an LRU cache of at most this many MiB and decoded again when evicted"""


@dataclass(frozen=True)
class NvsInputs(CaptureInputs):
    """A posed capture: an sfm output folder, COLMAP folder, transforms.json or LLFF folder."""

    capture: Path
    """posed capture: sfm output folder, COLMAP folder, transforms.json or LLFF folder (poses_bounds.npy)"""


@dataclass(frozen=True)
class FitData:
    scene: NvsScene
    train: tuple[PosedView, ...]
    test: tuple[PosedView, ...]


def load_fit_data(inputs: NvsInputs, data: NvsDataConfig) -> FitData:
    """Load, triangulate when needed, and split; CaptureError naming the capture on bad input."""
    if data.resolution_scale <= 0 or data.resolution_scale > 4:
        raise CaptureError(inputs.label, f"resolution_scale must be in (0, 4], got {data.resolution_scale}")
    if data.image_cache_mb < 0:
        raise CaptureError(inputs.label, f"image_cache_mb must be >= 0, got {data.image_cache_mb}")
    scene = load_scene(
        inputs.capture, inputs.label, data.resolution_scale, data.max_points or None, data.image_cache_mb
    )
    if len(scene.points) == 0 and data.triangulate == "auto":
        with tempfile.TemporaryDirectory(prefix="capture3d-triangulate-") as work:
            scene = triangulate_known_poses(scene, Path(work), inputs.label, max_image_size=1024)
        if data.max_points and len(scene.points) > data.max_points:
            keep = np.random.default_rng(0).choice(len(scene.points), data.max_points, replace=False)
            scene = dataclasses.replace(scene, points=scene.points[keep], colors=scene.colors[keep])
    train_idx, test_idx = holdout_split(len(scene.views), data.holdout_every)
    if len(test_idx) == 0 or len(train_idx) < 2:
        raise CaptureError(
            inputs.label,
            f"{len(scene.views)} views are too few to hold out every {data.holdout_every}th and still train",
        )
    return FitData(scene, scene.subset(train_idx), scene.subset(test_idx))


def write_heldout(folder: Path, renders: Sequence[torch.Tensor], test: Sequence[PosedView]) -> list[dict[str, Any]]:
    """Side-by-side PNGs (render | photo) of the held-out views into ``folder``; returns the scores."""
    folder.mkdir(parents=True, exist_ok=True)
    for img, view in zip(renders, test):
        write_side_by_side(folder / f"{Path(view.name).stem}.png", img, view)
    return score_views(renders, test)


def write_orbit(
    folder: Path,
    views: Sequence[PosedView],
    num_frames: int,
    render_pose: Callable[[np.ndarray, np.ndarray, int, int], torch.Tensor],
) -> int:
    """Render ``num_frames`` orbit frames (PNG sequence + ``orbit.gif``); returns the count."""
    if num_frames <= 0:
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    ref = views[0]
    frames = []
    for i, pose in enumerate(orbit_poses(views, num_frames)):
        img = render_pose(ref.K, pose, ref.width, ref.height)
        write_png(folder / f"frame_{i:03d}.png", img)
        frames.append(img)
    write_gif(folder / "orbit.gif", frames)
    return len(frames)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch on CUDA, else the process's peak resident set size, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def nvs_summary(method: str, out: Path) -> dict[str, float]:
    """``{<method>_psnr, <method>_ssim}`` from a fit's ``metrics.json`` (for status tables)."""
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    return {f"{method}_psnr": metrics["psnr"], f"{method}_ssim": metrics["ssim"]}
