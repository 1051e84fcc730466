"""Generalised sparse 3D convolution and the FCGF building blocks, in plain PyTorch.

Inputs: a :class:`~capture3d.tasks.fcgf.sparse.coords.SparseTensor` (features (N, C_in), coords
(N, 4) int64, tensor stride s) and a kernel ``weight`` (K = k**3, C_in, C_out) in the offset order
of :mod:`capture3d.tasks.fcgf.sparse.kernel_map` (MinkowskiEngine's). Outputs: SparseTensors with
(N_out, C_out) features.

* :func:`sparse_conv`: ``out[o] = sum_d in[o + d * s] @ W[d]`` over the kernel map; stride 1
  keeps the input coordinates, stride t gives tensor stride ``t * s``.
* :func:`sparse_conv_transpose`: coarse -> the given finer ``target_coords`` (stride s / t),
  ``out[f] = sum_d in[f - d * s/t] @ W[d]`` (MinkowskiEngine's transposed kernel map).

Both are gather -> matmul -> ``index_add_`` per kernel offset, differentiated by autograd, on
whatever device the inputs live on. Modules: :class:`SparseConv3d`,
:class:`SparseConvTranspose3d`, :class:`SparseBatchNorm`, :class:`SparseReLU`,
:class:`SparseResBlock` (FCGF's BasicBlock) and :func:`cat_features` for skip connections.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from capture3d.tasks.fcgf.sparse.coords import SparseTensor
from capture3d.tasks.fcgf.sparse.kernel_map import (
    KernelMap,
    build_kernel_map,
    build_transpose_kernel_map,
)

logger = logging.getLogger(__name__)


def _check_weight(weight: torch.Tensor, kernel_size: int, in_channels: int) -> None:
    if weight.ndim != 3 or weight.shape[0] != kernel_size**3 or weight.shape[1] != in_channels:
        raise ValueError(f"weight must be (K={kernel_size**3}, C_in={in_channels}, C_out), got {tuple(weight.shape)}")


class _KernelMapConv(torch.autograd.Function):
    """Gather -> matmul -> scatter-add over a kernel map, with a hand-written backward.

    The backward mirrors the forward per offset k: ``grad_in[in] += grad_out[out] @ W[k].T`` and
    ``grad_W[k] = in_feats[in].T @ grad_out[out]``; autograd's generic backward of indexing
    (an accumulating ``index_put_``) is several times slower on the CPU.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:  # type: ignore[override]
        n_out = kmap.out_coords.shape[0]
        out = features.new_zeros(n_out, weight.shape[2])  # (N_out, C_out)
        for k, (in_rows, out_rows) in enumerate(kmap.pairs):
            if in_rows.numel():
                out.index_add_(0, out_rows, features[in_rows] @ weight[k])  # (P_k, C_out)
        ctx.save_for_backward(features, weight)
        ctx.kmap = kmap
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        features, weight = ctx.saved_tensors
        kmap: KernelMap = ctx.kmap
        need_in, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_in = torch.zeros_like(features) if need_in else None  # (N_in, C_in)
        grad_w = torch.zeros_like(weight) if need_w else None  # (K, C_in, C_out)
        for k, (in_rows, out_rows) in enumerate(kmap.pairs):
            if not in_rows.numel():
                continue
            g = grad_out[out_rows]  # (P_k, C_out)
            if grad_in is not None:
                grad_in.index_add_(0, in_rows, g @ weight[k].T)
            if grad_w is not None:
                grad_w[k] = features[in_rows].T @ g
        return grad_in, grad_w, None


def apply_kernel_map(
    features: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Gather -> matmul -> scatter-add: features (N_in, C_in), weight (K, C_in, C_out) -> (N_out, C_out)."""
    out = _KernelMapConv.apply(features, weight, kmap)  # (N_out, C_out)
    if bias is not None:
        out = out + bias
    return out


def cached_kernel_map(x: SparseTensor, kernel_size: int, stride: int) -> KernelMap:
    """The kernel map of a conv of x (k, stride), from x's cache when built before for x.coords."""
    key = ("conv", x.stride, kernel_size, stride)
    hit = x.kernel_maps.get(key)
    if hit is not None and hit[0] is x.coords:
        return hit[1]
    kmap = build_kernel_map(x.coords, x.stride, kernel_size, stride)
    x.kernel_maps[key] = (x.coords, kmap)
    return kmap


def _cached_transpose_map(x: SparseTensor, target_coords: torch.Tensor, kernel_size: int, stride: int) -> KernelMap:
    """Transposed map coarse x -> target_coords: the mirrored forward map swapped, when cached."""
    if stride >= 1 and x.stride % stride == 0:
        hit = x.kernel_maps.get(("conv", x.stride // stride, kernel_size, stride))
        if hit is not None and hit[0] is target_coords and hit[1].out_coords is x.coords:
            fwd = hit[1]
            return KernelMap(
                pairs=tuple((o, i) for i, o in fwd.pairs),
                out_coords=target_coords,
                out_stride=x.stride // stride,
                kernel_size=kernel_size,
            )
    return build_transpose_kernel_map(x.coords, x.stride, target_coords, kernel_size, stride)


def sparse_conv(
    x: SparseTensor,
    weight: torch.Tensor,
    kernel_size: int,
    stride: int = 1,
    bias: torch.Tensor | None = None,
    kernel_map: KernelMap | None = None,
) -> SparseTensor:
    """Sparse convolution of x with weight (K, C_in, C_out); see the module docstring.

    ``kernel_map`` may be a map built earlier for the same coords / k / stride (it is reused);
    otherwise the map comes from x's cache (:func:`cached_kernel_map`). A 1x1x1 stride-1
    convolution is a plain matmul.
    """
    _check_weight(weight, kernel_size, x.num_channels)
    if kernel_size == 1 and stride == 1 and kernel_map is None:
        out = x.features @ weight[0]  # (N, C_out)
        return x.with_features(out + bias if bias is not None else out)
    kmap = kernel_map if kernel_map is not None else cached_kernel_map(x, kernel_size, stride)
    out = apply_kernel_map(x.features, weight, kmap, bias)
    return SparseTensor(features=out, coords=kmap.out_coords, stride=kmap.out_stride, kernel_maps=x.kernel_maps)


def sparse_conv_transpose(
    x: SparseTensor,
    weight: torch.Tensor,
    kernel_size: int,
    stride: int,
    target_coords: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> SparseTensor:
    """Transposed sparse convolution of coarse x onto target_coords (N_out, 4) at stride x.stride / stride.

    When the forward convolution target -> x ran on the same coords tensors, its cached map is
    reused with the roles swapped (MinkowskiEngine's transposed kernel map).
    """
    _check_weight(weight, kernel_size, x.num_channels)
    kmap = _cached_transpose_map(x, target_coords, kernel_size, stride)
    out = apply_kernel_map(x.features, weight, kmap, bias)
    return SparseTensor(features=out, coords=kmap.out_coords, stride=kmap.out_stride, kernel_maps=x.kernel_maps)


def cat_features(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """Concatenate (N, C_a) and (N, C_b) features of two tensors on identical coords (same row order)."""
    if a.stride != b.stride or a.coords.shape != b.coords.shape or not torch.equal(a.coords, b.coords):
        raise ValueError("cat_features needs both tensors on the same coordinates, in the same order, same stride")
    return a.with_features(torch.cat([a.features, b.features], dim=1))


class _SparseConvBase(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        volume = kernel_size**3
        self.weight = nn.Parameter(torch.empty(volume, in_channels, out_channels))  # (K, C_in, C_out)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        bound = 1.0 / math.sqrt(in_channels * volume)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, bias={self.bias is not None}"
        )


class SparseConv3d(_SparseConvBase):
    """Sparse convolution module; weight (K, C_in, C_out) in MinkowskiEngine order."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = False
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_conv(x, self.weight, self.kernel_size, self.stride, self.bias)


class SparseConvTranspose3d(_SparseConvBase):
    """Transposed sparse convolution module onto a given finer coordinate set."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 2, bias: bool = False
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, bias)

    def forward(self, x: SparseTensor, target: SparseTensor | torch.Tensor) -> SparseTensor:
        """target: the mirrored encoder tensor, or its (N_out, 4) int64 coords."""
        coords = target.coords if isinstance(target, SparseTensor) else target
        return sparse_conv_transpose(x, self.weight, self.kernel_size, self.stride, coords, self.bias)


class SparseBatchNorm(nn.Module):
    """BatchNorm1d over the (N, C) features (statistics over all voxels of the batch)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.with_features(self.bn(x.features))


class SparseReLU(nn.Module):
    """ReLU on the features (never in place, so autograd-safe on shared features)."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.with_features(torch.relu(x.features))


class SparseResBlock(nn.Module):
    """FCGF's BasicBlock: relu(bn(conv(relu(bn(conv(x))))) + x), k x k x k, stride 1, no conv bias."""

    def __init__(self, channels: int, kernel_size: int = 3, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.conv1 = SparseConv3d(channels, channels, kernel_size, stride=1, bias=False)
        self.norm1 = SparseBatchNorm(channels, momentum=bn_momentum)
        self.conv2 = SparseConv3d(channels, channels, kernel_size, stride=1, bias=False)
        self.norm2 = SparseBatchNorm(channels, momentum=bn_momentum)
        self.kernel_size = kernel_size

    def forward(self, x: SparseTensor) -> SparseTensor:
        kmap = cached_kernel_map(x, self.kernel_size, 1)  # shared by both convs (and other blocks)
        out = sparse_conv(x, self.conv1.weight, self.kernel_size, 1, kernel_map=kmap)
        out = torch.relu(self.norm1(out).features)  # (N, C)
        out = sparse_conv(x.with_features(out), self.conv2.weight, self.kernel_size, 1, kernel_map=kmap)
        out = self.norm2(out).features + x.features  # (N, C)
        return x.with_features(torch.relu(out))
