"""Voxel coordinates for sparse 3D tensors: quantisation, batching, int64 key packing, SparseTensor.

Inputs: point clouds as (N, 3) float tensors (optionally with (N, C) per-point features), a voxel
size, or already-quantised integer coordinates. Outputs: unique voxel coordinates (M, 3) int64
with averaged features and the point -> voxel inverse map (:func:`quantize`), batched
coordinates (M, 4) int64 ``[batch, x, y, z]`` (:func:`batch_coords`), one int64 key per batched
coordinate (:func:`pack_keys` / :func:`unpack_keys`), and the :class:`SparseTensor` container.

Key packing (:func:`pack_keys`): each spatial axis is shifted by ``2**15`` and stored in 16 bits,
the batch index in the 15 bits above them::

    key = batch << 48 | (x + 2**15) << 32 | (y + 2**15) << 16 | (z + 2**15)

so spatial coordinates must lie in ``[-32768, 32767]`` and the batch index in ``[0, 32767]``;
keys are then non-negative and their order is the lexicographic order of ``(batch, x, y, z)``.
Anything outside raises ``ValueError``. (At a 2.5 cm voxel the spatial range is +-819 m.)

Coordinates are always in units of the finest voxel; a tensor with tensor stride ``s`` has
spatial coordinates that are multiples of ``s`` (MinkowskiEngine's convention).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

AXIS_BITS = 16
AXIS_OFFSET = 1 << (AXIS_BITS - 1)  # 32768
SPATIAL_MIN = -AXIS_OFFSET  # -32768
SPATIAL_MAX = AXIS_OFFSET - 1  # 32767
BATCH_MAX = (1 << (63 - 3 * AXIS_BITS)) - 1  # 32767
_AXIS_MASK = (1 << AXIS_BITS) - 1


@dataclass(frozen=True)
class SparseTensor:
    """Features on a set of batched voxel coordinates.

    ``features`` (M, C) float, ``coords`` (M, 4) int64 ``[batch, x, y, z]`` (unique rows, spatial
    parts multiples of ``stride``), ``stride`` the tensor stride in finest-voxel units.

    ``kernel_maps`` is a cache of kernel maps shared by every tensor derived from this one
    (MinkowskiEngine's coordinate manager): convolutions store the maps they build, keyed by
    stride and kernel, together with the coords tensor they were built from, and reuse a map only
    when given that very coords tensor again. It never changes results, only saves rebuilding.
    """

    features: torch.Tensor  # (M, C) float
    coords: torch.Tensor  # (M, 4) int64
    stride: int = 1
    kernel_maps: dict[tuple[Any, ...], Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.coords.dtype != torch.int64 or self.coords.ndim != 2 or self.coords.shape[1] != 4:
            raise ValueError(f"coords must be (M, 4) int64, got {tuple(self.coords.shape)} {self.coords.dtype}")
        if self.features.ndim != 2 or self.features.shape[0] != self.coords.shape[0]:
            raise ValueError(
                f"features must be (M, C) with M = {self.coords.shape[0]}, got {tuple(self.features.shape)}"
            )
        if self.features.device != self.coords.device:
            raise ValueError(f"features on {self.features.device}, coords on {self.coords.device}")
        if int(self.stride) < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def num_channels(self) -> int:
        return int(self.features.shape[1])

    def with_features(self, features: torch.Tensor) -> SparseTensor:
        """The same coordinates and stride with new (M, C') features."""
        return SparseTensor(features=features, coords=self.coords, stride=self.stride, kernel_maps=self.kernel_maps)

    def to(self, device: torch.device | str) -> SparseTensor:
        """A copy on ``device`` (autograd-tracked for the features)."""
        return SparseTensor(features=self.features.to(device), coords=self.coords.to(device), stride=self.stride)


def quantize(
    points: torch.Tensor, voxel: float, features: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Voxelise points: unique voxel coords, per-voxel mean features, point -> voxel map.

    points (N, 3) float, voxel > 0, features (N, C) float or None. Returns coords (M, 3) int64
    (``floor(points / voxel)``, unique, sorted lexicographically), averaged features (M, C) or None,
    and inverse (N,) int64 with ``coords[inverse] == floor(points / voxel)``.
    """
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {tuple(points.shape)}")
    if not voxel > 0:
        raise ValueError(f"voxel must be > 0, got {voxel}")
    grid = torch.floor(points / voxel).to(torch.int64)  # (N, 3)
    coords, inverse = torch.unique(grid, dim=0, return_inverse=True)  # (M, 3), (N,)
    if features is None:
        return coords, None, inverse
    if features.ndim != 2 or features.shape[0] != points.shape[0]:
        raise ValueError(f"features must be (N, C) with N = {points.shape[0]}, got {tuple(features.shape)}")
    m = coords.shape[0]
    sums = features.new_zeros(m, features.shape[1]).index_add_(0, inverse, features)  # (M, C)
    counts = torch.bincount(inverse, minlength=m).to(features.dtype)  # (M,)
    return coords, sums / counts[:, None], inverse


def batch_coords(coords_list: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-item (M_i, 3) int64 coordinates into (sum M_i, 4) ``[batch, x, y, z]``."""
    if not coords_list:
        raise ValueError("coords_list is empty")
    parts = []
    for b, c in enumerate(coords_list):
        if c.ndim != 2 or c.shape[1] != 3:
            raise ValueError(f"item {b}: coords must be (M, 3), got {tuple(c.shape)}")
        col = torch.full((c.shape[0], 1), b, dtype=torch.int64, device=c.device)
        parts.append(torch.cat([col, c.to(torch.int64)], dim=1))
    return torch.cat(parts, dim=0)


def coords_in_range(coords: torch.Tensor) -> torch.Tensor:
    """(M,) bool: which (M, 4) batched coordinates :func:`pack_keys` can represent."""
    spatial = coords[:, 1:]
    ok = (spatial >= SPATIAL_MIN).all(dim=1) & (spatial <= SPATIAL_MAX).all(dim=1)
    return ok & (coords[:, 0] >= 0) & (coords[:, 0] <= BATCH_MAX)


def pack_keys_unchecked(coords: torch.Tensor) -> torch.Tensor:
    """:func:`pack_keys` without the range check: (M, 4) int64 -> (M,) int64 (caller ensures the range)."""
    shifted = coords[:, 1:] + AXIS_OFFSET  # (M, 3), each in [0, 2**16)
    return (
        (coords[:, 0] << (3 * AXIS_BITS))
        | (shifted[:, 0] << (2 * AXIS_BITS))
        | (shifted[:, 1] << AXIS_BITS)
        | shifted[:, 2]
    )


def pack_keys(coords: torch.Tensor) -> torch.Tensor:
    """Pack (M, 4) int64 ``[batch, x, y, z]`` into (M,) int64 keys (see the module docstring).

    Raises ValueError when a coordinate is out of the representable range.
    """
    if coords.dtype != torch.int64 or coords.ndim != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords must be (M, 4) int64, got {tuple(coords.shape)} {coords.dtype}")
    if coords.shape[0] and not bool(coords_in_range(coords).all()):
        raise ValueError(
            f"coordinates out of range for key packing: spatial must be in [{SPATIAL_MIN}, {SPATIAL_MAX}], "
            f"batch in [0, {BATCH_MAX}]"
        )
    return pack_keys_unchecked(coords)


def unpack_keys(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_keys`: (M,) int64 keys -> (M, 4) int64 ``[batch, x, y, z]``."""
    batch = keys >> (3 * AXIS_BITS)
    x = ((keys >> (2 * AXIS_BITS)) & _AXIS_MASK) - AXIS_OFFSET
    y = ((keys >> AXIS_BITS) & _AXIS_MASK) - AXIS_OFFSET
    z = (keys & _AXIS_MASK) - AXIS_OFFSET
    return torch.stack([batch, x, y, z], dim=1)
