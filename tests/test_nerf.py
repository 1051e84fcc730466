"""NeRF: volume-rendering quadrature, importance sampling and NDC rays; a small hash-grid fit of an
analytic scene improves held-out PSNR; an interrupted fit resumes to exactly the uninterrupted
curve; an exploding fit raises and keeps its last good state; exported checkpoints round-trip and
refuse garbage in one line."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from capture3d.tasks.nvs.fit_nerf import (
    NerfFitConfig,
    fit_nerf,
    load_nerf_checkpoint,
    save_nerf_checkpoint,
)
from capture3d.tasks.nvs.image_metrics import psnr
from capture3d.tasks.nvs.nerf_model import HashGrid, NerfModelConfig, build_nerf
from capture3d.tasks.nvs.nerf_render import (
    camera_rays,
    forward_facing,
    normalize_rays,
    render_image,
    sample_pdf,
    scene_normalization,
    stratified_samples,
    volume_render,
    world_to_model,
)
from capture3d.tasks.nvs.scene import NvsScene, PosedView

SIZE = 32
K = np.array([[36.0, 0.0, SIZE / 2], [0.0, 36.0, SIZE / 2], [0.0, 0.0, 1.0]])
SPHERES = [  # centre, radius, colour
    (np.array([0.0, 0.0, 0.0]), 0.6, np.array([0.9, 0.2, 0.1])),
    (np.array([0.7, 0.4, 0.3]), 0.35, np.array([0.1, 0.8, 0.2])),
    (np.array([-0.5, 0.6, -0.3]), 0.4, np.array([0.2, 0.3, 0.9])),
]
SMALL_MODEL = NerfModelConfig(
    encoding="hash",
    hash_levels=8,
    hash_log2_table_size=14,
    hash_base_resolution=4,
    hash_finest_resolution=96,
    width=32,
    geo_feat_dim=15,
    color_width=32,
    color_depth=1,
)


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """Small ops: one intra-op thread avoids oversubscription on a busy 2-core machine (2 threads
    there made the fit test 18x slower); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _look_at(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV cam_from_world (4, 4) for a camera at ``center`` looking at ``target`` (world z up)."""
    z = (target - center) / np.linalg.norm(target - center)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, -R @ center
    return T


def _raycast(cam_from_world: np.ndarray) -> np.ndarray:
    """The analytic scene: shaded coloured spheres on black, (SIZE, SIZE, 3) float32."""
    v, u = np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5, indexing="ij")
    d_cam = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3) @ np.linalg.inv(K).T
    R, t = cam_from_world[:3, :3], cam_from_world[:3, 3]
    d = d_cam @ R
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o = -R.T @ t
    best = np.full(len(d), np.inf)
    img = np.zeros((len(d), 3))
    light = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    for c, r, col in SPHERES:
        oc = o - c
        b = d @ oc
        disc = b**2 - (oc @ oc - r * r)
        hit = disc > 0
        tt = np.where(hit, -b - np.sqrt(np.maximum(disc, 0)), np.inf)
        closer = hit & (tt > 0) & (tt < best)
        n = (o + np.where(closer, tt, 0)[:, None] * d - c) / r
        shade = 0.35 + 0.65 * np.clip(n @ light, 0, 1)
        img[closer] = (shade[:, None] * col)[closer]
        best[closer] = tt[closer]
    return img.reshape(SIZE, SIZE, 3).astype(np.float32)


@pytest.fixture(scope="module")
def spheres() -> NvsScene:
    """10 views on a ring of radius 3 around the spheres (every 5th elevated); no sparse points."""
    views = []
    for i in range(10):
        a = 2 * math.pi * i / 10
        c = np.array([3.0 * math.cos(a), 3.0 * math.sin(a), 0.8 if i % 2 else -0.4])
        T = _look_at(c, np.zeros(3))
        views.append(PosedView(f"v{i:02d}", _raycast(T), K.copy(), T))
    return NvsScene(tuple(views), np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), None, "synthetic")


def _config(iterations: int, **kw: object) -> NerfFitConfig:
    base = dict(
        model=SMALL_MODEL,
        iterations=iterations,
        rays_per_batch=256,
        num_coarse=24,
        num_fine=24,
        learning_rate=2e-2,
        lr_final=2e-3,
        ndc="auto",
        background="black",
        checkpoint_every=1000,
        max_seconds=0.0,
        log_every=1,
    )
    base.update(kw)
    return NerfFitConfig(**base)  # type: ignore[arg-type]


def test_hash_grid_matches_a_reference_interpolation() -> None:
    """Dense and hashed levels (int32 hashing) against Instant-NGP's formula in Python integers."""
    torch.manual_seed(0)
    grid = HashGrid(levels=4, log2_table_size=12, features=2, base=4, finest=200)
    assert grid.dense[:2] == [True, True] and not any(grid.dense[2:])
    for table in grid.tables:
        torch.nn.init.uniform_(table, -1, 1)
    x = torch.cat([torch.rand(40, 3) * 2 - 1, torch.tensor([[1.0, 1.0, -1.0], [-1.0, 0.999, 1.0]])])
    got = grid(x)  # (N, 8)
    want = np.zeros((len(x), 8))
    for lvl, (res, dense, table) in enumerate(zip(grid.res, grid.dense, grid.tables, strict=True)):
        tab = table.detach().double().numpy()
        for n, p in enumerate(x.double().numpy()):
            pos = (p + 1) / 2 * res
            lo = np.minimum(np.floor(pos), res - 1).astype(int)
            f = pos - lo
            for c in np.ndindex(2, 2, 2):
                v = [int(lo[a] + c[a]) for a in range(3)]
                i = (
                    v[0] + v[1] * (res + 1) + v[2] * (res + 1) ** 2
                    if dense
                    else (v[0] ^ v[1] * 2654435761 ^ v[2] * 805459861) % 4096
                )
                wgt = np.prod([f[a] if c[a] else 1 - f[a] for a in range(3)])
                want[n, 2 * lvl : 2 * lvl + 2] += wgt * tab[:, i]
    assert torch.allclose(got.double(), torch.from_numpy(want), atol=1e-5)
    density, rgb = build_nerf(NerfModelConfig(encoding="positional", width=32, depth=4, skip=True))(x, x)
    assert density.shape == (42,) and rgb.shape == (42, 3) and bool((density >= 0).all())
    assert bool(((rgb >= 0) & (rgb <= 1)).all())


def test_volume_render_weights_and_opaque_slab() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.sort(torch.rand(64, 40, generator=g) * 5, -1).values
    dens = torch.rand(64, 40, generator=g) * 3
    out = volume_render(dens, torch.rand(64, 40, 3, generator=g), t, torch.ones(64), torch.full((64,), 0.1), 0.0)
    assert bool((out["weights"] >= 0).all()) and bool((out["acc"] <= 1 + 1e-6).all())
    # an opaque slab at t in [2, 3] in front of a green one: the ray sees red at depth ~2
    t = torch.linspace(0, 5, 501)[None]
    slab = ((t >= 2) & (t <= 3)).float()
    rgb = torch.zeros(1, 501, 3)
    rgb[..., 0] = slab
    rgb[..., 1] = (t > 3).float()
    out = volume_render(slab * 1e3 + (t > 3).float() * 1e3, rgb, t, torch.ones(1), torch.zeros(1), 1.0)
    assert torch.allclose(out["rgb"], torch.tensor([[1.0, 0.0, 0.0]]), atol=1e-4)
    assert abs(float(out["depth"][0]) - 2.0) < 0.02 and abs(float(out["acc"][0]) - 1) < 1e-4
    empty = volume_render(torch.zeros(1, 501), rgb, t, torch.ones(1), torch.zeros(1), 1.0)
    assert torch.allclose(empty["rgb"], torch.ones(1, 3)) and float(empty["acc"][0]) == 0.0


def test_pdf_sampling_concentrates_at_a_density_peak() -> None:
    bins = torch.linspace(0, 10, 101).expand(8, 101)  # 100 bins of width 0.1
    weights = torch.zeros(8, 100)
    weights[:, 40:42] = 1.0  # all mass in [4.0, 4.2]
    g = torch.Generator().manual_seed(1)
    s = sample_pdf(bins, weights, 256, g)
    assert s.shape == (8, 256)
    inside = ((s >= 4.0) & (s <= 4.2)).float().mean()
    assert float(inside) > 0.9  # the 1e-5 floor spreads < 10 % over the other 98 bins
    det = sample_pdf(bins[:1], torch.ones(1, 100), 11)  # a uniform pdf: evenly spread quantiles
    assert torch.allclose(det[0], torch.linspace(0, 10, 11), atol=1e-4)
    # stratified: one sample per bin, inside [near, far]
    st = stratified_samples(torch.full((4,), 2.0), torch.full((4,), 6.0), 8, g)
    assert bool((st[:, 1:] >= st[:, :-1]).all()) and float(st.min()) >= 2 and float(st.max()) <= 6


def test_ndc_ray_passes_through_the_ndc_image_of_its_points() -> None:
    views = []
    for i, dx in enumerate([-0.3, 0.0, 0.25]):
        c = np.array([dx, 0.0, 0.1 * i])
        T = _look_at(c, c + np.array([0.05 * i, 1.0, 0.0]))  # all looking roughly along world +y
        views.append(PosedView(f"f{i}", np.zeros((SIZE, SIZE + 8, 3), np.float32), K.copy(), T))
    assert forward_facing(views)
    norm = scene_normalization(views, np.zeros((0, 3)), (2.0, 20.0), ndc=True)
    o_w, d_w = camera_rays(views[2].K, views[2].cam_from_world, SIZE, SIZE + 8)
    o, d, _, near, far = normalize_rays(o_w, d_w, norm)
    for depth in (2.5, 7.0, 19.0):  # world points on the rays (camera depth ``depth``)
        p = world_to_model(o_w + depth * d_w, norm)  # (R, 3)
        tt = (p[:, 2] - o[:, 2]) / d[:, 2]  # where the NDC ray reaches the point's NDC depth
        on_ray = o + tt[:, None] * d
        assert torch.allclose(on_ray, p, atol=1e-4)
        assert bool(((tt > 0) & (tt < 1)).all()) and bool((p[:, 2].abs() < 1).all())
    # the NDC box: the image corners of the reference-like view reach |x|, |y| ~ 1 at infinity
    assert float((o + d)[:, :2].abs().max()) < 1.5 and bool((near == 0).all() and (far == 1).all())


def test_box_rays_stay_in_the_model_box(spheres: NvsScene) -> None:
    norm = scene_normalization(spheres.views, spheres.points, None, ndc=False)
    assert norm.mode == "box" and np.allclose(norm.center, 0, atol=1e-6)
    assert abs(norm.scale - 1 / math.hypot(3, 0.8)) < 1e-6  # 1 / the farthest camera's distance
    o, d, _, near, far = normalize_rays(*camera_rays(K, spheres.views[3].cam_from_world, SIZE, SIZE), norm)
    t = stratified_samples(near, far, 16)
    pts = o[:, None] + t[..., None] * d[:, None]
    assert float(pts.abs().max()) <= 1 + 1e-4 and bool((far > near).all())


def test_hash_nerf_fit_improves_held_out_psnr(spheres: NvsScene, tmp_path: Path) -> None:
    train, test = [v for i, v in enumerate(spheres.views) if i % 5], [spheres.views[0], spheres.views[5]]
    config = _config(250, log_every=25)
    fresh = fit_nerf(train, spheres, dataclasses.replace(config, iterations=0), 0, "cpu", None)
    before = np.mean(
        [float(psnr(render_image(fresh.model, v, fresh.render_config), torch.from_numpy(v.image))) for v in test]
    )
    result = fit_nerf(train, spheres, config, 0, "cpu", None)
    after = np.mean(
        [float(psnr(render_image(result.model, v, result.render_config), torch.from_numpy(v.image))) for v in test]
    )
    assert result.stopped_reason == "completed" and result.iterations == 250
    assert result.curve[-1]["psnr"] > result.curve[0]["psnr"] + 5
    assert after > before + 5, (before, after)


class _Stop(Exception):
    pass


def test_interrupted_fit_resumes_to_the_same_curve(spheres: NvsScene, tmp_path: Path) -> None:
    config = _config(12, checkpoint_every=3, rays_per_batch=64, num_coarse=8, num_fine=8)
    train = list(spheres.views[1:5])
    whole = fit_nerf(train, spheres, config, 3, "cpu", tmp_path / "a.pt")

    def stop(row: dict[str, float]) -> None:
        if row["iteration"] == 8:
            raise _Stop

    with pytest.raises(_Stop):
        fit_nerf(train, spheres, config, 3, "cpu", tmp_path / "b.pt", on_log=stop)
    resumed = fit_nerf(train, spheres, config, 3, "cpu", tmp_path / "b.pt")
    assert resumed.resumed_from == 6  # the last checkpoint before the interruption
    key = [(r["iteration"], r["loss"], r["psnr"]) for r in whole.curve]
    assert [(r["iteration"], r["loss"], r["psnr"]) for r in resumed.curve] == key
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # another seed does not resume this state: it starts afresh (with a warning)
    other = fit_nerf(
        train, spheres, _config(2, rays_per_batch=64, num_coarse=8, num_fine=8), 4, "cpu", tmp_path / "b.pt"
    )
    assert other.resumed_from == 0 and len(other.curve) == 2


def test_exploding_fit_raises_and_keeps_the_last_good_state(spheres: NvsScene, tmp_path: Path) -> None:
    config = _config(
        20, learning_rate=1e30, lr_final=1e30, checkpoint_every=1, rays_per_batch=64, num_coarse=8, num_fine=8
    )
    state = tmp_path / "state.pt"
    with pytest.raises(ValueError, match="NeRF loss became") as err:
        fit_nerf(list(spheres.views[1:5]), spheres, config, 0, "cpu", state)
    assert "\n" not in str(err.value)
    saved = torch.load(state, weights_only=True)
    assert 1 <= saved["iteration"] < 20 and len(saved["curve"]) == saved["iteration"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _StageConfig(NerfFitConfig):
    data_path: str


def test_checkpoint_round_trip_and_garbage(spheres: NvsScene, tmp_path: Path) -> None:
    config = _config(3, rays_per_batch=64, num_coarse=8, num_fine=8)
    result = fit_nerf(list(spheres.views[1:5]), spheres, config, 0, "cpu", None)
    path = tmp_path / "nerf.pt"
    save_nerf_checkpoint(path, result.model, config, result.normalization)
    loaded = load_nerf_checkpoint(path, "cpu")
    assert loaded.config == config and loaded.render_config == result.render_config
    save_nerf_checkpoint(path, result.model, _StageConfig(**config.__dict__, data_path="x"), result.normalization)
    assert load_nerf_checkpoint(path).config == config  # a subclass's extra fields are not stored
    view = spheres.views[0]
    image = render_image(loaded.model, view, loaded.render_config)
    assert torch.equal(image, render_image(result.model, view, result.render_config))
    camera = (view.K, view.cam_from_world, SIZE, SIZE)  # other chunks: other float summation order only
    assert torch.allclose(image, render_image(result.model, camera, result.render_config, chunk=333), atol=1e-5)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    for p in (bad, tmp_path / "missing.pt"):
        with pytest.raises(ValueError) as err:
            load_nerf_checkpoint(p)
        assert "\n" not in str(err.value)
    torch.save({"format": "something else"}, bad)
    with pytest.raises(ValueError, match="not a capture3d NeRF checkpoint"):
        load_nerf_checkpoint(bad)
