"""DVC stage ``train_fcgf``: train FCGF (PointInfoNCE or hardest-contrastive) on scan pairs with known poses.

Inputs: the ``train_fcgf`` section of params.yaml -- the synthetic training courtyards (seeds;
seed 0 is the demo scan capture and is never trained on), optional extra scan captures with
ground truth (``data.extra_captures``, e.g. real scans), the network, optimiser, loss and
augmentation settings, the iteration budget, seed and device.
Output folder (written atomically): ``model.pt`` (capture3d FCGF checkpoint, loadable by the
``fcgf`` feature of ``register_scans``), ``train_log.csv`` (loss per iteration) and
``validation.csv`` (feature-match recall and inlier ratio on the validation pairs) for
``dvc plots``, and ``metrics.json``.

Resuming: the training state is checkpointed every ``checkpoint_every`` iterations to
``<out>/../.<out name>.train-state.pt`` (outside the output folder, which only appears once
training has finished). Rerunning the stage after an interruption continues from there with the
same curve; the state file is deleted when the stage succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from capture3d import stage_cli
from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.errors import CaptureError, ParamsError
from capture3d.stage_cli import Flag
from capture3d.stages.common import NoInputs, write_curve, write_json
from capture3d.stages.common import (
    state_path_for as common_state_path,
)
from capture3d.tasks.device import resolve_device
from capture3d.tasks.fcgf.checkpoint import save_checkpoint
from capture3d.tasks.fcgf.data import (
    ScanPair,
    pairs_from_scans,
    synthetic_pairs,
)
from capture3d.tasks.fcgf.train import (
    FcgfTrainConfig,
    TrainResult,
    train_fcgf,
)
from capture3d.tasks.registration.capture import find_scan_ground_truth
from capture3d.tasks.registration.preprocess import auto_voxel_size
from capture3d.tasks.registration.scan_io import read_gt_poses, read_scans

logger = logging.getLogger(__name__)

LABEL = "fcgf training"

Inputs = NoInputs
CLI_ALIASES = {
    "extra-capture": Flag(
        "data.extra_captures", append=True, help="scan capture with ground truth to train on as well (repeatable)"
    )
}
"""legacy flag: ``--extra-capture DIR`` adds one folder to ``data.extra_captures``"""


@dataclass(frozen=True)
class TrainDataConfig:
    """Where the training and validation pairs come from."""

    synthetic_seeds: tuple[int, ...]
    """synthetic training courtyards (seed 0 is the demo scan capture: never trained on)"""
    validation_seeds: tuple[int, ...]
    """held-out courtyards for the validation curve"""
    max_val_pairs: int
    """evenly spaced subset of the validation pairs (each costs a forward pass)"""
    num_scans: int
    """scans per synthetic courtyard"""
    noise_sigma: float
    """Gaussian depth noise of the synthetic scans, metres"""
    width: int
    """synthetic depth sensor width, pixels"""
    height: int
    """synthetic depth sensor height, pixels"""
    min_overlap: float
    """pairs overlapping less are not used"""
    auto_target_points: int
    """voxel per capture: register_scans' auto rule with this target"""
    extra_captures: tuple[str, ...]
    """scan capture folders with ground truth, added to training"""


@dataclass(frozen=True)
class TrainFcgfConfig(FcgfTrainConfig):
    """The ``train_fcgf`` section: the training settings plus the data, the seed and the device."""

    data: TrainDataConfig
    """where the training and validation pairs come from"""
    seed: int
    """random seed of the network, the pairs and the augmentation"""
    device: Literal["auto", "cpu", "cuda"]
    """where training runs (auto: CUDA when available)"""


def load_config(params: Mapping[str, Any]) -> TrainFcgfConfig:
    config = section(params, "train_fcgf", TrainFcgfConfig)
    if config.iterations < 1 or (not config.data.synthetic_seeds and not config.data.extra_captures):
        raise ParamsError("train_fcgf: needs iterations >= 1 and at least one synthetic seed or extra capture")
    return config


def capture_pairs(folder: Path, data: TrainDataConfig) -> list[ScanPair]:
    """Overlapping pairs of a scan capture with ground truth (CaptureError naming it otherwise)."""
    label = folder.name
    if not folder.is_dir():
        raise CaptureError(label, f"training capture folder '{folder}' does not exist")
    try:
        scans = read_scans(folder / "scans" if (folder / "scans").is_dir() else folder)
        gt_path = find_scan_ground_truth(folder)
        if gt_path is None:
            raise ValueError("no ground-truth poses (gt/poses.json, a .conf, .log or matrices) to train on")
        poses = read_gt_poses(gt_path, [s.name for s in scans], require_all=False)
        voxel = auto_voxel_size(scans, data.auto_target_points)
    except ValueError as exc:
        raise CaptureError(label, str(exc)) from None
    return pairs_from_scans(scans, poses, voxel, data.min_overlap, prefix=f"{label}/")


def state_path_for(out: Path) -> Path:
    """Where an interrupted run of ``out`` keeps its training state."""
    return common_state_path(out, "train")


def run(inputs: NoInputs, out: Path, config: TrainFcgfConfig) -> Path:
    """Train FCGF and write the checkpoint, curves and metrics into ``out``; returns ``out``."""
    d = config.data
    train = [pair for folder in d.extra_captures for pair in capture_pairs(Path(folder), d)]  # bad ones fail first
    if d.synthetic_seeds:
        train += synthetic_pairs(
            list(d.synthetic_seeds), d.num_scans, d.noise_sigma, d.width, d.height, d.auto_target_points, d.min_overlap
        )
    val = (
        synthetic_pairs(
            list(d.validation_seeds), d.num_scans, d.noise_sigma, d.width, d.height, d.auto_target_points, d.min_overlap
        )
        if d.validation_seeds
        else []
    )
    if len(val) > d.max_val_pairs:
        val = [val[i] for i in np.linspace(0, len(val) - 1, d.max_val_pairs).round().astype(int)]
    if not train:
        raise CaptureError(LABEL, "no overlapping training pairs (check data.min_overlap and the captures)")
    try:
        device = resolve_device(config.device)
        state = state_path_for(out)
        result = train_fcgf(train, val, config, config.seed, device, state)
    except ValueError as exc:
        raise CaptureError(LABEL, str(exc)) from None
    with atomic_dir(out) as tmp:
        save_checkpoint(
            tmp / "model.pt",
            result.model,
            config.model,
            voxel_rule={"voxel_size": "auto", "auto_target_points": d.auto_target_points},
            training={
                "iterations": config.iterations,
                "seed": config.seed,
                "objective": config.loss.objective,
                "num_train_pairs": len(train),
                "num_val_pairs": len(val),
            },
        )
        write_curve(tmp / "train_log.csv", result.history)
        write_curve(tmp / "validation.csv", result.validation)
        write_json(tmp / "metrics.json", _metrics(result, train, val, config, str(device)))
    state.unlink(missing_ok=True)
    logger.info("FCGF trained for %d iterations on %d pairs -> %s", config.iterations, len(train), out)
    return out


def _metrics(
    result: TrainResult, train: list[ScanPair], val: list[ScanPair], config: TrainFcgfConfig, device: str
) -> dict[str, Any]:
    losses = [r["loss"] for r in result.history]
    tail = losses[-min(50, len(losses)) :]
    first = result.validation[0] if result.validation else {}
    last = result.validation[-1] if result.validation else {}
    return {
        "status": "ok",
        "iterations": len(result.history),
        "resumed_from": result.resumed_from,
        "num_train_pairs": len(train),
        "num_val_pairs": len(val),
        "train_data": sorted({p.name.split("/")[0] for p in train}),
        "objective": config.loss.objective,
        "loss_first_50": float(np.mean(losses[:50])) if losses else None,
        "loss_last_50": float(np.mean(tail)) if tail else None,
        "val_fmr_initial": first.get("fmr"),
        "val_inlier_ratio_initial": first.get("inlier_ratio"),
        "val_fmr": last.get("fmr"),
        "val_inlier_ratio": last.get("inlier_ratio"),
        "seconds_per_iteration": float(np.median([r["seconds"] for r in result.history])) if result.history else None,
        "wall_s": result.seconds,
        "device": device,
    }


def main(argv: Sequence[str] | None = None) -> int:
    return stage_cli.stage_main(__name__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
