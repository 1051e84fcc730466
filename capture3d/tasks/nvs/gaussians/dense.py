"""Dense reference renderer: every Gaussian against every pixel, in float64.

Inputs and outputs as :func:`capture3d.tasks.nvs.gaussians.rasterize.rasterize` (a projection,
colours, opacities, size, background). Independent of the tile rasterizer: no tiles, no bounding
boxes, no segmented sums -- a global depth sort and a cumulative product per pixel, with the same
compositing rules (alpha clamped at 0.999, skipped below 1/255, a pixel stops where its
transmittance would fall to 1e-4). Cost O(H W N): for tests and the benchmark only.
"""

from __future__ import annotations

import logging

import torch

from capture3d.tasks.nvs.gaussians.composite import ALPHA_MAX, T_MIN
from capture3d.tasks.nvs.gaussians.project import ALPHA_MIN, Projection

logger = logging.getLogger(__name__)


def rasterize_dense(
    proj: Projection,
    colors: torch.Tensor,  # (N, C)
    opacities: torch.Tensor,  # (N,)
    width: int,
    height: int,
    background: torch.Tensor | None = None,  # (C,)
    dtype: torch.dtype = torch.float64,
    rows: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (H, W, C) and alpha (H, W) in ``dtype``; with ``rows`` = (r0, r1) only those image rows."""
    keep = proj.visible & (proj.depths > 0)
    order = torch.argsort(proj.depths.detach()[keep])
    m = proj.means2d[keep][order].to(dtype)  # (G, 2)
    con = proj.conics[keep][order].to(dtype)  # (G, 3)
    op = opacities[keep][order].to(dtype)  # (G,)
    col = colors[keep][order].to(dtype)  # (G, C)
    r0, r1 = rows if rows is not None else (0, height)
    ys, xs = torch.meshgrid(
        torch.arange(r0, r1, dtype=dtype) + 0.5, torch.arange(width, dtype=dtype) + 0.5, indexing="ij"
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # (HW, 2)
    dx = pix[:, None, 0] - m[None, :, 0]  # (HW, G)
    dy = pix[:, None, 1] - m[None, :, 1]
    power = 0.5 * (con[:, 0] * dx**2 + con[:, 2] * dy**2) + con[:, 1] * dx * dy
    alpha = torch.clamp(op * torch.exp(-power), max=ALPHA_MAX)
    alpha = torch.where((alpha >= ALPHA_MIN) & (power >= 0), alpha, torch.zeros_like(alpha))
    t_after = torch.cumprod(1.0 - alpha, dim=1)  # (HW, G)
    t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], 1)
    w = t_before * alpha * (t_after > T_MIN).to(dtype)
    image = w @ col  # (HW, C)
    acc = w.sum(1)
    if background is not None:
        image = image + (1 - acc)[:, None] * background.to(dtype)
    return image.reshape(r1 - r0, width, -1), acc.reshape(r1 - r0, width)
