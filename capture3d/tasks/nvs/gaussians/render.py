"""One rendering interface over two backends: our tile-based CPU rasterizer and gsplat's CUDA one.

Inputs: the Gaussian parameters (a mapping with ``means`` (N, 3), ``quats`` (N, 4), ``scales``
(N, 3) log-scales, ``opacities`` (N,) logits, ``sh0`` (N, 1, 3), ``shN`` (N, K-1, 3)), a
:class:`Camera`, the SH degree in use and a background colour. Output: :class:`RenderOutput`
(image (H, W, 3), alpha (H, W), the screen-space means whose ``.grad`` drives densification, and
per-Gaussian radii). ``backend`` is ``cpu`` (ours), ``cuda`` (gsplat; needs a GPU and compiles its
extension on first use) or ``auto`` (cuda when the tensors are on a GPU and gsplat loads).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from capture3d.tasks.nvs.gaussians.project import project
from capture3d.tasks.nvs.gaussians.rasterize import DEFAULT_TILE, rasterize
from capture3d.tasks.nvs.gaussians.sh import eval_sh

logger = logging.getLogger(__name__)

Backend = Literal["auto", "cuda", "cpu"]


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: K (3, 3), viewmat = cam_from_world (4, 4), both float tensors."""

    K: torch.Tensor
    viewmat: torch.Tensor
    width: int
    height: int


@dataclass(frozen=True)
class RenderOutput:
    """image (H, W, 3); alpha (H, W); means2d (N, 2) with retained grad; radii (N,) pixels, 0 if culled."""

    image: torch.Tensor
    alpha: torch.Tensor
    means2d: torch.Tensor
    radii: torch.Tensor


def resolve_backend(backend: Backend, device: torch.device) -> Literal["cuda", "cpu"]:
    """``auto`` -> ``cuda`` on a CUDA device, else ``cpu``; ``cuda`` on a CPU device is an error."""
    if backend == "auto":
        return "cuda" if device.type == "cuda" else "cpu"
    if backend == "cuda" and device.type != "cuda":
        raise ValueError("rasterizer backend 'cuda' needs the Gaussians on a CUDA device")
    return backend


def sh_colors(splats: Mapping[str, torch.Tensor], camera_center: torch.Tensor, sh_degree: int) -> torch.Tensor:
    """View-dependent colours (N, 3) = max(SH(dir) + 0.5, 0), dir from the camera centre to each mean."""
    coeffs = torch.cat([splats["sh0"], splats["shN"]], 1)  # (N, K, 3)
    dirs = splats["means"] - camera_center  # (N, 3)
    return torch.clamp_min(eval_sh(sh_degree, dirs, coeffs) + 0.5, 0.0)


def render(
    splats: Mapping[str, torch.Tensor],
    camera: Camera,
    sh_degree: int,
    background: torch.Tensor,  # (3,)
    backend: Backend = "auto",
    tile: int = DEFAULT_TILE,
    compiled: bool = False,
) -> RenderOutput:
    """Render the Gaussians into ``camera`` with the chosen backend (``tile``, ``compiled``: CPU only)."""
    which = resolve_backend(backend, splats["means"].device)
    if which == "cuda":
        return _render_gsplat(splats, camera, sh_degree, background)
    scales = torch.exp(splats["scales"])
    opacities = torch.sigmoid(splats["opacities"])
    proj = project(
        splats["means"], splats["quats"], scales, opacities, camera.viewmat, camera.K, camera.width, camera.height
    )
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    R, t = camera.viewmat[:3, :3], camera.viewmat[:3, 3]
    colors = sh_colors(splats, -R.T @ t, sh_degree)
    image, alpha = rasterize(proj, colors, opacities, camera.width, camera.height, background, tile, compiled)
    return RenderOutput(image, alpha, proj.means2d, proj.radii)


def _render_gsplat(
    splats: Mapping[str, torch.Tensor], camera: Camera, sh_degree: int, background: torch.Tensor
) -> RenderOutput:
    from gsplat import rasterization  # compiles gsplat's CUDA extension on first use

    colors = torch.cat([splats["sh0"], splats["shN"]], 1)  # (N, K, 3)
    image, alpha, meta = rasterization(
        splats["means"],
        splats["quats"],
        torch.exp(splats["scales"]),
        torch.sigmoid(splats["opacities"]),
        colors,
        camera.viewmat[None],
        camera.K[None],
        camera.width,
        camera.height,
        sh_degree=sh_degree,
        backgrounds=background[None],
        packed=False,
    )
    means2d = meta["means2d"]  # (1, N, 2)
    if means2d.requires_grad:
        means2d.retain_grad()
    radii = meta["radii"][0]
    if radii.dim() == 2:  # gsplat >= 1.5: per-axis radii (N, 2)
        radii = radii.amax(-1)
    return RenderOutput(image[0], alpha[0, ..., 0], means2d, radii)


def screen_grad(out: RenderOutput) -> torch.Tensor | None:
    """d loss / d means2d (N, 2) of the last backward, or None."""
    g = out.means2d.grad
    if g is None:
        return None
    return g[0] if g.dim() == 3 else g
