"""NeRF rays, sampling and volume rendering (Mildenhall et al. 2020), CPU or CUDA.

Inputs: pinhole cameras (a :class:`~capture3d.tasks.nvs.scene.PosedView`, or K, cam_from_world,
H, W in the OpenCV convention, pixel centres at integer + 0.5), a field from
:mod:`capture3d.tasks.nvs.nerf_model` and a :class:`NerfRenderConfig`. Outputs: world rays
(:func:`camera_rays`), rays in the model's box (:func:`normalize_rays`), per-ray colour, depth and
opacity (:func:`render_rays`) and whole images (:func:`render_image`, (H, W, 3) in [0, 1]).

World -> model coordinates (:class:`SceneNormalization`): ``local = scale * R @ (X - center)``.

* ``mode="ndc"`` (forward-facing captures with depth bounds, LLFF): ``R`` and ``center`` are the
  mean camera (LLFF's ``recenter_poses``, kept in the OpenCV convention: x right, y down, z
  forward) and ``scale = 1 / (0.75 * near_bound)`` (LLFF's ``bd_factor``), so every depth bound
  is > 1. NeRF's NDC formulas assume an OpenGL camera looking down -z, so the local frame is
  flipped to (x, -y, -z) first; origins are then moved to the near plane z = -1 and mapped with
  :func:`ndc_rays` using the first training camera's 2 fx / W and 2 fy / H (its principal
  point is taken as centred: NDC is only a reparametrisation, so an offset merely shifts the
  box). ``near_bound`` is ``depth_bounds[0]``, else the 1st percentile of the points' depths.
  Rays are sampled linearly in NDC t in [0, 1] (near plane to infinity; nothing nearer than
  0.75 near_bound to the mean camera is modelled); the last interval is 1e10 long. Points of
  other cameras' rays that fall outside [-1, 1]^3 are clamped onto the hash grid's border.
* ``mode="box"`` (everything else): ``R = I``; ``center`` and ``1 / scale`` (half the box side)
  come from the sparse points (1st..99th percentile per axis, times 1.1) or, without points,
  from the cameras (the point nearest all optical axes, and the largest camera distance to it).
  Rays keep the world depth as their parameter (dirs have camera-z component 1); their range
  [near, far] is the scene's (depth bounds, else 0.8 x / 1.2 x the 1st / 99th percentile of the
  points' depths, else 0.02 / 3 radii) clipped to the box [-1, 1]^3, so samples never leave it.

View directions given to the model are the normalised local (pre-NDC) directions. Sampling:
stratified (uniform jitter in equal bins with a generator, bin midpoints without) for the coarse
pass, then inverse-CDF sampling of the coarse weights (:func:`sample_pdf`) for the fine pass,
which evaluates the union of both sets. With one shared network the coarse pass runs without
gradients; with ``coarse_network`` it gets its own loss term (``rgb_coarse``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from capture3d.tasks.nvs.nerf_model import NerfModel
from capture3d.tasks.nvs.scene import PosedView

logger = logging.getLogger(__name__)

Camera = tuple[np.ndarray, np.ndarray, int, int]  # K (3, 3), cam_from_world (4, 4), H, W
NDC_LAST_DELTA = 1e10


@dataclass(frozen=True)
class SceneNormalization:
    """World -> model box (module docstring); near / far: the ray-parameter range (box mode)."""

    mode: Literal["ndc", "box"]
    rotation: tuple[tuple[float, ...], ...]  # (3, 3) local_from_world
    center: tuple[float, ...]  # (3,) world
    scale: float
    near: float
    far: float
    ndc_ax: float = 0.0  # 2 fx / W of the NDC reference camera
    ndc_ay: float = 0.0  # 2 fy / H

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (list(map(list, v)) if k == "rotation" else list(v) if k == "center" else v)
            for k, v in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneNormalization:
        return cls(
            d["mode"],
            tuple(tuple(float(x) for x in r) for r in d["rotation"]),
            tuple(float(x) for x in d["center"]),
            float(d["scale"]),
            float(d["near"]),
            float(d["far"]),
            float(d["ndc_ax"]),
            float(d["ndc_ay"]),
        )


@dataclass(frozen=True)
class NerfRenderConfig:
    normalization: SceneNormalization
    num_coarse: int
    num_fine: int
    background: Literal["black", "white"] = "black"


def forward_facing(views: tuple[PosedView, ...] | list[PosedView], max_angle_deg: float = 45.0) -> bool:
    """Whether every camera looks within ``max_angle_deg`` of the mean viewing direction."""
    fwd = np.stack([v.cam_from_world[2, :3] for v in views])  # (N, 3) optical axes in world
    mean = fwd.mean(0) / max(np.linalg.norm(fwd.mean(0)), 1e-12)
    return bool((fwd @ mean).min() >= np.cos(np.radians(max_angle_deg)))


def scene_normalization(
    views: tuple[PosedView, ...] | list[PosedView],
    points: np.ndarray,
    depth_bounds: tuple[float, float] | None,
    ndc: bool,
) -> SceneNormalization:
    """The world -> model mapping of the module docstring for these (training) views."""
    rots = np.stack([v.cam_from_world[:3, :3] for v in views])  # (N, 3, 3)
    centers = np.stack([v.center for v in views])  # (N, 3)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    depths = np.concatenate([(pts @ v.cam_from_world[:3, :3].T + v.cam_from_world[:3, 3])[:, 2] for v in views])
    depths = depths[depths > 0]
    if ndc:
        near = depth_bounds[0] if depth_bounds is not None else (np.percentile(depths, 1) if depths.size else None)
        if near is None or near <= 0:
            raise ValueError("NDC rays need the scene's depth bounds or sparse points in front of the cameras")
        z = rots[:, 2].mean(0)
        z /= np.linalg.norm(z)
        x = np.cross(rots[:, 1].mean(0), z)
        x /= np.linalg.norm(x)
        R = np.stack([x, np.cross(z, x), z])  # rows: mean right, down, forward
        K, h, w = views[0].K, views[0].height, views[0].width
        return SceneNormalization(
            "ndc",
            _tup(R),
            _tup(centers.mean(0)),
            1.0 / (0.75 * float(near)),
            0.0,
            1.0,
            2.0 * K[0, 0] / w,
            2.0 * K[1, 1] / h,
        )
    if len(pts) >= 8:
        lo, hi = np.percentile(pts, 1, axis=0), np.percentile(pts, 99, axis=0)
        center, half = (lo + hi) / 2, 1.1 * float((hi - lo).max()) / 2
    else:  # the point nearest every optical axis: sum_i (I - f f^T)(p - c_i) = 0
        proj = np.eye(3)[None] - rots[:, 2, :, None] * rots[:, 2, None, :]  # (N, 3, 3)
        A, b = proj.sum(0), np.einsum("nij,nj->i", proj, centers)
        center = np.linalg.solve(A, b) if np.linalg.cond(A) < 1e6 else centers.mean(0)
        half = float(np.linalg.norm(centers - center, axis=1).max())
    half = max(half, 1e-6)
    if depth_bounds is not None:
        near, far = depth_bounds
    elif depths.size:
        near, far = 0.8 * np.percentile(depths, 1), 1.2 * np.percentile(depths, 99)
    else:
        near, far = 0.02 * half, 3.0 * half
    return SceneNormalization("box", _tup(np.eye(3)), _tup(center), 1.0 / half, float(near), float(far))


def _tup(a: np.ndarray) -> Any:
    return tuple(_tup(x) for x in a) if np.ndim(a) > 1 else tuple(float(x) for x in a)


def camera_rays(
    K: np.ndarray, cam_from_world: np.ndarray, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """World rays of every pixel, row-major: origins (H*W, 3), dirs (H*W, 3) with camera-z = 1 (float64)."""
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")  # (H, W)
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], -1)  # (H*W, 3)
    d_cam = pix @ np.linalg.inv(K).T  # (H*W, 3), z = 1
    R, t = cam_from_world[:3, :3], cam_from_world[:3, 3]
    dirs = d_cam @ R  # R^T d per row
    origins = np.broadcast_to(-R.T @ t, dirs.shape)
    return torch.from_numpy(origins.copy()), torch.from_numpy(dirs)


def view_rays(view: PosedView) -> tuple[torch.Tensor, torch.Tensor]:
    return camera_rays(view.K, view.cam_from_world, view.height, view.width)


def ndc_rays(
    origins: torch.Tensor, dirs: torch.Tensor, ax: float, ay: float, near: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """NeRF's ``ndc_rays`` for OpenGL-convention rays (camera looks down -z); ax = 2 fx / W, ay = 2 fy / H."""
    t = -(near + origins[:, 2]) / dirs[:, 2]  # shift origins to the near plane z = -near
    o = origins + t[:, None] * dirs  # (R, 3)
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = dirs.unbind(-1)
    o_ndc = torch.stack([-ax * ox / oz, -ay * oy / oz, 1 + 2 * near / oz], -1)
    d_ndc = torch.stack([-ax * (dx / dz - ox / oz), -ay * (dy / dz - oy / oz), -2 * near / oz], -1)
    return o_ndc, d_ndc


def _to_local(x: torch.Tensor, norm: SceneNormalization, is_dir: bool) -> torch.Tensor:
    R = torch.tensor(norm.rotation, dtype=x.dtype, device=x.device)
    c = torch.tensor(norm.center, dtype=x.dtype, device=x.device)
    return norm.scale * ((x if is_dir else x - c) @ R.T)


def world_to_model(points: torch.Tensor, norm: SceneNormalization) -> torch.Tensor:
    """World points (N, 3) -> model coordinates (N, 3) (NDC points in ndc mode: x, y, z in [-1, 1] ahead)."""
    p = _to_local(points.double(), norm, is_dir=False)
    if norm.mode == "box":
        return p.float()
    x, y, z = p[:, 0], -p[:, 1], -p[:, 2]  # OpenCV -> OpenGL
    return torch.stack([-norm.ndc_ax * x / z, -norm.ndc_ay * y / z, 1 + 2.0 / z], -1).float()


def normalize_rays(origins: torch.Tensor, dirs: torch.Tensor, norm: SceneNormalization) -> tuple[torch.Tensor, ...]:
    """World rays (R, 3) -> model-space origins, dirs, view dirs (R, 3) and near, far (R,) (float32)."""
    o, d = _to_local(origins.double(), norm, False), _to_local(dirs.double(), norm, True)
    viewdirs = d / d.norm(dim=-1, keepdim=True)
    if norm.mode == "ndc":
        flip = torch.tensor([1.0, -1.0, -1.0], dtype=o.dtype)
        o, d = ndc_rays(o * flip, d * flip, norm.ndc_ax, norm.ndc_ay, 1.0)
        near, far = torch.zeros_like(o[:, 0]), torch.ones_like(o[:, 0])
    else:
        safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        t1, t2 = (-1 - o) / safe, (1 - o) / safe  # slab test against [-1, 1]^3
        t_in, t_out = torch.minimum(t1, t2).amax(-1), torch.maximum(t1, t2).amin(-1)
        near = t_in.clamp_min(norm.near)
        far = torch.maximum(t_out.clamp_max(norm.far), near)
    return o.float(), d.float(), viewdirs.float(), near.float(), far.float()


def stratified_samples(
    near: torch.Tensor, far: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(R,) ranges -> sorted samples (R, n): one per equal bin, jittered with ``generator``, else bin midpoints."""
    u = (
        torch.rand((near.shape[0], n), generator=generator).to(near.device)
        if generator is not None
        else torch.full((near.shape[0], n), 0.5, device=near.device)
    )
    frac = (torch.arange(n, device=near.device, dtype=near.dtype) + u) / n  # (R, n)
    return near[:, None] + (far - near)[:, None] * frac


def sample_pdf(
    bins: torch.Tensor, weights: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Inverse-CDF samples (R, n) of the piecewise-constant pdf ``weights`` (R, B) over ``bins`` (R, B + 1)."""
    w = weights + 1e-5  # NeRF: keeps the pdf defined on empty rays
    cdf = torch.cumsum(w / w.sum(-1, keepdim=True), -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1).contiguous()  # (R, B + 1)
    if generator is not None:
        u = torch.rand((cdf.shape[0], n), generator=generator).to(cdf.device)
    else:
        u = torch.linspace(0.0, 1.0, n, device=cdf.device).expand(cdf.shape[0], n)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    below, above = (idx - 1).clamp_min(0), idx.clamp_max(cdf.shape[-1] - 1)
    c0, c1 = cdf.gather(1, below), cdf.gather(1, above)
    b0, b1 = bins.gather(1, below), bins.gather(1, above)
    denom = torch.where(c1 - c0 < 1e-5, torch.ones_like(c0), c1 - c0)
    return b0 + (u - c0) / denom * (b1 - b0)


def volume_render(
    density: torch.Tensor,
    rgb: torch.Tensor,
    t: torch.Tensor,
    dir_norm: torch.Tensor,
    last_delta: torch.Tensor,
    background: float,
) -> dict[str, torch.Tensor]:
    """Quadrature of the volume rendering integral over samples ``t`` (R, S).

    density (R, S), rgb (R, S, 3); the interval after sample i is t[i+1] - t[i] (``last_delta``
    (R,) after the last), times the ray direction's length ``dir_norm`` (R,). alpha =
    1 - exp(-sigma delta), T_i = prod_{j<i} (1 - alpha_j), weights = T alpha. Returns rgb (R, 3)
    composited over ``background``, depth (R,) (expected t), acc (R,) (sum of weights), weights.
    """
    delta = torch.cat([t[:, 1:] - t[:, :-1], last_delta[:, None]], -1) * dir_norm[:, None]  # (R, S)
    alpha = 1.0 - torch.exp(-density * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], -1), -1)[:, :-1]
    weights = alpha * trans  # (R, S)
    acc = weights.sum(-1)
    color = (weights[..., None] * rgb).sum(1) + (1.0 - acc[:, None]) * background
    return {"rgb": color, "depth": (weights * t).sum(-1), "acc": acc, "weights": weights}


def _shade(
    model: NerfModel,
    o: torch.Tensor,
    d: torch.Tensor,
    vd: torch.Tensor,
    t: torch.Tensor,
    far: torch.Tensor,
    ndc: bool,
    background: float,
    coarse: bool,
) -> dict[str, torch.Tensor]:
    r, s = t.shape
    pts = o[:, None, :] + t[..., None] * d[:, None, :]  # (R, S, 3)
    dens, rgb = model(pts.reshape(-1, 3), vd[:, None, :].expand(r, s, 3).reshape(-1, 3), coarse=coarse)
    last = torch.full_like(far, NDC_LAST_DELTA) if ndc else (far - t[:, -1]).clamp_min(0)
    return volume_render(dens.reshape(r, s), rgb.reshape(r, s, 3), t, d.norm(dim=-1), last, background)


def render_rays(
    model: NerfModel,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    viewdirs: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    config: NerfRenderConfig,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Model-space rays (R, 3) / ranges (R,) -> rgb (R, 3), depth (R,), acc (R,) and, with a
    separate coarse network, rgb_coarse (R, 3). ``generator``: jittered samples (training)."""
    ndc = config.normalization.mode == "ndc"
    bg = 1.0 if config.background == "white" else 0.0
    t_c = stratified_samples(near, far, config.num_coarse, generator)  # (R, Nc)
    if config.num_fine <= 0:
        return _shade(model, origins, dirs, viewdirs, t_c, far, ndc, bg, coarse=False)
    separate = model.coarse is not None
    with torch.set_grad_enabled(torch.is_grad_enabled() and separate):
        coarse = _shade(model, origins, dirs, viewdirs, t_c, far, ndc, bg, coarse=True)
    mids = 0.5 * (t_c[:, 1:] + t_c[:, :-1])  # (R, Nc - 1)
    t_f = sample_pdf(mids, coarse["weights"][:, 1:-1].detach(), config.num_fine, generator)
    t_all, _ = torch.sort(torch.cat([t_c, t_f.detach()], -1), -1)  # (R, Nc + Nf)
    out = _shade(model, origins, dirs, viewdirs, t_all, far, ndc, bg, coarse=False)
    if separate:
        out["rgb_coarse"] = coarse["rgb"]
    return out


def render_image(
    model: NerfModel, view_or_camera: PosedView | Camera, config: NerfRenderConfig, chunk: int = 4096
) -> torch.Tensor:
    """Render a whole image (H, W, 3) in [0, 1] (float32, on the CPU), ``chunk`` rays at a time, without gradients."""
    if isinstance(view_or_camera, PosedView):
        K, cam_from_world, h, w = (
            view_or_camera.K,
            view_or_camera.cam_from_world,
            view_or_camera.height,
            view_or_camera.width,
        )
    else:
        K, cam_from_world, h, w = view_or_camera
    device = next(model.parameters()).device
    rays = [x.to(device) for x in normalize_rays(*camera_rays(K, cam_from_world, h, w), config.normalization)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = [
                render_rays(model, *(x[i : i + chunk] for x in rays), config)["rgb"].cpu()
                for i in range(0, h * w, max(1, chunk))
            ]
    finally:
        model.train(was_training)
    return torch.cat(out).reshape(h, w, 3).clamp(0.0, 1.0)
