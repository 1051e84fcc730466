"""NeRF radiance fields in pure PyTorch: positional encoding (Mildenhall et al. 2020) or a
multiresolution hash grid (Muller et al. 2022, Instant-NGP), both on the CPU and CUDA.

Inputs: a :class:`NerfModelConfig`. Outputs: :func:`build_nerf` gives a :class:`NerfModel` whose
``forward(points, dirs)`` takes points (N, 3) already in the model's box [-1, 1]^3 (the
renderer normalises world coordinates, see :mod:`capture3d.tasks.nvs.nerf_render`) and view
directions (N, 3) (any length; normalised here) and returns the volume density (N,) >= 0 and the
colour (N, 3) in [0, 1].

Network: encoding -> trunk MLP (``depth`` ReLU layers of ``width``, the encoding concatenated
again after layer ``depth // 2`` when ``skip``) -> one linear head giving the raw density and a
``geo_feat_dim`` feature; the colour head takes the feature and, when ``view_dependent``, the encoded
direction (``num_freqs_dir`` frequencies), through ``color_depth`` ReLU layers of ``color_width``
and a sigmoid. Density is ``softplus(raw - 1)`` (mip-NeRF's shift, which starts the field
nearly empty) or ``relu(raw)`` (the NeRF paper). The paper's network is ``encoding="positional",
width=256, depth=8, skip=True, geo_feat_dim=256, color_width=128, color_depth=1,
coarse_network=True``; the default is Instant-NGP's (hash grid, one 64-wide layer, 15 features,
one network for both sampling passes) with a 2^17 table and a 1 x 64 colour head (Instant-NGP:
2^19, 2 x 64), which fit LLFF fern better in a few minutes of one CPU core.

Hash grid: level ``l`` of ``hash_levels`` has resolution ``floor(base * b**l)`` with ``b`` chosen
so the last level has ``hash_finest_resolution``; each level has a table of
``2**hash_log2_table_size`` rows of ``hash_features_per_level`` features, indexed densely when
the level's (res + 1)^3 vertices fit and by Instant-NGP's spatial hash (x * 1 ^ y * 2654435761 ^
z * 805459861, modulo the table size) otherwise; features are trilinearly interpolated from the 8
surrounding vertices. Tables start uniform in [-1e-4, 1e-4].
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

_PRIMES = (1, 2654435761, 805459861)


@dataclass(frozen=True)
class NerfModelConfig:
    """The radiance field's shape; defaults: Instant-NGP's small network, trimmed for the CPU (module docstring)."""

    encoding: Literal["positional", "hash"] = "hash"
    """hash (Instant-NGP hash grid) | positional (NeRF's)"""
    num_freqs_xyz: int = 10
    """positional encoding frequencies of points (NeRF: 10)"""
    num_freqs_dir: int = 4
    """encoding frequencies of view directions, both encodings (NeRF: 4)"""
    hash_levels: int = 16
    """hash grid levels"""
    hash_log2_table_size: int = 17
    """log2 of the rows per level (Instant-NGP: 19; 17 is faster on a CPU, little worse)"""
    hash_features_per_level: int = 2
    """features per hash grid level"""
    hash_base_resolution: int = 16
    """resolution of the coarsest level"""
    hash_finest_resolution: int = 512
    """resolution of the finest level"""
    width: int = 64
    """trunk MLP width"""
    depth: int = 1
    """trunk MLP layers"""
    skip: bool = False
    """concatenate the encoding again after layer depth // 2 (NeRF's 8-layer MLP)"""
    geo_feat_dim: int = 15
    """features passed from the density trunk to the colour head"""
    view_dependent: bool = True
    """colour depends on the view direction"""
    color_width: int = 64
    """colour head width"""
    color_depth: int = 1
    """colour head layers (Instant-NGP: 2; 1 fits better in a few CPU minutes)"""
    density_activation: Literal["softplus", "relu"] = "softplus"
    """softplus (mip-NeRF's shifted softplus) | relu (the NeRF paper)"""
    coarse_network: bool = False
    """a separate coarse network (NeRF) instead of one for both passes"""


def positional_encoding(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """NeRF's gamma(p): x (N, D) -> (N, D + 2 * D * num_freqs), [x, sin(2^k x), cos(2^k x)]."""
    freqs = 2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)  # (L,)
    xb = (x[:, None, :] * freqs[:, None]).reshape(x.shape[0], -1)  # (N, L * D)
    return torch.cat([x, torch.sin(xb), torch.cos(xb)], dim=-1)


def _wrap_int32(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value


class HashGrid(nn.Module):
    """Multiresolution hash encoding: points (N, 3) in [-1, 1]^3 -> features (N, levels * features).

    One table per level (a dense level holds exactly its (res + 1)^3 vertices), looped over level
    by level: a level's table stays in the CPU cache, which makes the gathers several times faster
    than one gather from all levels at once.
    """

    def __init__(self, levels: int, log2_table_size: int, features: int, base: int, finest: int) -> None:
        super().__init__()
        if levels < 1 or base < 1 or finest < base:
            raise ValueError(f"bad hash grid: {levels} levels, resolutions {base}..{finest}")
        self.levels, self.features, table_size = levels, features, 2**log2_table_size
        growth = math.exp((math.log(finest) - math.log(base)) / max(levels - 1, 1))
        self.res = [int(math.floor(base * growth**lvl)) for lvl in range(levels)]
        self.dense = [(r + 1) ** 3 <= table_size for r in self.res]
        # vertex-coordinate multipliers: dense levels add them (row-major index), hashed levels xor them
        # (int32 arithmetic: the primes are stored wrapped to int32; products wrap modulo 2^32, which
        # keeps the low bits that index the power-of-two table)
        self.mult = [
            (1, r + 1, (r + 1) ** 2) if d else tuple(_wrap_int32(p) for p in _PRIMES)
            for r, d in zip(self.res, self.dense, strict=True)
        ]
        self.tables = nn.ParameterList(
            [
                nn.Parameter(torch.empty(features, (r + 1) ** 3 if d else table_size).uniform_(-1e-4, 1e-4))
                for r, d in zip(self.res, self.dense, strict=True)
            ]
        )

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # corner-major layouts ((2, 2, 2, N), (F, 8, N)) keep every elementwise op on long contiguous rows
        n = x.shape[0]
        x01 = ((x + 1.0) * 0.5).clamp(0.0, 1.0).T.contiguous()  # (3, N)
        out = []
        for res, dense, mult, table in zip(self.res, self.dense, self.mult, self.tables, strict=True):
            pos = x01 * res  # (3, N)
            lo = pos.floor().clamp(max=res - 1)
            frac = pos - lo  # (3, N) in [0, 1]
            li = lo.int()
            ax = [torch.stack([li[a] * m, li[a] * m + m]) for a, m in enumerate(mult)]  # 3 x (2, N)
            if dense:
                idx = ax[0][:, None, None] + ax[1][None, :, None] + ax[2][None, None, :]  # (2, 2, 2, N)
            else:
                idx = (ax[0][:, None, None] ^ ax[1][None, :, None] ^ ax[2][None, None, :]) & (table.shape[1] - 1)
            w = [torch.stack([1 - frac[a], frac[a]]) for a in range(3)]  # 3 x (2, N)
            wt = (w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]).reshape(8, n)
            feat = table.index_select(1, idx.reshape(-1).long()).reshape(-1, 8, n)  # (F, 8, N)
            out.append((feat * wt).sum(1))  # (F, N)
        return torch.cat(out).T  # (N, L * F)


class RadianceField(nn.Module):
    """One NeRF network: points (N, 3), dirs (N, 3) -> density (N,), rgb (N, 3)."""

    def __init__(self, config: NerfModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.encoding == "hash":
            self.grid: HashGrid | None = HashGrid(
                config.hash_levels,
                config.hash_log2_table_size,
                config.hash_features_per_level,
                config.hash_base_resolution,
                config.hash_finest_resolution,
            )
            in_dim = self.grid.out_dim
        elif config.encoding == "positional":
            self.grid = None
            in_dim = 3 + 6 * config.num_freqs_xyz
        else:
            raise ValueError(f"unknown NeRF encoding {config.encoding!r}; expected 'positional' or 'hash'")
        self.skip_at = config.depth // 2 if config.skip and config.depth > 1 else -1
        layers, d = [], in_dim
        for i in range(config.depth):
            layers.append(nn.Linear(d + (in_dim if i == self.skip_at else 0), config.width))
            d = config.width
        self.trunk = nn.ModuleList(layers)
        self.head = nn.Linear(d, 1 + config.geo_feat_dim)  # raw density, then the geometry feature
        dir_dim = 3 + 6 * config.num_freqs_dir if config.view_dependent else 0
        color, c = [], config.geo_feat_dim + dir_dim
        for _ in range(config.color_depth):
            color += [nn.Linear(c, config.color_width), nn.ReLU(inplace=True)]
            c = config.color_width
        self.color_head = nn.Sequential(*color, nn.Linear(c, 3))

    def forward(self, points: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        enc = self.grid(points) if self.grid is not None else positional_encoding(points, cfg.num_freqs_xyz)
        h = enc  # (N, in_dim)
        for i, layer in enumerate(self.trunk):
            h = F.relu(layer(torch.cat([h, enc], -1) if i == self.skip_at else h), inplace=True)  # (N, width)
        out = self.head(h)  # (N, 1 + geo_feat_dim)
        raw, feat = out[:, 0], out[:, 1:]
        density = F.softplus(raw - 1.0) if cfg.density_activation == "softplus" else F.relu(raw)
        if cfg.view_dependent:
            d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            feat = torch.cat([feat, positional_encoding(d, cfg.num_freqs_dir)], -1)
        return density, torch.sigmoid(self.color_head(feat))  # (N,), (N, 3)


class NerfModel(nn.Module):
    """The fine network and, with ``coarse_network``, a separate coarse one (else the fine one serves both)."""

    def __init__(self, config: NerfModelConfig) -> None:
        super().__init__()
        self.config = config
        self.fine = RadianceField(config)
        self.coarse = RadianceField(config) if config.coarse_network else None

    def forward(
        self, points: torch.Tensor, dirs: torch.Tensor, coarse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points, dirs: (N, 3) -> density (N,), rgb (N, 3); ``coarse`` picks the coarse network."""
        net = self.coarse if coarse and self.coarse is not None else self.fine
        return net(points, dirs)


def build_nerf(config: NerfModelConfig) -> NerfModel:
    """A freshly initialised field (uses torch's global RNG; seed it, or fork it, for reproducibility)."""
    return NerfModel(config)
