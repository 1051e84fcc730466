"""FCGF's fully-convolutional geometric feature network ResUNetBN2C on the pure-PyTorch sparse engine.

Inputs: a :class:`~capture3d.tasks.fcgf.sparse.SparseTensor` of voxelised points (features (M, C_in),
FCGF uses constant ones with C_in = 1; coords (M, 4) int64 ``[b, x, y, z]`` at tensor stride 1), or,
through :func:`extract_features`, an (N, 3) point cloud and a voxel size.
Outputs: a SparseTensor on the same coordinates with (M, out_channels) features, L2-normalised
per voxel when ``normalize_feature`` is set; :func:`extract_features` returns one (out_channels,)
float32 descriptor per *original* point (the descriptor of the voxel the point falls in).

Architecture (Choy, Park, Koltun, "Fully Convolutional Geometric Features", ICCV 2019; FCGF
repository ``model/resunet.py``, class ``ResUNetBN2C``), reimplemented on
:mod:`capture3d.tasks.fcgf.sparse`::

    conv1 (k=conv1_kernel_size, s1) -> norm1 -> block1 -> relu            = out_s1  (32 ch, stride 1)
    conv2 (k3, s2) -> norm2 -> block2 -> relu                             = out_s2  (64 ch, stride 2)
    conv3 (k3, s2) -> norm3 -> block3 -> relu                             = out_s4  (128 ch, stride 4)
    conv4 (k3, s2) -> norm4 -> block4 -> relu                             (256 ch, stride 8)
    conv4_tr (k3, s2, onto out_s4) -> norm4_tr -> block4_tr -> relu, cat [tr, out_s4]
    conv3_tr (k3, s2, onto out_s2) -> norm3_tr -> block3_tr -> relu, cat [tr, out_s2]
    conv2_tr (k3, s2, onto out_s1) -> norm2_tr -> block2_tr -> relu, cat [tr, out_s1]
    conv1_tr (k1) -> relu -> final (k1, bias) -> L2-normalise

``CHANNELS = [None, 32, 64, 128, 256]`` and ``TR_CHANNELS = [None, 64, 64, 64, 128]`` -- the
official ``ResUNetBN2C`` values (the base ``ResUNet2`` / ``ResUNetBN2`` use
``[None, 32, 64, 64, 128]``; :class:`ResUNetBN2` here has those). Every convolution is bias-free
except ``final``; ``norm*`` are batch norms; ``block*`` are FCGF's BasicBlockBN
(:class:`~capture3d.tasks.fcgf.sparse.SparseResBlock`). Module names follow the FCGF repository so
official checkpoints map by name: ME's ``<layer>.kernel`` (K, C_in, C_out) is our
``<layer>.weight`` (same layout and offset order), ``normX.bn.*`` and ``blockX.{conv,norm}{1,2}``
match directly.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from capture3d.tasks.fcgf.sparse import (
    SparseBatchNorm,
    SparseConv3d,
    SparseConvTranspose3d,
    SparseResBlock,
    SparseTensor,
    batch_coords,
    cat_features,
    quantize,
    strided_coords,
)

logger = logging.getLogger(__name__)

#: Tensor stride of the coarsest level (three stride-2 convolutions).
COARSEST_STRIDE = 8
#: :func:`extract_features` refuses clouds with fewer occupied voxels than this at stride 8.
MIN_COARSE_VOXELS = 8


class ResUNetBN2C(nn.Module):
    """FCGF ResUNetBN2C: sparse residual U-Net, (M, in_channels) -> (M, out_channels) per voxel."""

    CHANNELS: tuple[int, ...] = (0, 32, 64, 128, 256)  # index 0 unused (FCGF's None)
    TR_CHANNELS: tuple[int, ...] = (0, 64, 64, 64, 128)

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 32,
        bn_momentum: float = 0.1,
        normalize_feature: bool = True,
        conv1_kernel_size: int = 5,
    ) -> None:
        super().__init__()
        if conv1_kernel_size < 1 or conv1_kernel_size % 2 == 0:
            raise ValueError(f"conv1_kernel_size must be odd and >= 1, got {conv1_kernel_size}")
        ch, tr = self.CHANNELS, self.TR_CHANNELS
        m = bn_momentum
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.normalize_feature = normalize_feature

        self.conv1 = SparseConv3d(in_channels, ch[1], conv1_kernel_size, stride=1)
        self.norm1 = SparseBatchNorm(ch[1], momentum=m)
        self.block1 = SparseResBlock(ch[1], bn_momentum=m)

        self.conv2 = SparseConv3d(ch[1], ch[2], 3, stride=2)
        self.norm2 = SparseBatchNorm(ch[2], momentum=m)
        self.block2 = SparseResBlock(ch[2], bn_momentum=m)

        self.conv3 = SparseConv3d(ch[2], ch[3], 3, stride=2)
        self.norm3 = SparseBatchNorm(ch[3], momentum=m)
        self.block3 = SparseResBlock(ch[3], bn_momentum=m)

        self.conv4 = SparseConv3d(ch[3], ch[4], 3, stride=2)
        self.norm4 = SparseBatchNorm(ch[4], momentum=m)
        self.block4 = SparseResBlock(ch[4], bn_momentum=m)

        self.conv4_tr = SparseConvTranspose3d(ch[4], tr[4], 3, stride=2)
        self.norm4_tr = SparseBatchNorm(tr[4], momentum=m)
        self.block4_tr = SparseResBlock(tr[4], bn_momentum=m)

        self.conv3_tr = SparseConvTranspose3d(ch[3] + tr[4], tr[3], 3, stride=2)
        self.norm3_tr = SparseBatchNorm(tr[3], momentum=m)
        self.block3_tr = SparseResBlock(tr[3], bn_momentum=m)

        self.conv2_tr = SparseConvTranspose3d(ch[2] + tr[3], tr[2], 3, stride=2)
        self.norm2_tr = SparseBatchNorm(tr[2], momentum=m)
        self.block2_tr = SparseResBlock(tr[2], bn_momentum=m)

        self.conv1_tr = SparseConv3d(ch[1] + tr[2], tr[1], 1, stride=1)
        self.final = SparseConv3d(tr[1], out_channels, 1, stride=1, bias=True)

    @staticmethod
    def _relu(x: SparseTensor) -> SparseTensor:
        return x.with_features(torch.relu(x.features))

    def forward(self, x: SparseTensor) -> SparseTensor:
        """x: features (M, in_channels), coords (M, 4) at stride 1 -> (M, out_channels), same coords."""
        if x.stride != 1:
            raise ValueError(f"input must have tensor stride 1, got {x.stride}")
        if x.num_channels != self.in_channels:
            raise ValueError(f"input has {x.num_channels} channels, the model expects {self.in_channels}")
        relu = self._relu
        out_s1 = self.block1(self.norm1(self.conv1(x)))  # (M1, 32), stride 1
        out = relu(out_s1)
        out_s2 = self.block2(self.norm2(self.conv2(out)))  # (M2, 64), stride 2
        out = relu(out_s2)
        out_s4 = self.block3(self.norm3(self.conv3(out)))  # (M4, 128), stride 4
        out = relu(out_s4)
        out_s8 = self.block4(self.norm4(self.conv4(out)))  # (M8, 256), stride 8
        out = relu(out_s8)

        out = self.block4_tr(self.norm4_tr(self.conv4_tr(out, out_s4)))  # (M4, tr4)
        out = cat_features(relu(out), out_s4)  # (M4, tr4 + 128)
        out = self.block3_tr(self.norm3_tr(self.conv3_tr(out, out_s2)))  # (M2, tr3)
        out = cat_features(relu(out), out_s2)  # (M2, tr3 + 64)
        out = self.block2_tr(self.norm2_tr(self.conv2_tr(out, out_s1)))  # (M1, tr2)
        out = cat_features(relu(out), out_s1)  # (M1, tr2 + 32)
        out = relu(self.conv1_tr(out))  # (M1, tr1)
        out = self.final(out)  # (M1, out_channels)
        if self.normalize_feature:
            feats = out.features
            out = out.with_features(feats / torch.norm(feats, p=2, dim=1, keepdim=True))
        return out


class ResUNetBN2(ResUNetBN2C):
    """FCGF ResUNetBN2: as :class:`ResUNetBN2C` with ``TR_CHANNELS = [None, 32, 64, 64, 128]``."""

    TR_CHANNELS = (0, 32, 64, 64, 128)


def _as_points_tensor(points: np.ndarray | torch.Tensor) -> torch.Tensor:
    pts = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {tuple(pts.shape)}")
    pts = pts.detach().to(torch.float64)  # float64 so floor(p / voxel) matches numpy
    if not bool(torch.isfinite(pts).all()):
        raise ValueError("points contain NaN or inf")
    return pts


def check_cloud_size(coords: torch.Tensor) -> int:
    """Occupied voxels at the coarsest level for (M, 4) stride-1 coords; ValueError below the minimum."""
    n_coarse = int(strided_coords(coords, 1, COARSEST_STRIDE).shape[0])
    if n_coarse < MIN_COARSE_VOXELS:
        raise ValueError(
            f"cloud too small for FCGF: {n_coarse} occupied voxels at stride {COARSEST_STRIDE}, "
            f"need >= {MIN_COARSE_VOXELS}"
        )
    return n_coarse


def voxelize_for_fcgf(
    points: np.ndarray | torch.Tensor, voxel: float, device: torch.device | str = "cpu", batch: int = 0
) -> tuple[SparseTensor, torch.Tensor]:
    """Quantise (N, 3) points at ``voxel`` with constant-one features, FCGF's input.

    Returns the SparseTensor (features (M, 1) float32 ones, coords (M, 4) ``[batch, x, y, z]``
    with ``x = floor(p_x / voxel)``) on ``device`` and the (N,) int64 point -> voxel row map.
    Raises ValueError for non-finite points or a cloud with too few coarse voxels.
    """
    pts = _as_points_tensor(points)  # (N, 3) float64
    if pts.shape[0] == 0:
        raise ValueError("points are empty")
    coords3, _, inverse = quantize(pts, float(voxel))  # (M, 3), (N,)
    coords = batch_coords([coords3])  # (M, 4)
    if batch:
        coords[:, 0] = batch
    check_cloud_size(coords)
    feats = torch.ones(coords.shape[0], 1, dtype=torch.float32)  # (M, 1)
    return SparseTensor(features=feats.to(device), coords=coords.to(device)), inverse


def extract_features(
    model: ResUNetBN2C,
    points: np.ndarray | torch.Tensor,
    voxel: float,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """FCGF descriptors per original point: (N, 3) points -> (N, out_channels) float32 numpy.

    Voxelises at ``voxel`` (``floor(p / voxel)``, constant-one features, as FCGF), runs ``model``
    in eval mode under ``torch.no_grad`` on ``device`` (default: the model's device; the model
    must already live there), and gives each point the descriptor of its voxel (so points sharing
    a voxel share a descriptor). The model's train/eval mode is restored afterwards.
    Raises ValueError for NaN/inf points or clouds with fewer than :data:`MIN_COARSE_VOXELS`
    occupied voxels at stride :data:`COARSEST_STRIDE` (8 voxels).
    """
    if device is None:
        device = next(model.parameters()).device
    x, inverse = voxelize_for_fcgf(points, voxel, device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)  # (M, D)
    finally:
        model.train(was_training)
    logger.debug("FCGF features: %d points -> %d voxels at %.4g", inverse.shape[0], x.coords.shape[0], voxel)
    return out.features[inverse.to(out.features.device)].float().cpu().numpy()  # (N, D)
