"""Sparse 3D convolution (capture3d.tasks.fcgf.sparse) against dense torch conv3d / conv_transpose3d."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from capture3d.tasks.fcgf.sparse import (
    BATCH_MAX,
    SPATIAL_MAX,
    SPATIAL_MIN,
    SparseBatchNorm,
    SparseConv3d,
    SparseConvTranspose3d,
    SparseReLU,
    SparseResBlock,
    SparseTensor,
    batch_coords,
    build_kernel_map,
    cat_features,
    kernel_offsets,
    pack_keys,
    quantize,
    sparse_conv,
    sparse_conv_transpose,
    strided_coords,
    unpack_keys,
)

B, N, C_IN, C_OUT = 2, 6, 3, 4
SHIFT = -4  # grid origin: negative coordinates, a multiple of every tensor stride used here
TOL = 1e-9


# ----------------------------------------------------------------------------- helpers


def dense_to_sparse_weight(w: torch.Tensor) -> torch.Tensor:
    """conv3d weight (C_out, C_in, k, k, k) -> (K, C_in, C_out), K = ix + k*iy + k*k*iz."""
    k = w.shape[2]
    out = w.new_empty(k**3, w.shape[1], w.shape[0])
    for ix, iy, iz in itertools.product(range(k), repeat=3):
        out[ix + k * iy + k * k * iz] = w[:, :, ix, iy, iz].T
    return out


def dense_transpose_to_sparse_weight(w: torch.Tensor) -> torch.Tensor:
    """conv_transpose3d weight (C_in, C_out, k, k, k) -> (K, C_in, C_out), same K order."""
    k = w.shape[2]
    out = w.new_empty(k**3, w.shape[0], w.shape[1])
    for ix, iy, iz in itertools.product(range(k), repeat=3):
        out[ix + k * iy + k * k * iz] = w[:, :, ix, iy, iz]
    return out


def grid_index(coords: torch.Tensor, stride: int) -> tuple[torch.Tensor, ...]:
    """(M, 4) batched coords at tensor stride ``stride`` -> (b, i, j, l) dense indices."""
    spatial = (coords[:, 1:] - SHIFT) // stride
    return coords[:, 0], spatial[:, 0], spatial[:, 1], spatial[:, 2]


def full_grid_coords(n: int, stride: int = 1) -> torch.Tensor:
    """(B * n**3, 4) coords of a fully occupied n**3 grid at tensor stride ``stride``."""
    r = torch.arange(n)
    b, x, y, z = torch.meshgrid(torch.arange(B), r, r, r, indexing="ij")
    spatial = torch.stack([x, y, z], dim=-1).reshape(-1, 3) * stride + SHIFT
    return torch.cat([b.reshape(-1, 1), spatial], dim=1)


def gather(dense: torch.Tensor, coords: torch.Tensor, stride: int) -> torch.Tensor:
    """dense (B, C, n, n, n) -> (M, C) features at coords."""
    b, i, j, k = grid_index(coords, stride)
    return dense[b, :, i, j, k]


def conv_pair(
    dense_x: torch.Tensor, coords: torch.Tensor, k: int, stride: int, dense_fn, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, SparseTensor, torch.Tensor]:
    """Run dense and sparse conv on the same data with a random upstream gradient.

    Returns (dense_x.grad, dense_w.grad, sparse feature grad, sparse weight grad, sparse out, dense out).
    """
    gen = torch.Generator().manual_seed(seed)
    xd = dense_x.clone().requires_grad_(True)
    wd = torch.randn(C_OUT, C_IN, k, k, k, generator=gen, dtype=torch.float64, requires_grad=True)
    yd = dense_fn(xd, wd)  # (B, C_out, n', n', n')
    feats = gather(dense_x, coords, 1).clone().requires_grad_(True)
    ws = dense_to_sparse_weight(wd.detach()).requires_grad_(True)
    ys = sparse_conv(SparseTensor(feats, coords, 1), ws, k, stride)
    g = torch.randn(yd.shape, generator=gen, dtype=torch.float64)
    gs = gather(g, ys.coords, ys.stride)
    # the dense loss only sees outputs that exist sparsely (all of them on a full grid)
    mask = torch.zeros_like(g)
    b, i, j, k = grid_index(ys.coords, ys.stride)
    mask[b, :, i, j, k] = 1.0
    (yd * g * mask).sum().backward()
    (ys.features * gs).sum().backward()
    return xd.grad, wd.grad, feats.grad, ws.grad, ys, yd


# ----------------------------------------------------------------------------- coordinates


def test_quantize_unique_coords_mean_features_and_inverse() -> None:
    gen = torch.Generator().manual_seed(1)
    points = torch.rand(500, 3, generator=gen, dtype=torch.float64) * 2.0 - 1.0
    feats = torch.randn(500, 5, generator=gen, dtype=torch.float64)
    coords, mean, inverse = quantize(points, 0.25, feats)
    assert coords.dtype == torch.int64 and coords.shape[1] == 3
    assert torch.unique(coords, dim=0).shape[0] == coords.shape[0]
    expected = torch.floor(points / 0.25).to(torch.int64)
    assert torch.equal(coords[inverse], expected)
    assert coords.min() == -4 and coords.max() == 3
    ref = {}
    for p, f in zip(expected.tolist(), feats.numpy()):
        ref.setdefault(tuple(p), []).append(f)
    assert len(ref) == coords.shape[0]
    for c, m in zip(coords.tolist(), mean.numpy()):
        np.testing.assert_allclose(m, np.mean(ref[tuple(c)], axis=0), rtol=0, atol=1e-12)
    coords2, none, inverse2 = quantize(points, 0.25)
    assert none is None and torch.equal(coords2, coords) and torch.equal(inverse2, inverse)


def test_quantize_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        quantize(torch.zeros(4, 2), 0.1)
    with pytest.raises(ValueError):
        quantize(torch.zeros(4, 3), 0.0)


def test_batch_coords() -> None:
    a = torch.tensor([[0, 1, 2]])
    b = torch.tensor([[3, 4, 5], [6, 7, 8]])
    out = batch_coords([a, b])
    assert out.tolist() == [[0, 0, 1, 2], [1, 3, 4, 5], [1, 6, 7, 8]]


def test_pack_keys_round_trip_order_and_uniqueness() -> None:
    gen = torch.Generator().manual_seed(2)
    spatial = torch.randint(SPATIAL_MIN, SPATIAL_MAX + 1, (2000, 3), generator=gen)
    batch = torch.randint(0, BATCH_MAX + 1, (2000, 1), generator=gen)
    coords = torch.cat([batch, spatial], dim=1)
    extremes = torch.tensor(
        [
            [0, SPATIAL_MIN, SPATIAL_MIN, SPATIAL_MIN],
            [BATCH_MAX, SPATIAL_MAX, SPATIAL_MAX, SPATIAL_MAX],
            [0, 0, 0, 0],
            [0, -1, 0, 0],
            [0, 0, 0, -1],
        ]
    )
    coords = torch.cat([coords, extremes, coords[:50]], dim=0)  # with duplicates
    keys = pack_keys(coords)
    assert (keys >= 0).all()
    assert torch.equal(unpack_keys(keys), coords)
    assert torch.unique(keys).numel() == torch.unique(coords, dim=0).shape[0]
    # key order == lexicographic (batch, x, y, z) order
    assert torch.equal(unpack_keys(torch.unique(keys)), torch.unique(coords, dim=0))


@pytest.mark.parametrize(
    "bad", [[0, SPATIAL_MAX + 1, 0, 0], [0, 0, SPATIAL_MIN - 1, 0], [-1, 0, 0, 0], [BATCH_MAX + 1, 0, 0, 0]]
)
def test_pack_keys_out_of_range_raises(bad: list[int]) -> None:
    with pytest.raises(ValueError):
        pack_keys(torch.tensor([[0, 0, 0, 0], bad]))


def test_sparse_tensor_validates() -> None:
    with pytest.raises(ValueError):
        SparseTensor(torch.zeros(3, 2), torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError):
        SparseTensor(torch.zeros(2, 2), torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError):
        SparseTensor(torch.zeros(3, 2), torch.zeros(3, 4, dtype=torch.int32))


# ----------------------------------------------------------------------------- kernel map


def test_kernel_offsets_order_matches_minkowski() -> None:
    k3 = kernel_offsets(3)
    assert k3.shape == (27, 3)
    assert k3[0].tolist() == [-1, -1, -1] and k3[1].tolist() == [0, -1, -1] and k3[3].tolist() == [-1, 0, -1]
    assert k3[9].tolist() == [-1, -1, 0] and k3[13].tolist() == [0, 0, 0] and k3[26].tolist() == [1, 1, 1]
    k2 = kernel_offsets(2)
    assert k2.tolist() == [
        [0, 0, 0],
        [1, 0, 0],
        [0, 1, 0],
        [1, 1, 0],
        [0, 0, 1],
        [1, 0, 1],
        [0, 1, 1],
        [1, 1, 1],
    ]


def test_strided_coords_floor_rule() -> None:
    coords = torch.tensor([[0, -3, 0, 5], [0, -4, 1, 4], [1, -3, 0, 5], [0, 3, 3, 3]])
    out = strided_coords(coords, 1, 2)
    assert out.tolist() == [[0, -4, 0, 4], [0, 2, 2, 2], [1, -4, 0, 4]]
    out4 = strided_coords(out, 2, 2)
    assert out4.tolist() == [[0, -4, 0, 4], [0, 0, 0, 0], [1, -4, 0, 4]]


def test_kernel_map_at_range_edge_does_not_raise() -> None:
    coords = torch.tensor([[0, SPATIAL_MAX, SPATIAL_MAX, SPATIAL_MAX], [0, SPATIAL_MAX - 1, SPATIAL_MAX, SPATIAL_MAX]])
    kmap = build_kernel_map(coords, 1, 3, 1)
    assert sum(p[0].numel() for p in kmap.pairs) == 4  # 2 self pairs + 2 neighbour pairs


# ----------------------------------------------------------------------------- conv vs dense


@pytest.mark.parametrize(
    ("k", "stride", "padding"),
    [(3, 1, 1), (3, 2, 1), (2, 2, 0)],  # stride 2, k 3: padding 1 puts the kernel centre on 2*j
)
def test_sparse_conv_matches_dense_on_full_grid(k: int, stride: int, padding: int) -> None:
    gen = torch.Generator().manual_seed(10 + k + stride)
    dense_x = torch.randn(B, C_IN, N, N, N, generator=gen, dtype=torch.float64)
    coords = full_grid_coords(N)
    xg, wg, fg, wsg, ys, yd = conv_pair(
        dense_x, coords, k, stride, lambda x, w: F.conv3d(x, w, stride=stride, padding=padding)
    )
    n_out = yd.shape[2]
    assert ys.stride == stride and ys.coords.shape[0] == B * n_out**3
    torch.testing.assert_close(ys.features, gather(yd.detach(), ys.coords, stride), rtol=0, atol=TOL)
    torch.testing.assert_close(fg, gather(xg, coords, 1), rtol=0, atol=TOL)
    torch.testing.assert_close(wsg, dense_to_sparse_weight(wg), rtol=0, atol=TOL)


@pytest.mark.parametrize(("k", "padding", "output_padding"), [(3, 1, 1), (2, 0, 0)])
def test_sparse_conv_transpose_matches_dense(k: int, padding: int, output_padding: int) -> None:
    gen = torch.Generator().manual_seed(20 + k)
    n_coarse = N // 2
    dense_x = torch.randn(B, C_IN, n_coarse, n_coarse, n_coarse, generator=gen, dtype=torch.float64)
    wd = torch.randn(C_IN, C_OUT, k, k, k, generator=gen, dtype=torch.float64, requires_grad=True)
    xd = dense_x.clone().requires_grad_(True)
    yd = F.conv_transpose3d(xd, wd, stride=2, padding=padding, output_padding=output_padding)
    assert yd.shape[2:] == (N, N, N)
    coarse = full_grid_coords(n_coarse, stride=2)
    fine = full_grid_coords(N)
    feats = gather(dense_x, coarse, 2).clone().requires_grad_(True)
    ws = dense_transpose_to_sparse_weight(wd.detach()).requires_grad_(True)
    ys = sparse_conv_transpose(SparseTensor(feats, coarse, 2), ws, k, 2, fine)
    assert ys.stride == 1 and torch.equal(ys.coords, fine)
    torch.testing.assert_close(ys.features, gather(yd.detach(), fine, 1), rtol=0, atol=TOL)
    g = torch.randn(yd.shape, generator=gen, dtype=torch.float64)
    (yd * g).sum().backward()
    (ys.features * gather(g, fine, 1)).sum().backward()
    torch.testing.assert_close(feats.grad, gather(xd.grad, coarse, 2), rtol=0, atol=TOL)
    torch.testing.assert_close(ws.grad, dense_transpose_to_sparse_weight(wd.grad), rtol=0, atol=TOL)


def _partial(seed: int, occupancy: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """A partly occupied grid: dense (B, C_in, N, N, N) zero off the coords, and the (M, 4) coords."""
    gen = torch.Generator().manual_seed(seed)
    occupied = torch.rand(B, N, N, N, generator=gen) < occupancy
    dense_x = torch.randn(B, C_IN, N, N, N, generator=gen, dtype=torch.float64) * occupied[:, None]
    idx = occupied.nonzero()  # (M, 4) [b, i, j, l]
    coords = torch.cat([idx[:, :1], idx[:, 1:] + SHIFT], dim=1)
    return dense_x, coords


@pytest.mark.parametrize(
    ("k", "stride", "dense_fn"),
    [
        (3, 1, lambda x, w: F.conv3d(x, w, padding=1)),
        (2, 1, lambda x, w: F.conv3d(F.pad(x, (0, 1, 0, 1, 0, 1)), w)),  # even k: offsets 0..k-1
        (3, 2, lambda x, w: F.conv3d(x, w, stride=2, padding=1)),
    ],
)
def test_sparse_conv_partial_occupancy_matches_masked_dense(k: int, stride: int, dense_fn) -> None:
    dense_x, coords = _partial(30 + k + stride, occupancy=0.4 if stride == 1 else 0.15)  # stride 2: empty cells
    xg, wg, fg, wsg, ys, yd = conv_pair(dense_x, coords, k, stride, dense_fn, seed=3)
    if stride == 1:
        assert torch.equal(ys.coords, coords)  # submanifold: outputs only on the input coords
    else:
        assert torch.equal(ys.coords, strided_coords(coords, 1, stride))
    assert ys.coords.shape[0] < B * (N // stride) ** 3
    torch.testing.assert_close(ys.features, gather(yd.detach(), ys.coords, stride), rtol=0, atol=TOL)
    torch.testing.assert_close(fg, gather(xg, coords, 1), rtol=0, atol=TOL)
    torch.testing.assert_close(wsg, dense_to_sparse_weight(wg), rtol=0, atol=TOL)


# ----------------------------------------------------------------------------- modules


def test_modules_encoder_decoder_with_skip() -> None:
    torch.manual_seed(4)
    dense_x, coords = _partial(40)
    x = SparseTensor(gather(dense_x, coords, 1).float(), coords, 1)
    enc = SparseConv3d(C_IN, 8, 3, stride=1)
    down = SparseConv3d(8, 16, 2, stride=2, bias=True)
    block = SparseResBlock(16)
    up = SparseConvTranspose3d(16, 8, 2, stride=2)
    bn, relu = SparseBatchNorm(8), SparseReLU()
    e = relu(bn(enc(x)))
    d = block(down(e))
    assert d.stride == 2 and d.features.shape == (d.coords.shape[0], 16)
    u = up(d, e)
    assert torch.equal(u.coords, coords) and u.stride == 1
    cat = cat_features(u, e)
    assert cat.features.shape == (coords.shape[0], 16)
    assert (block(d).features >= 0).all()
    cat.features.square().mean().backward()
    for module in (enc, down, block, up):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the module computes exactly the functional conv with its parameters
    y = down(e)
    ref = sparse_conv(e, down.weight, 2, 2, down.bias)
    torch.testing.assert_close(y.features, ref.features)
    with pytest.raises(ValueError):
        cat_features(u, d)


def test_res_block_is_identity_plus_residual() -> None:
    torch.manual_seed(5)
    dense_x, coords = _partial(50)
    x = SparseTensor(gather(dense_x, coords, 1).float().abs(), coords, 1)
    block = SparseResBlock(C_IN).eval()
    with torch.no_grad():
        block.norm2.bn.weight.zero_()  # the residual branch vanishes: relu(x) = x for x >= 0
        y = block(x)
    torch.testing.assert_close(y.features, x.features)


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu() -> None:
    dense_x, coords = _partial(60)
    gen = torch.Generator().manual_seed(6)
    feats = gather(dense_x, coords, 1)
    w3 = torch.randn(27, C_IN, C_OUT, generator=gen, dtype=torch.float64)
    w2 = torch.randn(8, C_OUT, C_IN, generator=gen, dtype=torch.float64)
    results = {}
    for device in ("cpu", "cuda"):
        x = SparseTensor(feats.to(device), coords.to(device), 1)
        y = sparse_conv(x, w3.to(device), 3, 2)
        z = sparse_conv_transpose(y, w2.to(device), 2, 2, x.coords)
        s = sparse_conv(x, w3.to(device), 3, 1)
        results[device] = (y, z, s)
    for cpu, gpu in zip(results["cpu"], results["cuda"]):
        assert torch.equal(cpu.coords, gpu.coords.cpu())
        torch.testing.assert_close(cpu.features, gpu.features.cpu(), rtol=0, atol=1e-9)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fcgf_network_cuda_matches_cpu_forward_and_backward() -> None:
    from capture3d.tasks.fcgf.model import ResUNetBN2C, voxelize_for_fcgf

    rng = np.random.default_rng(0)
    u, v = rng.uniform(0.0, 2.0, size=(2, 20000))
    points = np.stack([u, v, 0.2 * np.sin(3 * u) * np.cos(2 * v)], 1)  # (N, 3) a wavy 2 m sheet
    torch.manual_seed(0)
    model = ResUNetBN2C(1, 32, bn_momentum=0.05, conv1_kernel_size=5)
    out = {}
    for device in ("cpu", "cuda"):
        net = model.to(device).train()
        net.zero_grad()
        x, _ = voxelize_for_fcgf(points, 0.05, device)
        feats = net(x).features  # (M, 32)
        (feats * torch.linspace(-1, 1, 32, device=device)).sum().backward()
        out[device] = (feats.detach().cpu(), {k: p.grad.detach().cpu() for k, p in net.named_parameters()})
    torch.testing.assert_close(out["cuda"][0], out["cpu"][0], rtol=1e-3, atol=1e-4)
    for k, g in out["cpu"][1].items():
        torch.testing.assert_close(out["cuda"][1][k], g, rtol=1e-2, atol=1e-3, msg=k)
