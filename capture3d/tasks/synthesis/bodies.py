"""Synthetic body captures: random plausible poses and shapes seen by known cameras.

Inputs: a :class:`BodyModel`, counts, image size, noise and a seed. Outputs
(:class:`SyntheticBodies`): the ground-truth :class:`BodyPose`, 3D keypoints (B, K, 3), cameras
(V per person: world -> camera rotations and translations, one intrinsic matrix), and the
projected keypoints (B, V, K, 2) with Gaussian pixel noise. Deterministic from the seed.

Poses are drawn per joint inside the model's joint-limit boxes around natural ranges: knees and
elbows flexed by a uniform angle in their bending direction, hips and shoulders swung, the rest
small. People stand upright, turned by a random yaw, 3-4.5 m in front of the first camera; extra
views look at the person from around it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from capture3d.tasks.body.camera import focal_from_fov, intrinsics
from capture3d.tasks.body.fit import BodyObservations
from capture3d.tasks.body.model import BodyModel, BodyPose
from capture3d.tasks.body.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from capture3d.tasks.cameras import look_at

logger = logging.getLogger(__name__)


@dataclass
class SyntheticBodies:
    """Ground truth and observations of ``B`` synthetic people in ``V`` views each."""

    pose: BodyPose  # ground-truth parameters (B rows)
    names: tuple[str, ...]  # keypoint names (K)
    points: np.ndarray  # (B, K, 3) ground-truth 3D keypoints, metres, world frame
    rot: np.ndarray  # (B, V, 3, 3) world -> camera
    trans: np.ndarray  # (B, V, 3)
    k: np.ndarray  # (3, 3) intrinsics shared by all views
    xy: np.ndarray  # (B, V, K, 2) noisy projections, pixels
    xy_clean: np.ndarray  # (B, V, K, 2) exact projections
    width: int
    height: int


def random_poses(
    model: BodyModel, count: int, rng: np.random.Generator, *, yaw_deg: float = 60.0, shape_sigma: float = 0.5
) -> BodyPose:
    """``count`` random upright bodies at the origin (model frame rotated so z is up in the world
    whose y axis points down: world = OpenCV camera axes of a level camera)."""
    joints = model.pose_joint_names
    body = rng.normal(0.0, 0.12, size=(count, len(joints), 3))
    limits = model.joint_limits
    for limit in model.bend_limits:
        j = joints.index(limit.joint)
        body[:, j, limit.axis] = limit.sign * rng.uniform(0.0, 1.6, size=count)
    for name, box in limits.items():
        if name in joints:
            j = joints.index(name)
            lo, hi = np.array(box)[:, 0], np.array(box)[:, 1]
            body[:, j] = np.clip(body[:, j], lo, hi)
    for name in joints:  # hips and shoulders swing further
        if name.startswith(("upperleg01", "upperarm01", "left_hip", "right_hip", "left_shoulder", "right_shoulder")):
            j = joints.index(name)
            body[:, j] += rng.normal(0.0, 0.35, size=(count, 3))
    upright = torch.tensor([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]], dtype=torch.float64)
    yaw = np.radians(rng.uniform(-yaw_deg, yaw_deg, size=count))
    lean = rng.normal(0.0, 0.08, size=(count, 2))
    spin = torch.from_numpy(np.stack([lean[:, 0], yaw, lean[:, 1]], 1))  # about camera x, y, z
    orient = matrix_to_axis_angle(axis_angle_to_matrix(spin) @ upright)
    cast = {"dtype": model.dtype, "device": model.device}
    return BodyPose(
        global_orient=orient.to(**cast),
        body_pose=torch.from_numpy(body).to(**cast),
        shape=torch.from_numpy(rng.normal(0.0, shape_sigma, size=(count, model.num_shape))).to(**cast),
        transl=torch.zeros(count, 3, **cast),
    )


def synthesize_bodies(
    model: BodyModel,
    *,
    count: int,
    views: int = 1,
    width: int = 640,
    height: int = 480,
    fov_deg: float = 55.0,
    noise_px: float = 2.0,
    names: tuple[str, ...],
    seed: int = 0,
    view_spread_deg: float = 120.0,
) -> SyntheticBodies:
    """``count`` random people, each seen by ``views`` cameras (the first looks straight at them,
    the others are spread over ``view_spread_deg`` around them at the same distance)."""
    rng = np.random.default_rng(seed)
    pose = random_poses(model, count, rng)
    distance = rng.uniform(3.0, 4.5, size=count)
    offset = np.stack([rng.uniform(-0.4, 0.4, count), rng.uniform(-0.1, 0.2, count), distance], 1)
    pose.transl = torch.from_numpy(offset).to(dtype=model.dtype, device=model.device)
    with torch.no_grad():
        points = model.keypoints(pose, names).to(torch.float64).cpu().numpy()
    focal = focal_from_fov(width, height, fov_deg)
    k = intrinsics(width, height, focal)
    rot = np.zeros((count, views, 3, 3))
    trans = np.zeros((count, views, 3))
    angles = [0.0] + [
        view_spread_deg * (2 * (v - 1) / max(views - 2, 1) - 1) if views > 2 else view_spread_deg / 2
        for v in range(1, views)
    ]
    for b in range(count):
        target = offset[b] * np.array([1.0, 0.0, 1.0]) + np.array([0.0, offset[b, 1], 0.0])
        for v, angle in enumerate(angles):
            a = math.radians(angle)
            rel = np.array([-math.sin(a), 0.0, -math.cos(a)]) * distance[b]
            pose_m = look_at(target + rel, target, up=np.array([0.0, -1.0, 0.0]))  # level camera, world y down
            rot[b, v], trans[b, v] = pose_m[:3, :3], pose_m[:3, 3]
    cam = np.einsum("bvij,bkj->bvki", rot, points) + trans[:, :, None, :]
    clean = np.einsum("ij,bvkj->bvki", k[:2, :2], cam[..., :2] / cam[..., 2:3]) + k[:2, 2]
    noisy = clean + rng.normal(0.0, noise_px, size=clean.shape)
    return SyntheticBodies(
        pose=pose,
        names=tuple(names),
        points=points,
        rot=rot,
        trans=trans,
        k=k,
        xy=noisy,
        xy_clean=clean,
        width=width,
        height=height,
    )


def synthesize_sequence(
    model: BodyModel,
    *,
    frames: int,
    names: tuple[str, ...],
    seed: int = 0,
    period: int = 40,
    noise_px: float = 1.0,
    width: int = 640,
    height: int = 480,
    fov_deg: float = 55.0,
) -> SyntheticBodies:
    """One person filmed for ``frames`` frames by a level camera at the origin: the pose swings
    between two random poses (one cycle per ``period`` frames, half-way at most) while the body
    sways 0.5 m to each side (one cycle per 600 frames), 3.5 m away (``SyntheticBodies`` rows are frames, V = 1).
    Built in blocks, so 10,000 frames need little memory beyond the arrays returned."""
    rng = np.random.default_rng(seed)
    ends = random_poses(model, 2, rng)
    a, b = ends.index([0]), ends.index([1])
    focal = focal_from_fov(width, height, fov_deg)
    k = intrinsics(width, height, focal)
    points = np.zeros((frames, len(names), 3))
    pose_rows: list[BodyPose] = []
    for start in range(0, frames, 1024):
        t = torch.arange(start, min(start + 1024, frames), dtype=model.dtype)
        s = (0.25 - 0.25 * torch.cos(t * 2 * math.pi / period))[:, None, None]
        sway = 0.5 * torch.sin(t * 2 * math.pi / 600)
        drift = torch.stack([sway, torch.full_like(t, 0.1), torch.full_like(t, 3.5)], 1)
        n = len(t)
        pose = BodyPose(
            a.global_orient.expand(n, 3).clone(),
            a.body_pose + s * (b.body_pose - a.body_pose),
            a.shape.expand(n, -1).clone(),
            drift.to(model.device),
        )
        with torch.no_grad():
            points[start : start + n] = model.keypoints(pose, names).to(torch.float64).cpu().numpy()
        pose_rows.append(pose.detach())
    clean = (points[..., :2] / points[..., 2:3] * k[0, 0] + k[:2, 2])[:, None]  # (F, 1, K, 2)
    noisy = clean + rng.normal(0.0, noise_px, size=clean.shape)
    full = BodyPose(*(torch.cat([p.tensors()[i] for p in pose_rows]) for i in range(4)))
    return SyntheticBodies(
        pose=full,
        names=tuple(names),
        points=points,
        rot=np.broadcast_to(np.eye(3), (frames, 1, 3, 3)).copy(),
        trans=np.zeros((frames, 1, 3)),
        k=k,
        xy=noisy,
        xy_clean=clean,
        width=width,
        height=height,
    )


def observations(
    syn: SyntheticBodies, *, rows: slice = slice(None), box_px: float = 300.0, sequence: bool = False
) -> BodyObservations:
    """The fit's observations of ``syn``'s ``rows`` (float32, every keypoint confident, residuals
    per ``box_px`` pixels); ``sequence``: consecutive rows are linked as frames of one track."""
    count, views = syn.xy[rows].shape[:2]

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a[rows]), dtype=torch.float32)

    pairs = torch.stack([torch.arange(count - 1), torch.arange(1, count)], 1) if sequence else None
    return BodyObservations(
        syn.names,
        t(syn.xy),
        torch.ones(count, views, len(syn.names)),
        t(syn.rot),
        t(syn.trans),
        torch.as_tensor(syn.k, dtype=torch.float32).expand(count, views, 3, 3),
        torch.full((count, views), box_px),
        sequence_pairs=pairs if pairs is not None else torch.zeros(0, 2, dtype=torch.long),
    )
