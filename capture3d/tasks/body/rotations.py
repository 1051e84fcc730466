"""Rotation helpers for body fitting (batched, differentiable, any leading dimensions).

Inputs and outputs are torch tensors: axis-angle vectors ``(..., 3)`` and rotation matrices
``(..., 3, 3)``.
"""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle -> (..., 3, 3) rotation matrices (Rodrigues; smooth at zero angle)."""
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < 1e-8
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(theta2_safe)
    # sin(t)/t and (1 - cos t)/t^2 with Taylor series near zero
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2_safe)
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*rotvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_axis_angle(rot: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle with angle in [0, pi] (not for autograd)."""
    rot = rot.detach().to(torch.float64)
    cos = (rot[..., 0, 0] + rot[..., 1, 1] + rot[..., 2, 2] - 1) / 2
    axis = torch.stack(
        [rot[..., 2, 1] - rot[..., 1, 2], rot[..., 0, 2] - rot[..., 2, 0], rot[..., 1, 0] - rot[..., 0, 1]], -1
    )  # 2 sin(angle) * unit axis
    sin = axis.norm(dim=-1) / 2
    angle = torch.atan2(sin, cos)  # accurate near 0 and pi, where acos(cos) loses half the digits
    out = axis * (angle / (2 * sin.clamp_min(1e-12)))[..., None]
    near_pi = angle > math.pi - 1e-4
    if near_pi.any():
        # |axis| ~ 2 (pi - angle) is too small there: take the axis from the largest column of
        # a a^T = ((R + R^T) / 2 - cos I) / (1 - cos), and its sign from the antisymmetric part.
        r, c = rot[near_pi], cos[near_pi][:, None, None]
        sym = ((r + r.transpose(-1, -2)) / 2 - c * torch.eye(3, dtype=rot.dtype)) / (1 - c)
        idx = torch.diagonal(sym, dim1=-2, dim2=-1).argmax(-1)
        col = sym[torch.arange(len(idx)), :, idx]
        col = col / col.norm(dim=-1, keepdim=True)
        flip = (col * axis[near_pi]).sum(-1) < 0
        col = torch.where(flip[:, None], -col, col)
        out[near_pi] = col * angle[near_pi][..., None]
    small = angle < 1e-8
    out[small] = 0.0
    return out
