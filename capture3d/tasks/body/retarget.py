"""Retarget motion-capture joint positions onto Anny's posable bones.

Inputs: an :class:`~capture3d.tasks.body.anny_model.AnnyBody`, joint positions (N, J, 3) in metres
(any up axis and units of length: only directions are used) named by a mocap skeleton, e.g. the
21 joints of ``mocap_cmu/joints21_30fps.npz``. Output: :class:`Retargeted`, Anny's ``body_pose``
(N, P, 3) and ``global_orient`` (N, 3) per frame, with the angle between each mocap segment and
the posed Anny segment.

Two rigs never share bone lengths or rest poses, so the fit matches *segment directions*:
for each segment (parent joint -> child joint) of :data:`SEGMENTS`, the unit vector between the
mocap joints against the unit vector between the heads of the corresponding Anny bones
(:data:`ANNY_JOINT_BONES`; a bone's head is its joint centre). Rotations the joint positions do not
determine (a forearm's or foot's twist about its own axis, a straight arm's twist, how the spine's
total bend shares out over its four bones) are held near the rest pose by a small quadratic
penalty; SMPLify's bending prior keeps elbows and knees from hyperextending into an equivalent
flipped solution. Adam, all frames of a batch at once, each its own row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from capture3d.progress import report as report_progress
from capture3d.tasks.body import priors
from capture3d.tasks.body.anny_model import AnnyBody
from capture3d.tasks.body.model import BodyPose
from capture3d.tasks.body.rotations import matrix_to_axis_angle

logger = logging.getLogger(__name__)

ANNY_JOINT_BONES: dict[str, str] = {
    "pelvis": "root",
    "left_hip": "upperleg01.L",
    "left_knee": "lowerleg01.L",
    "left_ankle": "foot.L",
    "left_toe": "toe3-1.L",
    "right_hip": "upperleg01.R",
    "right_knee": "lowerleg01.R",
    "right_ankle": "foot.R",
    "right_toe": "toe3-1.R",
    "neck": "neck01",
    "head": "head",
    "left_shoulder": "upperarm01.L",
    "left_elbow": "lowerarm01.L",
    "left_wrist": "wrist.L",
    "right_shoulder": "upperarm01.R",
    "right_elbow": "lowerarm01.R",
    "right_wrist": "wrist.R",
}
"""mocap joint name -> the Anny bone whose head is that joint. The mid-spine joints and the collars
are left out: the rigs place them differently, and matching their directions bent Anny's upper
spine backwards by 0.2-0.4 rad in a plain walk (the torso's direction is pelvis -> neck; how its
bend shares out over the spine bones is left to the rest-pose penalty)"""

SEGMENTS: tuple[tuple[str, str, float], ...] = (
    ("left_hip", "left_knee", 1.0),
    ("left_knee", "left_ankle", 1.0),
    ("left_ankle", "left_toe", 0.5),
    ("right_hip", "right_knee", 1.0),
    ("right_knee", "right_ankle", 1.0),
    ("right_ankle", "right_toe", 0.5),
    ("right_hip", "left_hip", 1.0),
    ("pelvis", "neck", 1.0),
    ("neck", "head", 0.5),
    ("right_shoulder", "left_shoulder", 1.0),
    ("left_shoulder", "left_elbow", 1.0),
    ("left_elbow", "left_wrist", 1.0),
    ("right_shoulder", "right_elbow", 1.0),
    ("right_elbow", "right_wrist", 1.0),
)
"""(parent joint, child joint, weight): the directions matched"""

_ALIGN_JOINTS = ("pelvis", "left_hip", "right_hip", "neck", "left_shoulder", "right_shoulder")


@dataclass(frozen=True)
class Retargeted:
    """Anny parameters per mocap frame.

    body_pose (N, P, 3) and global_orient (N, 3) axis-angle (Anny's ``local-ref`` bones, model order);
    segment_error_deg (N, S): angle between each mocap segment of :data:`SEGMENTS` and Anny's."""

    body_pose: np.ndarray
    global_orient: np.ndarray
    segment_error_deg: np.ndarray


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)


def _segment_directions(points: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """(B, S, 3) unit vectors of :data:`SEGMENTS` from points (B, J, 3) named by ``names``."""
    parent = [names.index(a) for a, _, _ in SEGMENTS]
    child = [names.index(b) for _, b, _ in SEGMENTS]
    return _unit(points[:, child] - points[:, parent])


def _initial_orientation(rest: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations taking the rest-pose torso joints (A, 3) onto each frame's (N, A, 3)
    (Kabsch on centred points; scale and position do not matter)."""
    src = rest - rest.mean(0)
    dst = joints - joints.mean(1, keepdims=True)
    cov = np.einsum("nai,aj->nij", dst, src)
    u, _, vt = np.linalg.svd(cov)
    fix = np.ones((len(joints), 3))
    fix[:, 2] = np.sign(np.linalg.det(u @ vt))
    return (u * fix[:, None, :]) @ vt


def retarget(
    model: AnnyBody,
    joints: np.ndarray,
    names: Sequence[str],
    *,
    iterations: int = 300,
    learning_rate: float = 0.05,
    rest_weight: float = 0.02,
    bend_weight: float = 0.02,
    batch_size: int = 2048,
) -> Retargeted:
    """Anny poses whose segment directions match ``joints`` (N, J, 3) named ``names`` (which must
    include every joint of :data:`SEGMENTS`). The mean body shape is used throughout."""
    missing = sorted({j for a, b, _ in SEGMENTS for j in (a, b)} - set(names))
    if missing:
        raise ValueError(f"mocap joints {missing} are needed for retargeting")
    used = list(dict.fromkeys(j for a, b, _ in SEGMENTS for j in (a, b)))
    bones = [ANNY_JOINT_BONES[j] for j in used]
    cast = {"dtype": model.dtype, "device": model.device}
    weights = torch.tensor([w for _, _, w in SEGMENTS], **cast)
    with torch.no_grad():
        rest = model.bone_heads(model.zero_pose(1), [ANNY_JOINT_BONES[j] for j in _ALIGN_JOINTS])[0]
    align = [list(names).index(j) for j in _ALIGN_JOINTS]
    poses, orients, errors = [], [], []
    total = len(joints)
    for start in range(0, total, batch_size):
        chunk = np.asarray(joints[start : start + batch_size], dtype=np.float64)
        target = _segment_directions(torch.as_tensor(chunk, **cast), list(names))  # (B, S, 3)
        init = _initial_orientation(rest.double().cpu().numpy(), chunk[:, align])
        pose = model.zero_pose(len(chunk))
        orient = matrix_to_axis_angle(torch.from_numpy(init)).to(**cast).requires_grad_()
        body = pose.body_pose.clone().requires_grad_()
        optimizer = torch.optim.Adam([orient, body], lr=learning_rate)
        for _ in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            heads = model.bone_heads(BodyPose(orient, body, pose.shape, pose.transl), bones)
            got = _segment_directions(heads, used)
            loss = (weights * (got - target).square().sum(-1)).sum(1)
            loss = loss + rest_weight * body.square().sum((1, 2))
            loss = loss + bend_weight * priors.bending_prior(body, model.bend_limits, model.pose_joint_names)
            loss.sum().backward()
            optimizer.step()
        with torch.no_grad():
            heads = model.bone_heads(BodyPose(orient, body, pose.shape, pose.transl), bones)
            cos = (_segment_directions(heads, used) * target).sum(-1).clamp(-1, 1)
        poses.append(body.detach().cpu().numpy())
        orients.append(orient.detach().cpu().numpy())
        errors.append(np.degrees(np.arccos(cos.cpu().numpy())))
        report_progress(logger, "retarget mocap frames", min(start + batch_size, total), total)
    return Retargeted(np.concatenate(poses), np.concatenate(orients), np.concatenate(errors))


def mirror_joints(joints: np.ndarray, names: Sequence[str], axis: int) -> np.ndarray:
    """(N, J, 3) the mirror image of ``joints`` across the plane normal to ``axis``, with left and
    right joints swapped: a valid pose of the other handedness (doubles a pose prior's data)."""
    out = joints.copy()
    out[..., axis] = -out[..., axis]
    swap = [
        names.index(n.replace("left_", "right_"))
        if n.startswith("left_")
        else names.index(n.replace("right_", "left_"))
        if n.startswith("right_")
        else i
        for i, n in enumerate(names)
    ]
    return out[:, swap]
