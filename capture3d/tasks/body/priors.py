"""SMPLify's robust data term and the priors of body fitting (batched, differentiable).

Inputs are torch tensors with a leading batch dimension B; every function returns a (B,) tensor,
so a batch of independent people is one optimisation whose loss is the sum of the rows.

- Geman-McClure robust error (Geman & McClure 1987, as in SMPLify, Bogo et al. 2016);
- SMPLify's bending prior ``exp(-sign * angle)`` on elbows and knees;
- joint-limit boxes (squared hinge outside per-axis ranges) and a quadratic pose prior;
- a Gaussian shape prior;
- an interpenetration penalty between capsules around non-adjacent limbs and the torso;
- a temporal smoothness term between consecutive frames of a sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from capture3d.tasks.body.model import BendLimit

logger = logging.getLogger(__name__)


def geman_mcclure(sq_residual: torch.Tensor, sigma: float) -> torch.Tensor:
    """rho(r) = sigma^2 r^2 / (sigma^2 + r^2), from squared residuals (any shape)."""
    s2 = sigma * sigma
    return s2 * sq_residual / (s2 + sq_residual)


def bending_prior(body_pose: torch.Tensor, limits: Sequence[BendLimit], joint_names: Sequence[str]) -> torch.Tensor:
    """(B,) sum over hinge joints of exp(-sign * angle): SMPLify's elbow/knee prior.
    body_pose: (B, J, 3)."""
    total = body_pose.new_zeros(body_pose.shape[0])
    for limit in limits:
        if limit.joint in joint_names:
            angle = body_pose[:, joint_names.index(limit.joint), limit.axis]
            total = total + torch.exp(-limit.sign * angle)
    return total


def joint_limit_prior(
    body_pose: torch.Tensor, limits: Mapping[str, Sequence[Sequence[float]]], joint_names: Sequence[str]
) -> torch.Tensor:
    """(B,) squared distance of each limited joint's axis-angle components outside [lo, hi].
    body_pose: (B, J, 3); limits: joint -> ((lo_x, hi_x), (lo_y, hi_y), (lo_z, hi_z)) radians."""
    rows = [i for i, n in enumerate(joint_names) if n in limits]
    if not rows:
        return body_pose.new_zeros(body_pose.shape[0])
    box = torch.tensor(
        [limits[joint_names[i]] for i in rows], dtype=body_pose.dtype, device=body_pose.device
    )  # (L, 3, 2)
    angles = body_pose[:, rows]  # (B, L, 3)
    below = torch.relu(box[..., 0] - angles)
    above = torch.relu(angles - box[..., 1])
    return (below.square() + above.square()).sum((1, 2))


def quadratic_pose_prior(body_pose: torch.Tensor, sigma: Sequence[float] = ()) -> torch.Tensor:
    """(B,) sum of squared axis-angle components, each joint's divided by its spread ``sigma``
    (J values, radians; empty: 1): a zero-mean Gaussian on the pose."""
    if sigma:
        scale = torch.tensor(sigma, dtype=body_pose.dtype, device=body_pose.device)[None, :, None]
        body_pose = body_pose / scale
    return body_pose.square().sum((1, 2))


def shape_prior(shape: torch.Tensor) -> torch.Tensor:
    """(B,) squared norm of the shape coefficients (prior N(0, I))."""
    return shape.square().sum(1)


# Capsules for the interpenetration penalty: (name, first keypoint, second keypoint, radius m).
CAPSULES = (
    ("torso", "neck", "mid_hip", 0.13),
    ("left_upper_arm", "left_shoulder", "left_elbow", 0.045),
    ("left_forearm", "left_elbow", "left_wrist", 0.04),
    ("right_upper_arm", "right_shoulder", "right_elbow", 0.045),
    ("right_forearm", "right_elbow", "right_wrist", 0.04),
    ("left_thigh", "left_hip", "left_knee", 0.07),
    ("left_shin", "left_knee", "left_ankle", 0.05),
    ("right_thigh", "right_hip", "right_knee", 0.07),
    ("right_shin", "right_knee", "right_ankle", 0.05),
)
# Pairs that may not overlap (adjacent segments and torso-to-attached-limb are allowed).
COLLIDING_PAIRS = (
    ("torso", "left_forearm"),
    ("torso", "right_forearm"),
    ("left_thigh", "right_thigh"),
    ("left_shin", "right_shin"),
    ("left_thigh", "right_shin"),
    ("right_thigh", "left_shin"),
    ("left_forearm", "right_forearm"),
    ("left_forearm", "left_thigh"),
    ("right_forearm", "right_thigh"),
)


def capsule_keypoints() -> tuple[str, ...]:
    """The keypoint names :func:`interpenetration_penalty` needs."""
    names: list[str] = []
    for _, a, b, _ in CAPSULES:
        names += [n for n in (a, b) if n not in names]
    return tuple(names)


def interpenetration_penalty(points: torch.Tensor, names: Sequence[str], samples: int = 6) -> torch.Tensor:
    """(B,) sum over non-adjacent capsule pairs of relu(r_a + r_b - d)^2 over sampled axis points.

    points: (B, K, 3) keypoints in metres named by ``names`` (must include
    :func:`capsule_keypoints`). A coarse, cheap stand-in for SMPLify-X's mesh-based penalty."""
    t = torch.linspace(0.0, 1.0, samples, dtype=points.dtype, device=points.device)[None, :, None]
    axes = {}
    for cap, a, b, radius in CAPSULES:
        pa, pb = points[:, names.index(a)], points[:, names.index(b)]
        axes[cap] = (pa[:, None] + t * (pb - pa)[:, None], radius)  # (B, S, 3)
    total = points.new_zeros(points.shape[0])
    for first, second in COLLIDING_PAIRS:
        (sa, ra), (sb, rb) = axes[first], axes[second]
        dist = torch.cdist(sa, sb)  # (B, S, S)
        total = total + torch.relu(ra + rb - dist).square().sum((1, 2))
    return total


def smoothness(values: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """(B,) squared differences between consecutive frames, charged to the earlier frame.

    values: (B, ...) per-row quantity; pairs: (P, 2) long rows (earlier, later) of the same sequence."""
    total = values.new_zeros(values.shape[0])
    if pairs.numel() == 0:
        return total
    diff = (values[pairs[:, 1]] - values[pairs[:, 0]]).reshape(len(pairs), -1).square().sum(1)
    return total.index_add(0, pairs[:, 0], diff)
