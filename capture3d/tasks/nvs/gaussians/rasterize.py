"""Tile-based alpha compositing of projected Gaussians in pure PyTorch (the CPU backend).

Inputs: a :class:`~capture3d.tasks.nvs.gaussians.project.Projection` of N Gaussians, their colours
(N, C) and opacities (N,), the image size, and a background colour (C,). Outputs: the image
(H, W, C) and its accumulated alpha (H, W), differentiable through autograd with respect to the
2D means, conics, colours and opacities.

How it works (the algorithm of Kerbl et al. 2023, vectorised instead of one thread per pixel):
the image is cut into ``tile`` x ``tile`` tiles; every visible Gaussian is paired with each tile
its footprint's bounding box touches; the pairs are sorted by (tile, depth) with one int64 key;
each pair evaluates its Gaussian on the tile's pixels -> alpha = min(0.999, o exp(-power)),
skipped below 1/255 (gsplat's rules). Front-to-back transmittance inside each tile is an
exclusive cumulative sum of log(1 - alpha) over the tile's pairs (float64), for many tiles at
once. As in gsplat, a pixel stops at the Gaussian that would push its transmittance to 1e-4 or
below. The compositing and its hand-written backward are in
:mod:`capture3d.tasks.nvs.gaussians.composite`; work is (number of pairs) x tile^2, memory a chunk.
"""

from __future__ import annotations

import logging

import torch

from capture3d.tasks.nvs.gaussians.composite import composite_tiles
from capture3d.tasks.nvs.gaussians.project import Projection

logger = logging.getLogger(__name__)

DEFAULT_TILE = 8


def tile_pairs(proj: Projection, width: int, height: int, tile: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(gaussian index (P,), tile index (P,)) of every footprint/tile overlap, sorted by tile then depth."""
    tiles_x, tiles_y = (width + tile - 1) // tile, (height + tile - 1) // tile
    with torch.no_grad():
        idx = proj.visible.nonzero().squeeze(1)  # (V,)
        m, e = proj.means2d.detach()[idx], proj.extents[idx]
        # pixels whose centre (i + 0.5) lies within [m - e, m + e]
        px0 = torch.ceil(m[:, 0] - e[:, 0] - 0.5).clamp(0, width - 1).long()
        px1 = torch.floor(m[:, 0] + e[:, 0] - 0.5).clamp(0, width - 1).long()
        py0 = torch.ceil(m[:, 1] - e[:, 1] - 0.5).clamp(0, height - 1).long()
        py1 = torch.floor(m[:, 1] + e[:, 1] - 0.5).clamp(0, height - 1).long()
        tx0, tx1, ty0, ty1 = px0 // tile, px1 // tile, py0 // tile, py1 // tile
        nx, ny = (tx1 - tx0 + 1).clamp_min(0), (ty1 - ty0 + 1).clamp_min(0)
        ok = (px1 >= px0) & (py1 >= py0)
        counts = torch.where(ok, nx * ny, torch.zeros_like(nx))
        total = int(counts.sum())
        gid = torch.repeat_interleave(idx, counts)
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        local = torch.arange(total, device=idx.device) - first
        sel = torch.repeat_interleave(torch.arange(len(idx), device=idx.device), counts)
        wx = nx[sel]
        tile_id = (ty0[sel] + local // wx) * tiles_x + tx0[sel] + local % wx
        n = proj.depths.shape[0]
        rank = torch.empty(n, dtype=torch.long, device=idx.device)
        rank[torch.argsort(proj.depths.detach())] = torch.arange(n, device=idx.device)
        order = torch.argsort(tile_id * n + rank[gid])
    return gid[order], tile_id[order], tiles_x, tiles_y


def rasterize(
    proj: Projection,
    colors: torch.Tensor,  # (N, C)
    opacities: torch.Tensor,  # (N,)
    width: int,
    height: int,
    background: torch.Tensor | None = None,  # (C,)
    tile: int = DEFAULT_TILE,
    compiled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite the Gaussians front to back; returns image (H, W, C) and alpha (H, W).

    ``compiled`` runs the per-chunk math through ``torch.compile`` (same results, faster on the CPU).
    """
    gid, tid, tiles_x, tiles_y = tile_pairs(proj, width, height, tile)
    rgb_tiles, acc_tiles = composite_tiles(
        proj.means2d, proj.conics, colors, opacities, gid, tid, tiles_x, tiles_x * tiles_y, tile, compiled
    )
    image = _untile(rgb_tiles, tiles_x, tiles_y, tile)[:height, :width]  # (H, W, C)
    acc = _untile(acc_tiles[..., None], tiles_x, tiles_y, tile)[:height, :width, 0]  # (H, W)
    if background is not None:
        image = image + (1.0 - acc)[..., None] * background
    return image, acc


def _untile(x: torch.Tensor, tiles_x: int, tiles_y: int, tile: int) -> torch.Tensor:
    """(tiles_y * tiles_x, tile * tile, C) -> (tiles_y * tile, tiles_x * tile, C)."""
    c = x.shape[-1]
    return x.reshape(tiles_y, tiles_x, tile, tile, c).permute(0, 2, 1, 3, 4).reshape(tiles_y * tile, tiles_x * tile, c)
