"""EWA projection of 3D Gaussians into a pinhole camera (Zwicker et al. 2002; Kerbl et al. 2023).

Inputs: world-space means (N, 3), unit-or-not quaternions (N, 4) in (w, x, y, z) order, scales
(N, 3) (not log), opacities (N,) in [0, 1], a cam_from_world ``viewmat`` (4, 4) and intrinsics
``K`` (3, 3) for a ``width`` x ``height`` image (pixel centres at integer + 0.5, COLMAP/gsplat).
Output: :class:`Projection` -- 2D means, conics (the upper triangle of the inverse 2D
covariance), depths, and each Gaussian's screen extent.

The math is gsplat's (``fully_fused_projection``): camera-space covariance ``W Sigma W^T``, the
perspective Jacobian evaluated at the mean with x/z and y/z clamped to 1.3x the field of view,
and a 0.3 px^2 low-pass added to the 2D covariance. The extent differs on purpose: instead of
3 sigma it is the exact bounding box of the ellipse where ``opacity * exp(-power) >= 1/255``,
i.e. where the rasterizer would not skip the Gaussian, so tile culling never changes the image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

EPS_2D = 0.3  # px^2 low-pass filter (3DGS, gsplat)
NEAR_PLANE = 0.01
ALPHA_MIN = 1.0 / 255.0  # contributions below this are skipped


@dataclass(frozen=True)
class Projection:
    """A camera's view of N Gaussians.

    means2d: (N, 2) pixels; conics: (N, 3) = (a, b, c) with power = 0.5 (a dx^2 + c dy^2) + b dx dy;
    depths: (N,) camera z; extents: (N, 2) half-widths in pixels of the footprint's bounding box;
    visible: (N,) bool (in front of the camera, footprint inside the image, opacity >= 1/255).
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    extents: torch.Tensor
    visible: torch.Tensor

    @property
    def radii(self) -> torch.Tensor:
        """(N,) the larger half-extent in pixels, 0 for culled Gaussians (3DGS's ``radii``)."""
        return torch.where(self.visible, self.extents.amax(-1), torch.zeros_like(self.extents[:, 0]))


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """(N, 4) quaternions (w, x, y, z), normalised here -> (N, 3, 3) rotation matrices."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))


def covariance(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World covariances (N, 3, 3) = R S S^T R^T from quaternions (N, 4) and scales (N, 3)."""
    M = quat_to_rotmat(quats) * scales[:, None, :]  # (N, 3, 3) = R S
    return M @ M.transpose(1, 2)


def project(
    means: torch.Tensor,  # (N, 3)
    quats: torch.Tensor,  # (N, 4)
    scales: torch.Tensor,  # (N, 3)
    opacities: torch.Tensor,  # (N,)
    viewmat: torch.Tensor,  # (4, 4)
    K: torch.Tensor,  # (3, 3)
    width: int,
    height: int,
    eps2d: float = EPS_2D,
    near: float = NEAR_PLANE,
) -> Projection:
    """Project N Gaussians into one camera (differentiable in every input)."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ R.T + t  # (N, 3) camera coordinates
    cov = R @ covariance(quats, scales) @ R.T  # (N, 3, 3)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    x, y, z = p.unbind(-1)
    z_safe = torch.where(z > near, z, torch.full_like(z, 1.0))
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    tx = z_safe * torch.clamp(x / z_safe, -lim_x_neg, lim_x_pos)
    ty = z_safe * torch.clamp(y / z_safe, -lim_y_neg, lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z_safe, zero, -fx * tx / z_safe**2, zero, fy / z_safe, -fy * ty / z_safe**2], -1).reshape(
        -1, 2, 3
    )  # (N, 2, 3)
    cov2d = J @ cov @ J.transpose(1, 2) + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    a, b, c = cov2d[:, 0, 0], 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0]), cov2d[:, 1, 1]
    det = (a * c - b * b).clamp_min(1e-12)
    conics = torch.stack([c / det, -b / det, a / det], -1)  # (N, 3)
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], -1)  # (N, 2)
    with torch.no_grad():
        tau = torch.log((opacities.detach() / ALPHA_MIN).clamp_min(1e-12))  # power threshold
        r2 = 2.0 * tau.clamp_min(0.0)
        extents = torch.stack([torch.sqrt(r2 * a.detach()), torch.sqrt(r2 * c.detach())], -1)  # (N, 2)
        m = means2d.detach()
        inside = (
            (m[:, 0] + extents[:, 0] > 0)
            & (m[:, 0] - extents[:, 0] < width)
            & (m[:, 1] + extents[:, 1] > 0)
            & (m[:, 1] - extents[:, 1] < height)
        )
        visible = (z.detach() > near) & (tau > 0) & inside & torch.isfinite(m).all(-1)
    return Projection(means2d, conics, z, extents, visible)


def fov_focal(fov_deg: float, size: int) -> float:
    """Focal length in pixels of a field of view across ``size`` pixels."""
    return 0.5 * size / math.tan(math.radians(fov_deg) / 2)
