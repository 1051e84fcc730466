"""Real spherical harmonics up to degree 3, in the basis order and signs 3DGS and gsplat use.

Inputs: view directions (..., 3) (normalised here) and coefficients (..., K, 3) with K >= (d+1)^2.
Output: colours (..., 3) = sum_k Y_k(dir) * coeff_k (3DGS then adds 0.5 and clamps at 0).
The constants are the usual real-SH normalisations (Sloan, "Stupid SH tricks", 2008).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """(degree + 1)^2 coefficients per colour channel."""
    return (degree + 1) ** 2


def sh_bases(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Basis values (..., (degree+1)^2) at unit directions ``dirs`` (..., 3)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Colours (..., 3) of SH coefficients (..., K, 3) seen along ``dirs`` (..., 3), using degree <= 3."""
    n = num_sh_bases(degree)
    if coeffs.shape[-2] < n:
        raise ValueError(f"SH degree {degree} needs {n} coefficients, got {coeffs.shape[-2]}")
    basis = sh_bases(degree, F.normalize(dirs, dim=-1))  # (..., n)
    return (basis[..., None] * coeffs[..., :n, :]).sum(-2)


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """DC coefficient giving colour ``rgb`` (after 3DGS's +0.5 offset): (rgb - 0.5) / C0."""
    return (rgb - 0.5) / SH_C0
