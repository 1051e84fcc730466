"""Kernel maps for generalised sparse convolution (MinkowskiEngine's HYPER_CUBE region, dilation 1).

Inputs: batched input coordinates (N_in, 4) int64 with tensor stride ``s_in``, a kernel size ``k``
and a convolution stride. Outputs: the output coordinates (:func:`strided_coords`) and a
:class:`KernelMap` listing, for each of the K = k**3 kernel offsets, the (input row, output row)
pairs with ``in_coords[i] == out_coords[o] + offset * s_in`` (batch equal).

Kernel offsets and their order (the weight layout (K, C_in, C_out) of every convolution here):

* odd ``k``: each axis takes ``-(k//2) .. k//2``; even ``k``: each axis takes ``0 .. k-1``
  (the kernel's "centre" is its lower corner);
* the linear index is ``K = ix + k * iy + k * k * iz`` -- **x varies fastest**, z slowest.

Both rules are MinkowskiEngine's ``kernel_region`` (``src/kernel_region.hpp``, v0.5: bounds per
axis in ``set_bounds``, the iterator increments axis 0 first), so an official ``(K, C_in, C_out)``
MinkowskiEngine kernel can be used as is. For a dense (C_out, C_in, k, k, k) ``conv3d`` weight
``w`` indexed ``[.., ix, iy, iz]``: ``W[ix + k*iy + k*k*iz] = w[:, :, ix, iy, iz].T``.

Output coordinates: stride 1 keeps the input coordinates (and their row order: submanifold
convolution); stride ``t`` > 1 gives the unique ``floor(c / (t * s_in)) * (t * s_in)`` on the
spatial axes, sorted by packed key, with tensor stride ``t * s_in``.

Matching uses packed int64 keys, ``torch.sort`` and ``torch.searchsorted``; the only Python loop
is over the K offsets. Queries that fall outside the packable range simply match nothing.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import torch

from capture3d.tasks.fcgf.sparse.coords import (
    SPATIAL_MAX,
    SPATIAL_MIN,
    coords_in_range,
    pack_keys,
    pack_keys_unchecked,
    unpack_keys,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelMap:
    """Pairs per kernel offset: ``pairs[k] = (in_rows (P_k,) int64, out_rows (P_k,) int64)``.

    ``out_coords`` (N_out, 4) int64 are the output coordinates the out rows index, ``out_stride``
    their tensor stride, ``kernel_size`` the k the offsets came from.
    """

    pairs: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    out_coords: torch.Tensor  # (N_out, 4) int64
    out_stride: int
    kernel_size: int


def kernel_offsets(kernel_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(k**3, 3) int64 offsets in MinkowskiEngine order (x fastest), in tensor-stride units."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    if kernel_size % 2:
        r = kernel_size // 2
        axis = list(range(-r, r + 1))
    else:
        axis = list(range(kernel_size))
    # itertools.product varies its last factor fastest: iterate (z, y, x) and reverse to (x, y, z).
    rows = [(x, y, z) for z, y, x in itertools.product(axis, axis, axis)]
    return torch.tensor(rows, dtype=torch.int64, device=device)


def strided_coords(coords: torch.Tensor, in_stride: int, stride: int) -> torch.Tensor:
    """Output coordinates of a stride-``stride`` convolution; (N_in, 4) -> (N_out, 4) int64."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if stride == 1:
        return coords
    out_stride = in_stride * stride
    spatial = torch.div(coords[:, 1:], out_stride, rounding_mode="floor") * out_stride  # (N_in, 3)
    keys = pack_keys(torch.cat([coords[:, :1], spatial], dim=1))  # (N_in,)
    return unpack_keys(torch.unique(keys))  # (N_out, 4), sorted by key


def match_offsets(
    in_coords: torch.Tensor, out_coords: torch.Tensor, kernel_size: int, offset_scale: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """For each offset d: pairs (i, o) with ``in_coords[i] == out_coords[o] + d * offset_scale``.

    in_coords (N_in, 4), out_coords (N_out, 4) int64 with unique rows. Returns K pairs of (P_k,)
    int64 index tensors (in rows, out rows), ordered by out row.
    """
    in_keys = pack_keys(in_coords)  # (N_in,)
    pack_keys(out_coords)  # range check only
    sorted_keys, perm = torch.sort(in_keys)  # (N_in,), (N_in,)
    n_in, n_out = in_keys.shape[0], out_coords.shape[0]
    offsets = kernel_offsets(kernel_size, out_coords.device) * offset_scale  # (K, 3)
    num_k = offsets.shape[0]
    empty = torch.zeros(0, dtype=torch.int64, device=out_coords.device)
    if n_in == 0 or n_out == 0:
        return tuple((empty, empty) for _ in range(num_k))
    # All K offsets at once: queries (K * N_out,), ordered by offset, then out row.
    spatial = out_coords[:, 1:]
    lo = spatial.min(dim=0).values + offsets.min(dim=0).values  # (3,)
    hi = spatial.max(dim=0).values + offsets.max(dim=0).values  # (3,)
    if bool((lo >= SPATIAL_MIN).all() and (hi <= SPATIAL_MAX).all()):
        # Every query packs: the key of out + d is key(out) + key-delta(d) (no carries between fields).
        delta = pack_keys_unchecked(torch.cat([torch.zeros_like(offsets[:, :1]), offsets], 1)) - pack_keys_unchecked(
            torch.zeros(1, 4, dtype=torch.int64, device=offsets.device)
        )  # (K,)
        q_keys = (pack_keys_unchecked(out_coords)[None, :] + delta[:, None]).reshape(-1)  # (K * N_out,)
        q_index = torch.arange(q_keys.shape[0], device=out_coords.device)
    else:
        query = out_coords[None, :, :].repeat(num_k, 1, 1)  # (K, N_out, 4)
        query[:, :, 1:] += offsets[:, None, :]
        query = query.reshape(-1, 4)
        q_index = torch.nonzero(coords_in_range(query)).squeeze(1)  # (Q,)
        q_keys = pack_keys_unchecked(query[q_index])  # (Q,)
    pos = torch.searchsorted(sorted_keys, q_keys).clamp_(max=n_in - 1)  # (Q,)
    found = sorted_keys[pos] == q_keys  # (Q,)
    hit = q_index[found]  # (H,) flat query index, sorted
    in_rows = perm[pos[found]]  # (H,)
    k_of_hit = hit // n_out  # (H,)
    out_rows = hit - k_of_hit * n_out  # (H,)
    counts = torch.bincount(k_of_hit, minlength=num_k).tolist()
    return tuple(zip(torch.split(in_rows, counts), torch.split(out_rows, counts)))


def build_kernel_map(in_coords: torch.Tensor, in_stride: int, kernel_size: int, stride: int) -> KernelMap:
    """Kernel map of a convolution from (N_in, 4) coords at tensor stride ``in_stride``."""
    out_coords = strided_coords(in_coords, in_stride, stride)
    pairs = match_offsets(in_coords, out_coords, kernel_size, in_stride)
    logger.debug(
        "kernel map k=%d stride=%d: %d -> %d coords, %d pairs",
        kernel_size,
        stride,
        in_coords.shape[0],
        out_coords.shape[0],
        sum(int(p[0].numel()) for p in pairs),
    )
    return KernelMap(pairs=pairs, out_coords=out_coords, out_stride=in_stride * stride, kernel_size=kernel_size)


def build_transpose_kernel_map(
    in_coords: torch.Tensor, in_stride: int, target_coords: torch.Tensor, kernel_size: int, stride: int
) -> KernelMap:
    """Kernel map of a transposed convolution from coarse (N_in, 4) coords onto ``target_coords``.

    The target (N_out, 4) coords have tensor stride ``in_stride // stride``. The pairs are those
    of the forward convolution target -> input (same k, same stride) with the roles swapped, as in
    MinkowskiEngine: ``target[o] == in[i] + d * (in_stride // stride)``.
    """
    if stride < 1 or in_stride % stride:
        raise ValueError(f"stride {stride} must divide the input tensor stride {in_stride}")
    out_stride = in_stride // stride
    fwd = match_offsets(target_coords, in_coords, kernel_size, out_stride)  # (target row, coarse row)
    pairs = tuple((coarse, fine) for fine, coarse in fwd)
    return KernelMap(pairs=pairs, out_coords=target_coords, out_stride=out_stride, kernel_size=kernel_size)
