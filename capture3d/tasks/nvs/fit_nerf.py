"""Fitting a NeRF to posed photos: seeded, resumable, with a loss / PSNR curve and a time budget.

Inputs: training :class:`~capture3d.tasks.nvs.scene.PosedView` s, their
:class:`~capture3d.tasks.nvs.scene.NvsScene` (sparse points, depth bounds), a
:class:`NerfFitConfig`, a seed, a device and an optional resume-state path. Outputs:
:class:`NerfFitResult` -- the fitted :class:`~capture3d.tasks.nvs.nerf_model.NerfModel`, its render
settings (with the scene normalisation of :mod:`capture3d.tasks.nvs.nerf_render`) and the curve
(iteration, loss, training-batch PSNR of the fine pass, cumulative training seconds, one row
every ``log_every`` iterations and at the end) -- and exported checkpoints
(:func:`save_nerf_checkpoint`, :func:`load_nerf_checkpoint`).

One iteration: ``rays_per_batch`` rays drawn uniformly (with replacement) from all pixels of all
training views by a numpy generator (the rays and target colours of just those pixels are built
for this step: :class:`RayBatcher`; the photos stay uint8 in the scene's image cache), rendered
with jittered stratified + importance samples from a torch generator (both owned by the run,
never the global RNGs), MSE loss of the fine colour (plus the coarse colour's with a separate
coarse network), Adam (Instant-NGP's eps 1e-15 with the hash grid, 1e-8 otherwise; betas 0.9 /
0.99), and the learning rate decaying exponentially from ``learning_rate`` to ``lr_final`` over
``iterations``. NDC rays are used when ``ndc`` is "on", or "auto" and the scene has depth bounds
and every camera faces the same way (LLFF).

Resuming: every ``checkpoint_every`` iterations, at the end and when ``max_seconds`` stops the
run, ``state_path`` receives the weights, optimiser, scheduler, both generators' states and the
curve; a later call with the same path continues and, on the CPU, reproduces the uninterrupted
run's curve bit for bit. The state carries an identity (every setting that shapes the
trajectory -- all but ``checkpoint_every``, ``max_seconds`` and ``log_every`` -- plus the seed and
the number of training views); a state of another run is ignored with a warning. A non-finite
loss raises ValueError and leaves the state file at its last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from capture3d.atomic import atomic_file
from capture3d.progress import report as report_progress
from capture3d.tasks.nvs.image_metrics import mse_to_psnr
from capture3d.tasks.nvs.images import MB, ImageFile
from capture3d.tasks.nvs.nerf_model import NerfModel, NerfModelConfig, build_nerf
from capture3d.tasks.nvs.nerf_render import (
    NerfRenderConfig,
    SceneNormalization,
    forward_facing,
    normalize_rays,
    render_rays,
    scene_normalization,
)
from capture3d.tasks.nvs.scene import NvsScene, PosedView
from capture3d.tasks.train_state import load_train_state, save_train_state

logger = logging.getLogger(__name__)

STATE_FORMAT = "capture3d.nerf-fit-state"
CHECKPOINT_FORMAT = "capture3d.nerf"
CHECKPOINT_VERSION = 1
_NOT_IN_IDENTITY = ("checkpoint_every", "max_seconds", "log_every")


@dataclass(frozen=True)
class NerfFitConfig:
    """Everything that shapes a fit except the data, the seed and the device.

    Defaults were picked on LLFF fern (252 x 189, hash grid, one CPU thread): small batches of
    rays with few samples and a high learning rate make the most of minutes of CPU time; on a GPU
    use larger batches (4096 rays) and more samples (64 + 64).
    """

    model: NerfModelConfig = field(default_factory=NerfModelConfig)
    """the radiance field's shape"""
    iterations: int = 2500
    """optimisation steps (2500: about 5 minutes on one CPU core with these defaults)"""
    rays_per_batch: int = 256
    """rays per step (GPU: 4096)"""
    num_coarse: int = 16
    """stratified samples per ray"""
    num_fine: int = 32
    """importance samples per ray"""
    learning_rate: float = 3e-2
    """initial Adam learning rate, decaying exponentially ..."""
    lr_final: float = 1e-3
    """... to this at the last iteration"""
    ndc: Literal["auto", "on", "off"] = "auto"
    """rays in normalised device coordinates (auto: forward-facing captures with depth bounds)"""
    background: Literal["black", "white"] = "black"
    """colour behind the scene"""
    checkpoint_every: int = 500
    """fit state saved every this many iterations (resumable)"""
    max_seconds: float = 0.0
    """0: no limit; fitting stops (and saves) after this long"""
    log_every: int = 10
    """a loss curve row every this many iterations"""


@dataclass
class NerfFitResult:
    model: NerfModel
    render_config: NerfRenderConfig
    curve: list[dict[str, float]]  # iteration, loss, psnr, seconds
    iterations: int  # iterations done in total (all calls)
    seconds: float  # wall time of this call
    stopped_reason: Literal["completed", "max_seconds"]
    resumed_from: int  # 0: fresh

    @property
    def normalization(self) -> SceneNormalization:
        return self.render_config.normalization


def render_config_for(config: NerfFitConfig, normalization: SceneNormalization) -> NerfRenderConfig:
    return NerfRenderConfig(normalization, config.num_coarse, config.num_fine, config.background)


def _fit_fields(config: NerfFitConfig) -> dict[str, Any]:
    """The :class:`NerfFitConfig` fields of ``config`` (a subclass's extra fields -- data paths, device -- left out)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(NerfFitConfig)}


def _identity(config: NerfFitConfig, seed: int, num_views: int) -> str:
    d = {k: v for k, v in _fit_fields(config).items() if k not in _NOT_IN_IDENTITY}
    return repr({**d, "seed": seed, "num_views": num_views})


def _seeded_model(config: NerfModelConfig, seed: int, device: torch.device) -> NerfModel:
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        return build_nerf(config).to(device)


def _save_state(path: Path, s: dict[str, Any]) -> None:
    payload = {
        "model": {k: v.detach().cpu() for k, v in s["model"].state_dict().items()},
        "optimizer": s["optimizer"].state_dict(),
        "scheduler": s["scheduler"].state_dict(),
        "rng": s["rng"].bit_generator.state,
        "gen": s["gen"].get_state(),
        "iteration": s["iteration"],
        "curve": s["curve"],
        "elapsed": s["elapsed"],
    }
    save_train_state(path, STATE_FORMAT, s["identity"], payload)


def _restore(path: Path, s: dict[str, Any]) -> bool:
    """Load ``path`` into the run state ``s`` when it is a state of this very run."""
    saved = load_train_state(path, STATE_FORMAT, s["identity"])
    if saved is None:
        return False
    s["model"].load_state_dict(saved["model"])
    s["optimizer"].load_state_dict(saved["optimizer"])
    s["scheduler"].load_state_dict(saved["scheduler"])
    s["rng"].bit_generator.state = saved["rng"]
    s["gen"].set_state(saved["gen"])
    s.update(iteration=int(saved["iteration"]), curve=list(saved["curve"]), elapsed=float(saved["elapsed"]))
    return True


class RayBatcher:
    """Rays of chosen pixels of the training views, built per batch (no per-pixel arrays kept).

    A pixel is numbered view by view, row-major inside a view: ``offset[view] + y * W + x``,
    ``num_rays`` in all. :meth:`batch` maps indices (B,) to model-space origins, dirs, view dirs
    (B, 3), near, far (B,) and target colours (B, 3) float32 in [0, 1], on ``device``; the rays
    equal :func:`~capture3d.tasks.nvs.nerf_render.camera_rays` + ``normalize_rays`` of those pixels.
    """

    def __init__(self, views: list[PosedView], norm: SceneNormalization, device: torch.device) -> None:
        self.views = views
        self.norm = norm
        self.device = device
        sizes = np.array([v.width * v.height for v in views], dtype=np.int64)  # (N,)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])  # (N + 1,)
        self.num_rays = int(self.offsets[-1])
        self.widths = np.array([v.width for v in views], dtype=np.int64)  # (N,)
        self.K_inv = np.stack([np.linalg.inv(v.K) for v in views])  # (N, 3, 3)
        self.R = np.stack([v.cam_from_world[:3, :3] for v in views])  # (N, 3, 3)
        self.centers = np.stack([v.center for v in views])  # (N, 3)

    def batch(self, index: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Global pixel indices (B,) -> (origins, dirs, viewdirs, near, far, colours) of those pixels."""
        view = np.searchsorted(self.offsets, index, side="right") - 1  # (B,)
        local = index - self.offsets[view]
        y, x = np.divmod(local, self.widths[view])
        pix = np.stack([x + 0.5, y + 0.5, np.ones(len(index))], -1)  # (B, 3)
        d_cam = np.einsum("bij,bj->bi", self.K_inv[view], pix)  # (B, 3), z = 1
        dirs = np.einsum("bij,bi->bj", self.R[view], d_cam)  # R^T d per ray
        origins = self.centers[view]  # (B, 3)
        colors = np.empty((len(index), 3), dtype=np.float32)
        for v in np.unique(view):
            sel = view == v
            colors[sel] = self.views[int(v)].colors_at(local[sel])
        rays = normalize_rays(torch.from_numpy(origins), torch.from_numpy(dirs), self.norm)
        return (*(r.to(self.device) for r in rays), torch.from_numpy(colors).to(self.device))


def _warn_if_cache_too_small(views: list[PosedView]) -> None:
    """Rays come from every view each step: a cache smaller than the photos means decoding each step."""
    caches = {id(v.pixels.cache): v.pixels.cache for v in views if isinstance(v.pixels, ImageFile)}
    need = sum(v.width * v.height * 3 for v in views if isinstance(v.pixels, ImageFile))
    cap = sum(c.max_bytes for c in caches.values())
    if caches and need > cap:
        logger.warning(
            "the %d training photos need %.0f MiB as uint8 but the image cache holds %.0f MiB: NeRF draws rays "
            "from every photo each step, so photos are decoded again every step (slow); raise image_cache_mb",
            len(views),
            need / MB,
            cap / MB,
        )


def fit_nerf(
    train_views: list[PosedView] | tuple[PosedView, ...],
    scene: NvsScene,
    config: NerfFitConfig,
    seed: int,
    device: torch.device | str,
    state_path: Path | None,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> NerfFitResult:
    """Fit (or resume fitting) a NeRF; see the module docstring. ``on_log`` gets each curve row."""
    start = time.perf_counter()
    views = list(train_views)
    if not views:
        raise ValueError("no training views")
    device = torch.device(device)
    use_ndc = config.ndc == "on" or (config.ndc == "auto" and scene.depth_bounds is not None and forward_facing(views))
    norm = scene_normalization(views, scene.points, scene.depth_bounds, use_ndc)
    rcfg = render_config_for(config, norm)
    model = _seeded_model(config.model, seed, device)
    eps = 1e-15 if config.model.encoding == "hash" else 1e-8
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.99), eps=eps)
    gamma = (config.lr_final / config.learning_rate) ** (1.0 / max(config.iterations, 1))
    s: dict[str, Any] = {
        "format": STATE_FORMAT,
        "identity": _identity(config, seed, len(views)),
        "model": model,
        "optimizer": opt,
        "scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, gamma),
        "rng": np.random.default_rng(seed),
        "gen": torch.Generator().manual_seed(seed),
        "iteration": 0,
        "curve": [],
        "elapsed": 0.0,
    }
    if state_path is not None and Path(state_path).is_file() and _restore(Path(state_path), s):
        logger.info("resuming NeRF fitting at iteration %d from %s", s["iteration"], state_path)
    resumed_from = s["iteration"]
    _warn_if_cache_too_small(views)
    rays = RayBatcher(views, norm, device)
    num_rays = rays.num_rays
    logger.info(
        "fitting a %s NeRF (%s rays) to %d views, %d pixels, from iteration %d",
        config.model.encoding,
        norm.mode,
        len(views),
        num_rays,
        resumed_from,
    )
    model.train()
    stopped: Literal["completed", "max_seconds"] = "completed"
    loop_start = time.perf_counter()
    elapsed0 = s["elapsed"]
    while s["iteration"] < config.iterations:
        o, d, vd, near, far, target = rays.batch(s["rng"].integers(0, num_rays, size=config.rays_per_batch))
        out = render_rays(model, o, d, vd, near, far, rcfg, generator=s["gen"])
        mse = torch.mean((out["rgb"] - target) ** 2)
        loss = mse + torch.mean((out["rgb_coarse"] - target) ** 2) if "rgb_coarse" in out else mse
        if not bool(torch.isfinite(loss)):
            kept = f"the last good state is kept in '{state_path}'" if state_path is not None else "no state file"
            raise ValueError(
                f"NeRF loss became {loss.item()} at iteration {s['iteration'] + 1} (learning rate too high?); {kept}"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        s["scheduler"].step()
        s["iteration"] += 1
        if s["iteration"] % 10 == 0 or s["iteration"] == config.iterations:
            report_progress(logger, "fit nerf (iterations)", s["iteration"], config.iterations)
        it = s["iteration"]
        s["elapsed"] = elapsed0 + time.perf_counter() - loop_start
        last = it == config.iterations
        out_of_time = config.max_seconds > 0 and time.perf_counter() - start > config.max_seconds and not last
        row = None
        if it % max(1, config.log_every) == 0 or last:
            row = {
                "iteration": float(it),
                "loss": loss.item(),
                "psnr": mse_to_psnr(mse.item()),
                "seconds": s["elapsed"],
            }
            s["curve"].append(row)
            logger.debug("iteration %d: loss %.5f, PSNR %.2f dB", it, row["loss"], row["psnr"])
        if state_path is not None and (it % max(1, config.checkpoint_every) == 0 or last or out_of_time):
            _save_state(Path(state_path), s)
        if row is not None and on_log is not None:
            on_log(row)
        if out_of_time:
            stopped = "max_seconds"
            logger.info("stopping NeRF fitting at iteration %d: the %.0f s budget is spent", it, config.max_seconds)
            break
    model.eval()
    return NerfFitResult(
        model, rcfg, list(s["curve"]), s["iteration"], time.perf_counter() - start, stopped, resumed_from
    )


@dataclass
class NerfCheckpoint:
    model: NerfModel
    config: NerfFitConfig
    render_config: NerfRenderConfig


def save_nerf_checkpoint(
    path: Path, model: NerfModel, config: NerfFitConfig, scene_normalization: SceneNormalization
) -> None:
    """Write the fitted model with everything needed to render it (atomically)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": {**_fit_fields(config), "model": dataclasses.asdict(config.model)},
        "normalization": scene_normalization.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_file(Path(path)) as tmp:
        torch.save(state, tmp)


def load_nerf_checkpoint(path: Path, device: torch.device | str = "cpu") -> NerfCheckpoint:
    """Read a :func:`save_nerf_checkpoint` file (``weights_only``); a wrong or corrupt file is a one-line ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"NeRF checkpoint '{path}' not found")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- corrupt files raise many kinds of error
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"NeRF checkpoint '{path}': cannot be read safely ({first})") from None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"'{path}' is not a capture3d NeRF checkpoint")
    if saved.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"NeRF checkpoint '{path}' has version {saved.get('version')!r}; "
            f"this capture3d reads version {CHECKPOINT_VERSION}"
        )
    try:
        cfg = dict(saved["config"])
        config = NerfFitConfig(**{**cfg, "model": NerfModelConfig(**cfg["model"])})
        norm = SceneNormalization.from_dict(saved["normalization"])
        model = build_nerf(config.model)
        model.load_state_dict(saved["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"NeRF checkpoint '{path}' is damaged ({first})") from None
    model = model.to(torch.device(device)).eval()
    return NerfCheckpoint(model, config, render_config_for(config, norm))
