"""Fitting 3D Gaussians to posed photos (Kerbl et al. 2023): seeded, resumable, time-boxed.

Inputs: training :class:`~capture3d.tasks.nvs.scene.PosedView` s, the scene's sparse points
(initialisation), a :class:`GaussianFitConfig`, a seed, a device and an optional state path.
Output: :class:`GaussianFitResult` -- the Gaussian ``ParameterDict``, the loss curve, the number
of iterations, why it stopped, and wall time.

Each iteration renders one training view (a new random order every epoch) with the configured
backend, compares it with that view's photo (fetched as uint8 through the scene's image cache and
converted to float on the device for this step only: :func:`target_image`), takes the L1 +
D-SSIM loss (lambda 0.2), steps one Adam per parameter (position rate decaying exponentially),
accumulates screen-space gradients and runs adaptive density control
(:mod:`capture3d.tasks.nvs.gaussians.strategy`); the SH degree in use grows by one every
``sh_degree_interval`` steps. With ``state_path`` the whole state (parameters, Adam moments,
densification statistics, random generators, curve) is written atomically every
``checkpoint_every`` steps and a later call resumes it, continuing the same loss curve on the CPU
bit for bit. A non-finite loss raises ValueError and leaves the last good state on disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from capture3d.progress import report as report_progress
from capture3d.tasks.nvs.gaussians import strategy
from capture3d.tasks.nvs.gaussians.model import (
    PARAM_NAMES,
    LearningRates,
    init_gaussians,
    make_optimizers,
    means_lr,
)
from capture3d.tasks.nvs.gaussians.render import Backend, Camera, render
from capture3d.tasks.nvs.image_metrics import l1_dssim_loss, psnr
from capture3d.tasks.nvs.scene import NvsScene, PosedView, scene_extent
from capture3d.tasks.train_state import load_train_state, save_train_state

logger = logging.getLogger(__name__)

STATE_FORMAT = "capture3d.gaussians-fit-state"


@dataclass(frozen=True)
class GaussianFitConfig:
    """Everything that shapes a 3DGS fit except the data, the seed and the device."""

    iterations: int
    """optimisation steps (one training view each)"""
    sh_degree: int
    """final spherical-harmonics degree (0-3)"""
    sh_degree_interval: int
    """one more SH degree every this many steps (3DGS: 1000)"""
    init_opacity: float
    """opacity of the initial Gaussians"""
    init_random_points: int
    """extra random Gaussians in the points' box (all random when there are no points)"""
    lambda_dssim: float
    """weight of the D-SSIM term of the loss (L1 gets 1 - this)"""
    background: Literal["black", "white"]
    """colour behind the Gaussians"""
    lr: LearningRates
    """3DGS's Adam learning rates"""
    densify: strategy.DensifyConfig
    """adaptive density control (3DGS: start 500, stop 15000, every 100, reset 3000)"""
    backend: Backend
    """rasterizer (auto: gsplat CUDA on a GPU, else ours on the CPU)"""
    tile_size: int
    """CPU rasterizer tile, pixels"""
    cpu_compile: bool
    """CPU rasterizer through torch.compile (about 2x faster; needs g++)"""
    checkpoint_every: int
    """fit state saved every this many iterations (resumable)"""
    log_every: int
    """a loss curve row every this many iterations"""
    max_seconds: float
    """0: no limit; fitting stops after this long (resumed runs included)"""


@dataclass
class GaussianFitResult:
    splats: torch.nn.ParameterDict
    curve: list[dict[str, float]]  # iteration, loss, psnr, num_gaussians, seconds (cumulative)
    iterations: int
    seconds: float  # fitting time, resumed runs included
    resumed_from: int
    stopped: str  # "iterations" or "time budget"
    sh_degree: int  # degree in use at the end
    densify_log: list[dict[str, int]] = field(default_factory=list)


def view_camera(view: PosedView, device: torch.device) -> Camera:
    """A :class:`Camera` of float32 tensors on ``device`` for a view."""
    return Camera(
        torch.tensor(view.K, dtype=torch.float32, device=device),
        torch.tensor(view.cam_from_world, dtype=torch.float32, device=device),
        view.width,
        view.height,
    )


def target_image(view: PosedView, device: torch.device) -> torch.Tensor:
    """(H, W, 3) float32 in [0, 1] on ``device``: uint8 pixels are moved as uint8 and divided by 255 there."""
    pixels = torch.tensor(view.pixel_array(), device=device)  # (H, W, 3) uint8 or float
    return pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()


def background_color(name: str, device: torch.device) -> torch.Tensor:
    """(3,) colour of the named background."""
    return torch.full((3,), 1.0 if name == "white" else 0.0, device=device)


def active_sh_degree(config: GaussianFitConfig, iteration: int) -> int:
    """SH degree used at ``iteration`` (0-based): one more every ``sh_degree_interval`` steps."""
    return min(config.sh_degree, iteration // max(1, config.sh_degree_interval))


def _identity(config: GaussianFitConfig, seed: int, num_views: int) -> str:
    """A state resumes only into the same settings (time budget and logging aside), seed and data size."""
    skip = {"max_seconds", "checkpoint_every", "log_every"}
    return repr(({f.name: getattr(config, f.name) for f in fields(config) if f.name not in skip}, seed, num_views))


@dataclass
class _Run:
    splats: torch.nn.ParameterDict
    optimizers: dict[str, torch.optim.Adam]
    densify: strategy.DensifyState
    rng: np.random.Generator
    gen: torch.Generator
    iteration: int = 0
    elapsed: float = 0.0
    order: list[int] = field(default_factory=list)
    curve: list[dict[str, float]] = field(default_factory=list)
    densify_log: list[dict[str, int]] = field(default_factory=list)


def _payload(run: _Run) -> dict[str, Any]:
    adam = {}
    for name in PARAM_NAMES:
        st = run.optimizers[name].state.get(run.splats[name], {})
        adam[name] = {k: v.detach().cpu() for k, v in st.items()}
    return {
        "iteration": run.iteration,
        "elapsed": run.elapsed,
        "order": list(run.order),
        "splats": {k: v.detach().cpu() for k, v in run.splats.items()},
        "adam": adam,
        "densify": {k: v.cpu() for k, v in run.densify.as_dict().items()},
        "rng": run.rng.bit_generator.state,
        "gen": run.gen.get_state(),
        "curve": run.curve,
        "densify_log": run.densify_log,
    }


def _restore(saved: dict[str, Any], config: GaussianFitConfig, extent: float, device: torch.device, run: _Run) -> None:
    run.splats = torch.nn.ParameterDict({k: torch.nn.Parameter(v.to(device)) for k, v in saved["splats"].items()})
    run.optimizers = make_optimizers(run.splats, config.lr, extent)
    for name in PARAM_NAMES:
        st = {k: v.to(device) if k != "step" else v for k, v in saved["adam"][name].items()}
        if st:
            run.optimizers[name].state[run.splats[name]] = st
    run.densify = strategy.DensifyState(**{k: v.to(device) for k, v in saved["densify"].items()})
    run.rng.bit_generator.state = saved["rng"]
    run.gen.set_state(saved["gen"])
    run.iteration = int(saved["iteration"])
    run.elapsed = float(saved["elapsed"])
    run.order = [int(i) for i in saved["order"]]
    run.curve = list(saved["curve"])
    run.densify_log = list(saved["densify_log"])


def fit_gaussians(
    views: Sequence[PosedView],
    scene: NvsScene,
    config: GaussianFitConfig,
    seed: int,
    device: torch.device | str,
    state_path: Path | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> GaussianFitResult:
    """Fit (or resume fitting) Gaussians to ``views``; see the module docstring."""
    if not views:
        raise ValueError("no training views")
    device = torch.device(device)
    extent = scene_extent(list(scene.views))
    splats = init_gaussians(
        scene.points,
        scene.colors,
        config.sh_degree,
        config.init_opacity,
        extent,
        config.init_random_points,
        seed,
        device,
    )
    run = _Run(
        splats,
        make_optimizers(splats, config.lr, extent),
        strategy.DensifyState.empty(splats["means"].shape[0], device),
        np.random.default_rng(seed),
        torch.Generator().manual_seed(seed),
    )
    identity = _identity(config, seed, len(views))
    saved = load_train_state(state_path, STATE_FORMAT, identity) if state_path is not None else None
    if saved is not None:
        _restore(saved, config, extent, device, run)
        logger.info("resuming the Gaussian fit at iteration %d from %s", run.iteration, state_path)
    resumed_from = run.iteration
    cameras = [view_camera(v, device) for v in views]
    background = background_color(config.background, device)
    stopped = "iterations"
    t_call = time.perf_counter()
    elapsed0 = run.elapsed
    while run.iteration < config.iterations:
        if config.max_seconds > 0 and run.elapsed >= config.max_seconds:
            stopped = "time budget"
            break
        if not run.order:
            run.order = [int(i) for i in run.rng.permutation(len(views))]
        idx = run.order.pop()
        cam = cameras[idx]
        degree = active_sh_degree(config, run.iteration)
        out = render(run.splats, cam, degree, background, config.backend, config.tile_size, config.cpu_compile)
        target = target_image(views[idx], device)  # (H, W, 3), this step only
        loss = l1_dssim_loss(out.image, target, config.lambda_dssim)
        if not bool(torch.isfinite(loss)):
            where = f"; the last good state is kept in '{state_path}'" if state_path is not None else ""
            raise ValueError(f"Gaussian fit loss became {float(loss)} at iteration {run.iteration + 1}{where}")
        loss.backward()
        run.iteration += 1
        if run.iteration % 10 == 0 or run.iteration == config.iterations:
            report_progress(logger, "fit gaussians (iterations)", run.iteration, config.iterations)
        if run.iteration < config.densify.refine_stop:
            strategy.accumulate(run.densify, out, cam.width, cam.height)
        for group in run.optimizers["means"].param_groups:
            group["lr"] = means_lr(run.iteration, config.iterations, config.lr, extent)
        for opt in run.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        report = strategy.step(run.splats, run.optimizers, run.densify, run.iteration, config.densify, extent, run.gen)
        if report is not None:
            run.densify_log.append({"iteration": run.iteration, **report})
        run.elapsed = elapsed0 + time.perf_counter() - t_call
        if run.iteration % max(1, config.log_every) == 0 or run.iteration == config.iterations:
            row = {
                "iteration": float(run.iteration),
                "loss": float(loss.detach()),
                "psnr": float(psnr(out.image.detach(), target)),
                "num_gaussians": float(run.splats["means"].shape[0]),
                "seconds": run.elapsed,
            }
            run.curve.append(row)
            if on_log is not None:
                on_log(row)
        if state_path is not None and run.iteration % max(1, config.checkpoint_every) == 0:
            save_train_state(state_path, STATE_FORMAT, identity, _payload(run))
    if state_path is not None:
        save_train_state(state_path, STATE_FORMAT, identity, _payload(run))
    return GaussianFitResult(
        run.splats,
        run.curve,
        run.iteration,
        run.elapsed,
        resumed_from,
        stopped,
        active_sh_degree(config, max(run.iteration - 1, 0)),
        run.densify_log,
    )


@torch.no_grad()
def render_views(
    splats: torch.nn.ParameterDict,
    views: Sequence[PosedView],
    sh_degree: int,
    background: str,
    backend: Backend,
    tile: int,
    compiled: bool = False,
) -> list[torch.Tensor]:
    """Rendered images (H, W, 3) in [0, 1] of ``views``."""
    device = splats["means"].device
    bg = background_color(background, device)
    return [
        render(splats, view_camera(v, device), sh_degree, bg, backend, tile, compiled).image.clamp(0, 1) for v in views
    ]
