"""Sparse 3D tensors and generalised sparse convolution in plain PyTorch (MinkowskiEngine-like).

Inputs: point clouds or batched voxel coordinates with features; outputs: SparseTensors and the
convolution / normalisation modules FCGF is built from. See :mod:`.coords`, :mod:`.kernel_map`
(weight layout) and :mod:`.conv`.
"""

from capture3d.tasks.fcgf.sparse.conv import (
    SparseBatchNorm,
    SparseConv3d,
    SparseConvTranspose3d,
    SparseReLU,
    SparseResBlock,
    apply_kernel_map,
    cat_features,
    sparse_conv,
    sparse_conv_transpose,
)
from capture3d.tasks.fcgf.sparse.coords import (
    BATCH_MAX,
    SPATIAL_MAX,
    SPATIAL_MIN,
    SparseTensor,
    batch_coords,
    pack_keys,
    quantize,
    unpack_keys,
)
from capture3d.tasks.fcgf.sparse.kernel_map import (
    KernelMap,
    build_kernel_map,
    build_transpose_kernel_map,
    kernel_offsets,
    strided_coords,
)

__all__ = [
    "BATCH_MAX",
    "SPATIAL_MAX",
    "SPATIAL_MIN",
    "KernelMap",
    "SparseBatchNorm",
    "SparseConv3d",
    "SparseConvTranspose3d",
    "SparseReLU",
    "SparseResBlock",
    "SparseTensor",
    "apply_kernel_map",
    "batch_coords",
    "build_kernel_map",
    "build_transpose_kernel_map",
    "cat_features",
    "kernel_offsets",
    "pack_keys",
    "quantize",
    "sparse_conv",
    "sparse_conv_transpose",
    "strided_coords",
    "unpack_keys",
]
