"""DVC stage ``fit_gaussians``: fit 3D Gaussian Splatting to a posed capture and evaluate held-out views.

Inputs: a posed capture (the ``sfm`` stage's output, a COLMAP folder, ``transforms.json`` or an
LLFF folder; see :mod:`capture3d.stages.nvs_common`) and the ``fit_gaussians`` section of
params.yaml. Output folder (written atomically): ``gaussians.ply`` (the splat-viewer layout),
``heldout/<view>.png`` (render | photo for every held-out view), ``orbit/`` (frames and
``orbit.gif``), ``train_log.csv`` (loss curve for ``dvc plots``) and ``metrics.json`` (held-out
PSNR / SSIM per view and mean, the initialisation's PSNR, iterations, wall time, peak memory).

Resuming: the fit's state is checkpointed every ``checkpoint_every`` iterations to
``<out>/../.<out name>.fit_gaussians-state.pt``; rerunning after an interruption continues the
same loss curve. The state file is deleted when the stage succeeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from capture3d import stage_cli
from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.errors import CaptureError, ParamsError
from capture3d.stages.common import state_path_for, write_curve, write_json
from capture3d.stages.nvs_common import (
    FitData,
    NvsDataConfig,
    NvsInputs,
    load_fit_data,
    peak_memory_mb,
    write_heldout,
    write_orbit,
)
from capture3d.tasks.device import resolve_device
from capture3d.tasks.nvs.evaluate import score_views, summarize
from capture3d.tasks.nvs.fit_gaussians import (
    GaussianFitConfig,
    GaussianFitResult,
    background_color,
    fit_gaussians,
    render_views,
)
from capture3d.tasks.nvs.gaussians.model import init_gaussians
from capture3d.tasks.nvs.gaussians.ply import write_gaussians_ply
from capture3d.tasks.nvs.gaussians.render import Camera, render, resolve_backend
from capture3d.tasks.nvs.scene import scene_extent

logger = logging.getLogger(__name__)

Inputs = NvsInputs
CLI_ALIASES = {"resolution-scale": "data.resolution_scale"}
"""legacy flag: ``--resolution-scale`` is ``--data.resolution-scale``"""


@dataclass(frozen=True)
class FitGaussiansConfig(GaussianFitConfig):
    """The ``fit_gaussians`` section: the fit settings plus data, outputs, seed and device."""

    data: NvsDataConfig
    """how the posed capture becomes training and held-out views"""
    orbit_frames: int
    """frames of the orbit video (0: none)"""
    seed: int
    """random seed of the initialisation and the view order"""
    device: Literal["auto", "cpu", "cuda"]
    """where the fit runs (auto: CUDA when available)"""


def load_config(params: Mapping[str, Any]) -> FitGaussiansConfig:
    config = section(params, "fit_gaussians", FitGaussiansConfig)
    if config.iterations < 1 or not 0 <= config.sh_degree <= 3:
        raise ParamsError("fit_gaussians: needs iterations >= 1 and sh_degree in 0..3")
    return config


def run(inputs: NvsInputs, out: Path, config: FitGaussiansConfig) -> Path:
    """Fit, evaluate and export one capture into ``out``; returns ``out``."""
    start = time.perf_counter()
    try:
        device = resolve_device(config.device)
        backend = resolve_backend(config.backend, device)
    except ValueError as exc:
        raise CaptureError(inputs.label, str(exc)) from None
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # tiny exp(-power) values otherwise slow the CPU rasterizer badly
    data = load_fit_data(inputs, config.data)
    t_load = time.perf_counter() - start
    init_rows = _initial_scores(data, config, device, backend)
    state = state_path_for(out, "fit_gaussians")
    try:
        result = fit_gaussians(data.train, data.scene, config, config.seed, device, state, _progress)
    except ValueError as exc:
        raise CaptureError(inputs.label, str(exc)) from None
    # evaluation renders run eagerly: under no_grad a compiled kernel would be compiled a second time
    renders = render_views(result.splats, data.test, result.sh_degree, config.background, backend, config.tile_size)
    with atomic_dir(out) as tmp:
        write_gaussians_ply(tmp / "gaussians.ply", result.splats)
        rows = write_heldout(tmp / "heldout", renders, data.test)
        bg = background_color(config.background, device)

        @torch.no_grad()
        def render_pose(K: np.ndarray, pose: np.ndarray, w: int, h: int) -> torch.Tensor:
            cam = Camera(
                torch.tensor(K, dtype=torch.float32, device=device),
                torch.tensor(pose, dtype=torch.float32, device=device),
                w,
                h,
            )
            return render(result.splats, cam, result.sh_degree, bg, backend, config.tile_size).image.clamp(0, 1)

        num_orbit = write_orbit(tmp / "orbit", data.train, config.orbit_frames, render_pose)
        write_curve(tmp / "train_log.csv", result.curve)
        metrics = _metrics(inputs, data, config, result, rows, init_rows, device, backend, num_orbit)
        metrics["load_s"] = t_load
        metrics["wall_s"] = time.perf_counter() - start
        write_json(tmp / "metrics.json", metrics)
    state.unlink(missing_ok=True)
    logger.info(
        "capture '%s': 3DGS held-out PSNR %.2f dB (from %.2f), SSIM %.3f, %d Gaussians, %d iterations",
        inputs.label,
        metrics["psnr"],
        metrics["psnr_init"],
        metrics["ssim"],
        metrics["num_gaussians"],
        result.iterations,
    )
    return out


def _progress(row: dict[str, float]) -> None:
    if int(row["iteration"]) % 250 == 0:
        logger.info(
            "3DGS iteration %d: loss %.4f, training-view PSNR %.2f dB, %d Gaussians, %.0f s",
            row["iteration"],
            row["loss"],
            row["psnr"],
            row["num_gaussians"],
            row["seconds"],
        )


@torch.no_grad()
def _initial_scores(data: FitData, config: FitGaussiansConfig, device: torch.device, backend: str) -> list[dict]:
    """Held-out scores of the initial Gaussians (what the fit must improve on)."""
    splats = init_gaussians(
        data.scene.points,
        data.scene.colors,
        config.sh_degree,
        config.init_opacity,
        scene_extent(list(data.scene.views)),
        config.init_random_points,
        config.seed,
        device,
    )
    renders = render_views(splats, data.test, 0, config.background, backend, config.tile_size, False)
    return score_views(renders, data.test)


def _metrics(
    inputs: NvsInputs,
    data: FitData,
    config: FitGaussiansConfig,
    result: GaussianFitResult,
    rows: list[dict],
    init_rows: list[dict],
    device: torch.device,
    backend: str,
    num_orbit: int,
) -> dict[str, Any]:
    mean, init = summarize(rows), summarize(init_rows)
    view = data.train[0]
    return {
        "capture": inputs.label,
        "status": "ok",
        "method": "3dgs",
        "psnr": mean["psnr"],
        "ssim": mean["ssim"],
        "psnr_init": init["psnr"],
        "ssim_init": init["ssim"],
        "per_view": rows,
        "num_train_views": len(data.train),
        "num_test_views": len(data.test),
        "resolution": [view.width, view.height],
        "num_init_points": int(len(data.scene.points)),
        "num_gaussians": int(result.splats["means"].shape[0]),
        "iterations": result.iterations,
        "iterations_planned": config.iterations,
        "stopped": result.stopped,
        "resumed_from": result.resumed_from,
        "sh_degree": result.sh_degree,
        "fit_s": result.seconds,
        "peak_memory_mb": peak_memory_mb(device),
        "device": str(device),
        "backend": backend,
        "num_orbit_frames": num_orbit,
        "source": data.scene.source,
    }


def main(argv: Sequence[str] | None = None) -> int:
    return stage_cli.stage_main(__name__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
