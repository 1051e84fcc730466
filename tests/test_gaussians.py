"""3DGS building blocks: the tile rasterizer against a dense float64 reference and against gsplat's
own PyTorch reference math; SH; PLY round trip; densification bookkeeping; CUDA backend agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from capture3d.tasks.nvs.gaussians.dense import rasterize_dense
from capture3d.tasks.nvs.gaussians.model import LearningRates, make_optimizers
from capture3d.tasks.nvs.gaussians.ply import (
    ply_property_names,
    read_gaussians_ply,
    write_gaussians_ply,
)
from capture3d.tasks.nvs.gaussians.project import covariance, project
from capture3d.tasks.nvs.gaussians.rasterize import rasterize, tile_pairs
from capture3d.tasks.nvs.gaussians.render import render, sh_colors
from capture3d.tasks.nvs.gaussians.sh import eval_sh
from capture3d.tasks.nvs.gaussians.strategy import (
    DensifyConfig,
    DensifyState,
    refine,
    reset_opacity,
)
from tests.gaussian_helpers import camera, random_splats, ring_cameras

W, H = 48, 36


def _scene(seed: int, dtype=torch.float64, n: int = 120):
    splats = {k: v.requires_grad_() for k, v in random_splats(n, 2, seed, dtype).items()}
    K, pose = ring_cameras(5, W, H)[seed % 5]
    return splats, camera(K, pose, W, H, dtype)


def _render_with(fn, splats, cam, background, **kw):
    scales, opac = torch.exp(splats["scales"]), torch.sigmoid(splats["opacities"])
    proj = project(splats["means"], splats["quats"], scales, opac, cam.viewmat, cam.K, cam.width, cam.height)
    colors = sh_colors(splats, -cam.viewmat[:3, :3].T @ cam.viewmat[:3, 3], 2)
    return fn(proj, colors, opac, cam.width, cam.height, background, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tile", [4, 8, 16])
def test_tile_rasterizer_matches_dense_reference_images_and_gradients(seed, tile):
    splats, cam = _scene(seed)
    bg = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    weights = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    results = []
    for fn, kw in ((rasterize, {"tile": tile}), (rasterize_dense, {})):
        img, alpha = _render_with(fn, splats, cam, bg, **kw)
        loss = (img * weights).sum() + (alpha * weights[..., 0]).sum()
        grads = torch.autograd.grad(loss, list(splats.values()))
        results.append((img.detach(), alpha.detach(), grads))
    (i1, a1, g1), (i2, a2, g2) = results
    assert a2.max() > 0.5, "scene should cover part of the image"
    assert torch.allclose(i1, i2, atol=1e-10)
    assert torch.allclose(a1, a2, atol=1e-10)
    for name, x, y in zip(splats, g1, g2):
        assert torch.allclose(x, y, atol=1e-8 * max(1.0, float(y.abs().max()))), name
        assert float(y.abs().max()) > 0, name


def test_opacity_aware_footprint_culls_nothing_visible():
    """Every pair the tile culling drops has alpha < 1/255 at every pixel: the dense image is unchanged
    when the Gaussians are restricted to their bounding boxes, even for large opaque ones."""
    splats, cam = _scene(3, n=40)
    with torch.no_grad():
        splats["opacities"].fill_(6.0)  # sigmoid -> 0.9975
        splats["scales"].add_(1.0)
    img_t, _ = _render_with(rasterize, splats, cam, None, tile=8)
    img_d, _ = _render_with(rasterize_dense, splats, cam, None)
    assert float(img_d.max()) > 0.3
    assert torch.allclose(img_t.double(), img_d, atol=1e-10)


def test_float32_rasterizer_close_to_float64_reference():
    splats64, cam64 = _scene(4, n=300)
    splats = {k: v.detach().float() for k, v in splats64.items()}
    cam = type(cam64)(cam64.K.float(), cam64.viewmat.float(), W, H)
    img, _ = _render_with(rasterize, splats, cam, torch.zeros(3))
    ref, _ = _render_with(rasterize_dense, splats64, cam64, torch.zeros(3, dtype=torch.float64))
    assert float((img.double() - ref).abs().max()) < 2e-4


def test_projection_and_covariance_match_gsplat_reference():
    gs = pytest.importorskip("gsplat.cuda._torch_impl")
    splats, cam = _scene(5, n=200)
    quats, scales = splats["quats"].detach(), torch.exp(splats["scales"].detach())
    covar_ref, _ = gs._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    assert torch.allclose(covariance(quats, scales), covar_ref, atol=1e-12)
    opac = torch.full((200,), 0.9, dtype=torch.float64)
    proj = project(splats["means"].detach(), quats, scales, opac, cam.viewmat, cam.K, W, H)
    radii, means2d, depths, conics, _ = gs._fully_fused_projection(
        splats["means"].detach(), covar_ref, cam.viewmat[None], cam.K[None], W, H
    )
    ok = proj.visible & (radii[0] > 0).all(-1)
    assert int(ok.sum()) > 50
    assert torch.allclose(proj.means2d[ok], means2d[0][ok], atol=1e-9)
    assert torch.allclose(proj.depths[ok], depths[0][ok], atol=1e-12)
    assert torch.allclose(proj.conics[ok], conics[0][ok], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_spherical_harmonics_match_gsplat_reference(degree):
    gs = pytest.importorskip("gsplat.cuda._torch_impl")
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(500, 3, generator=g, dtype=torch.float64)
    coeffs = torch.randn(500, 16, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(eval_sh(degree, dirs, coeffs), gs._spherical_harmonics(degree, dirs, coeffs), atol=1e-12)


def test_compiled_compositing_matches_eager():
    splats, cam = _scene(6, dtype=torch.float32, n=200)
    outs = []
    for compiled in (False, True):
        img, alpha = _render_with(rasterize, splats, cam, torch.zeros(3), tile=8, compiled=compiled)
        grads = torch.autograd.grad(img.sum(), [splats["means"], splats["opacities"]])
        outs.append((img.detach(), grads))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1]):
        assert torch.allclose(a, b, atol=1e-4 * max(1.0, float(b.abs().max())))


def test_tile_pairs_sorted_by_tile_then_depth():
    splats, cam = _scene(7, n=80)
    proj = project(
        splats["means"],
        splats["quats"],
        torch.exp(splats["scales"]),
        torch.sigmoid(splats["opacities"]),
        cam.viewmat,
        cam.K,
        W,
        H,
    )
    gid, tid, _, _ = tile_pairs(proj, W, H, 8)
    assert len(gid) > 0 and torch.all(tid[1:] >= tid[:-1])
    same = tid[1:] == tid[:-1]
    d = proj.depths.detach()
    assert torch.all(d[gid[1:]][same] >= d[gid[:-1]][same])


def test_ply_round_trip_and_layout(tmp_path):
    splats = {k: v.float() for k, v in random_splats(50, 3, 0).items()}
    path = tmp_path / "g.ply"
    assert write_gaussians_ply(path, splats) == 50
    header = path.read_bytes().split(b"end_header\n")[0].decode()
    names = [line.split()[2] for line in header.splitlines() if line.startswith("property")]
    assert names == ply_property_names(45)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    back = read_gaussians_ply(path)
    for k, v in splats.items():
        assert torch.equal(back[k], v), k
    # channel-major f_rest: f_rest_0..14 are the red coefficients 1..15
    raw = np.frombuffer(path.read_bytes()[len(header) + len("end_header\n") :], dtype="<f4").reshape(50, -1)
    assert np.array_equal(raw[:, 9:24], splats["shN"][:, :, 0].numpy())


def _densify_config(**kw) -> DensifyConfig:
    base = dict(
        grad_threshold=0.0002,
        percent_dense=0.01,
        split_scale_factor=1.6,
        prune_opacity=0.005,
        prune_scale3d=0.1,
        prune_scale2d=0.15,
        refine_start=0,
        refine_stop=1000,
        refine_every=100,
        reset_every=3000,
        reset_opacity=0.01,
        max_gaussians=10_000,
    )
    return DensifyConfig(**{**base, **kw})


def _params(n: int) -> torch.nn.ParameterDict:
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v.float()) for k, v in random_splats(n, 1, 0).items()})


def test_refine_clones_small_splits_large_prunes_transparent_and_keeps_adam_state_aligned():
    splats = _params(6)
    with torch.no_grad():
        splats["scales"][:3] = math.log(0.001)  # small: clone
        splats["scales"][3:] = math.log(0.5)  # large: split
        splats["opacities"][:] = 2.0
        splats["opacities"][5] = -10.0  # transparent: pruned (it is also below the gradient threshold)
    opts = make_optimizers(splats, LearningRates(1e-4, 1e-6, 5e-3, 1e-3, 5e-2, 2.5e-3, 1e-4), 1.0)
    (sum(v.sum() for v in splats.values())).backward()
    for o in opts.values():
        o.step()
    state = DensifyState.empty(6, torch.device("cpu"))
    state.grad2d[:] = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    state.count[:] = 1
    means_before = splats["means"].detach().clone()
    scales_before = splats["scales"].detach().clone()
    report = refine(splats, opts, state, 100, _densify_config(), 1.0, torch.Generator().manual_seed(0))
    assert report == {"cloned": 2, "split": 2, "pruned": 1, "total": 9}
    n = splats["means"].shape[0]
    assert n == 9  # 6 + 2 clones + 2 x 2 children - 2 split parents - 1 pruned
    assert state.grad2d.shape == (n,)
    for name, p in splats.items():
        st = opts[name].state[p]
        assert st["exp_avg"].shape == p.shape and opts[name].param_groups[0]["params"][0] is p
    # split children have scales / 1.6 and lie near their parents
    children = splats["scales"].detach()[-4:]
    expected = (scales_before[3:5] - math.log(1.6)).repeat(2, 1)
    assert torch.allclose(children, expected, atol=1e-6)
    assert torch.cdist(splats["means"].detach()[-4:], means_before[3:5]).min(1).values.max() < 2.0


def test_growth_capped_by_max_gaussians_and_opacity_reset():
    splats = _params(20)
    with torch.no_grad():
        splats["scales"][:] = math.log(0.001)
        splats["opacities"][:] = 3.0
    opts = make_optimizers(splats, LearningRates(1e-4, 1e-6, 5e-3, 1e-3, 5e-2, 2.5e-3, 1e-4), 1.0)
    state = DensifyState.empty(20, torch.device("cpu"))
    state.grad2d[:] = torch.linspace(1, 2, 20)
    state.count[:] = 1
    refine(splats, opts, state, 100, _densify_config(max_gaussians=25), 1.0, torch.Generator().manual_seed(0))
    assert splats["means"].shape[0] == 25
    reset_opacity(splats, opts, 0.01)
    assert float(torch.sigmoid(splats["opacities"]).max()) <= 0.01 + 1e-6


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_backend_agrees_with_cpu_backend():
    pytest.importorskip("gsplat")
    splats = {k: v.float() for k, v in random_splats(2000, 3, 0, spread=1.0, size=0.05).items()}
    K, pose = ring_cameras(4, 160, 120)[0]
    cam = camera(K, pose, 160, 120, torch.float32)
    bg = torch.tensor([0.1, 0.2, 0.3])
    cpu = render(splats, cam, 3, bg, "cpu").image
    dev = torch.device("cuda")
    splats_d = {k: v.to(dev) for k, v in splats.items()}
    cam_d = type(cam)(cam.K.to(dev), cam.viewmat.to(dev), 160, 120)
    gpu = render(splats_d, cam_d, 3, bg.to(dev), "cuda").image.cpu()
    assert float((cpu - gpu).abs().mean()) < 2e-3
    assert float((cpu - gpu).abs().max()) < 0.1
