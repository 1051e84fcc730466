"""DVC stage ``fit_nerf``: fit a NeRF (Mildenhall et al. 2020; hash-grid or positional encoding) to a posed capture.

Inputs: a posed capture (the ``sfm`` stage's output, a COLMAP folder, ``transforms.json`` or an
LLFF folder; see :mod:`capture3d.stages.nvs_common`) and the ``fit_nerf`` section of params.yaml.
Output folder (written atomically): ``nerf.pt`` (the model with its scene normalisation, loadable
with :func:`capture3d.tasks.nvs.fit_nerf.load_nerf_checkpoint`), ``heldout/<view>.png`` (render |
photo), ``orbit/`` (frames and ``orbit.gif``), ``train_log.csv`` and ``metrics.json`` (held-out
PSNR / SSIM per view and mean, the untrained model's PSNR, iterations, wall time, peak memory).

Resuming: the fit's state goes to ``<out>/../.<out name>.fit_nerf-state.pt`` every
``checkpoint_every`` iterations; a rerun continues the same curve; it is deleted on success.
"""

from __future__ import annotations

import dataclasses
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
from capture3d.tasks.nvs.fit_nerf import NerfFitConfig, fit_nerf, save_nerf_checkpoint
from capture3d.tasks.nvs.nerf_render import render_image

logger = logging.getLogger(__name__)

Inputs = NvsInputs
CLI_ALIASES = {"resolution-scale": "data.resolution_scale"}
"""legacy flag: ``--resolution-scale`` is ``--data.resolution-scale``"""


@dataclass(frozen=True, kw_only=True)
class FitNerfConfig(NerfFitConfig):
    """The ``fit_nerf`` section: the fit settings plus data, outputs, seed and device."""

    data: NvsDataConfig
    """how the posed capture becomes training and held-out views"""
    orbit_frames: int
    """frames of the orbit video (0: none; a NeRF frame costs ~10 s on the CPU)"""
    seed: int
    """random seed of the network and the ray sampling"""
    device: Literal["auto", "cpu", "cuda"]
    """where the fit runs (auto: CUDA when available)"""


def load_config(params: Mapping[str, Any]) -> FitNerfConfig:
    config = section(params, "fit_nerf", FitNerfConfig)
    if config.iterations < 1 or config.rays_per_batch < 1:
        raise ParamsError("fit_nerf: needs iterations >= 1 and rays_per_batch >= 1")
    return config


def run(inputs: NvsInputs, out: Path, config: FitNerfConfig) -> Path:
    """Fit, evaluate and export one capture into ``out``; returns ``out``."""
    start = time.perf_counter()
    try:
        device = resolve_device(config.device)
    except ValueError as exc:
        raise CaptureError(inputs.label, str(exc)) from None
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    data = load_fit_data(inputs, config.data)
    t_load = time.perf_counter() - start
    state = state_path_for(out, "fit_nerf")
    try:
        result = fit_nerf(list(data.train), data.scene, config, config.seed, device, state, _progress)
    except ValueError as exc:
        raise CaptureError(inputs.label, str(exc)) from None
    renders = [render_image(result.model, v, result.render_config) for v in data.test]
    init_rows = _initial_scores(data, config, device)
    with atomic_dir(out) as tmp:
        save_nerf_checkpoint(tmp / "nerf.pt", result.model, config, result.normalization)
        rows = write_heldout(tmp / "heldout", renders, data.test)

        def render_pose(K: np.ndarray, pose: np.ndarray, w: int, h: int) -> torch.Tensor:
            return render_image(result.model, (K, pose, h, w), result.render_config)

        num_orbit = write_orbit(tmp / "orbit", data.train, config.orbit_frames, render_pose)
        write_curve(tmp / "train_log.csv", result.curve)
        mean, init = summarize(rows), summarize(init_rows)
        view = data.train[0]
        metrics = {
            "capture": inputs.label,
            "status": "ok",
            "method": f"nerf ({config.model.encoding})",
            "psnr": mean["psnr"],
            "ssim": mean["ssim"],
            "psnr_init": init["psnr"],
            "ssim_init": init["ssim"],
            "per_view": rows,
            "num_train_views": len(data.train),
            "num_test_views": len(data.test),
            "resolution": [view.width, view.height],
            "rays": result.normalization.mode,
            "iterations": result.iterations,
            "iterations_planned": config.iterations,
            "stopped": "time budget" if result.stopped_reason == "max_seconds" else "iterations",
            "resumed_from": result.resumed_from,
            "fit_s": result.seconds,
            "peak_memory_mb": peak_memory_mb(device),
            "device": str(device),
            "num_orbit_frames": num_orbit,
            "source": data.scene.source,
            "load_s": t_load,
            "wall_s": time.perf_counter() - start,
        }
        write_json(tmp / "metrics.json", metrics)
    state.unlink(missing_ok=True)
    logger.info(
        "capture '%s': NeRF held-out PSNR %.2f dB (from %.2f), SSIM %.3f, %d iterations",
        inputs.label,
        metrics["psnr"],
        metrics["psnr_init"],
        metrics["ssim"],
        result.iterations,
    )
    return out


def _progress(row: dict[str, float]) -> None:
    if int(row["iteration"]) % 500 == 0:
        logger.info(
            "NeRF iteration %d: loss %.5f, batch PSNR %.2f dB, %.0f s",
            row["iteration"],
            row["loss"],
            row["psnr"],
            row["seconds"],
        )


def _initial_scores(data: FitData, config: FitNerfConfig, device: torch.device) -> list[dict]:
    """Held-out scores of the untrained (seeded) model: what the fit must improve on."""
    untrained = fit_nerf(
        list(data.train), data.scene, dataclasses.replace(config, iterations=0), config.seed, device, None
    )
    return score_views([render_image(untrained.model, v, untrained.render_config) for v in data.test], data.test)


def main(argv: Sequence[str] | None = None) -> int:
    return stage_cli.stage_main(__name__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
