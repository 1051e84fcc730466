"""DVC stage ``train_fcgf``: train FCGF (PointInfoNCE or hardest-contrastive) on scan pairs with known poses.

Inputs: the ``train_fcgf`` section of params.yaml -- the synthetic training courtyards (seeds;
seed 0 is the demo scan capture and is never trained on), optional extra scan captures with
ground truth (``data.extra_captures``, e.g. real scans), folders of unlabeled scans
(``data.unlabeled``, ``--unlabeled DIR [DIR ...]``: self-supervised pairs cut from single scans,
:mod:`capture3d.tasks.fcgf.self_supervised`), the weights mixing the three
(``data.weights``), the network, optimiser, loss and augmentation settings, the iteration
budget, seed and device.

Held out: a folder's ``fragments.json`` (as in ``registration/real_fragments``) names each
file's scene ``group`` and ``flags``; files of a group in ``data.exclude_groups`` or with a flag
in ``data.exclude_flags`` are never trained on (they are evaluation data), and ``metrics.json``
lists what was used and what was left out.
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

import json
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
from capture3d.tasks.fcgf.self_supervised import (
    SelfSupervisedConfig,
    UnlabeledScan,
    unlabeled_scan,
    validation_set,
)
from capture3d.tasks.fcgf.train import (
    FcgfTrainConfig,
    TrainResult,
    TrainSource,
    train_fcgf,
)
from capture3d.tasks.registration.capture import find_scan_ground_truth
from capture3d.tasks.registration.preprocess import auto_voxel_size
from capture3d.tasks.registration.scan_io import list_scan_files, read_gt_poses, read_scan, read_scans

logger = logging.getLogger(__name__)

LABEL = "fcgf training"

Inputs = NoInputs
CLI_ALIASES = {
    "extra-capture": Flag(
        "data.extra_captures", append=True, help="scan capture with ground truth to train on as well (repeatable)"
    ),
    "unlabeled": Flag(
        "data.unlabeled",
        append=True,
        nargs=True,
        help="folder(s) of unlabeled scans: self-supervised pairs (--unlabeled DIR [DIR ...], repeatable)",
    ),
}
"""``--extra-capture DIR`` adds one folder to ``data.extra_captures``; ``--unlabeled DIR [DIR ...]``
adds folders to ``data.unlabeled``"""


@dataclass(frozen=True)
class SourceWeights:
    """Relative shares of the iterations drawn from each kind of training data (0: unused)."""

    synthetic: float
    """synthetic courtyard pairs (synthetic_seeds)"""
    posed: float
    """pairs of the scan captures with ground truth (extra_captures)"""
    unlabeled: float
    """self-supervised pairs cut from the unlabeled scans"""


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
    unlabeled: tuple[str, ...]
    """folders of unlabeled scans (each scan gives self-supervised pairs); --unlabeled DIR [DIR ...]"""
    exclude_groups: tuple[str, ...]
    """fragments.json scene groups (or, for a file without a group, its name) never trained on: evaluation only"""
    exclude_flags: tuple[str, ...]
    """fragments.json flags whose files are never trained on (same_scene_as_eval_pair)"""
    weights: SourceWeights
    """relative shares of synthetic, posed and unlabeled pairs"""
    self_supervised: SelfSupervisedConfig
    """how two views are cut from one unlabeled scan (overlap, motions, resampling, noise, dropout)"""
    unlabeled_val_pairs: int
    """fixed self-supervised validation pairs cut from the unlabeled scans (other views than training's)"""
    val_inlier_voxels: float
    """self-supervised validation: a match is an inlier within this many voxels of its scan"""


@dataclass(frozen=True)
class TrainFcgfConfig(FcgfTrainConfig):
    """The ``train_fcgf`` section: the training settings plus the data, the seed and the device."""

    data: TrainDataConfig
    """where the training and validation pairs come from"""
    store_dtype: Literal["float32", "float16"]
    """model.pt storage precision (float16: half the size, for shipping; a float32 copy model_float32.pt is kept)"""
    seed: int
    """random seed of the network, the pairs and the augmentation"""
    device: Literal["auto", "cpu", "cuda"]
    """where training runs (auto: CUDA when available)"""


def load_config(params: Mapping[str, Any]) -> TrainFcgfConfig:
    config = section(params, "train_fcgf", TrainFcgfConfig)
    d, w = config.data, config.data.weights
    used = (
        (d.synthetic_seeds and w.synthetic > 0)
        or (d.extra_captures and w.posed > 0)
        or (d.unlabeled and w.unlabeled > 0)
    )
    if config.iterations < 1 or not used:
        raise ParamsError(
            "train_fcgf: needs iterations >= 1 and at least one synthetic seed, extra capture or unlabeled folder "
            "with a positive weight"
        )
    if min(w.synthetic, w.posed, w.unlabeled) < 0:
        raise ParamsError("train_fcgf: data.weights must be >= 0")
    ss = d.self_supervised
    if not 0.0 < ss.min_overlap <= ss.max_overlap < 1.0:
        raise ParamsError("train_fcgf: data.self_supervised needs 0 < min_overlap <= max_overlap < 1")
    return config


def _excluded(folder: Path, data: TrainDataConfig) -> dict[str, str]:
    """File name -> reason for the files of ``folder`` its fragments.json marks as held out."""
    index = folder / "fragments.json"
    if not index.is_file():
        return {}
    try:
        entries = json.loads(index.read_text()).get("fragments", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise CaptureError(folder.name, f"fragments.json cannot be read ({exc})") from None
    out = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or "file" not in entry:
            continue
        flags = [f for f in entry.get("flags") or [] if f in data.exclude_flags]
        group = entry.get("group") or entry.get("name")
        if group in data.exclude_groups:
            out[str(entry["file"])] = f"group {group} held out"
        elif flags:
            out[str(entry["file"])] = f"flag {flags[0]}"
    return out


def unlabeled_scans(folders: Sequence[str], data: TrainDataConfig) -> tuple[list[UnlabeledScan], dict[str, str]]:
    """The unlabeled scans of ``folders`` (each at its own auto voxel) and the held-out files with reasons."""
    scans: list[UnlabeledScan] = []
    skipped: dict[str, str] = {}
    for name in folders:
        folder = Path(name)
        label = folder.name
        if not folder.is_dir():
            raise CaptureError(label, f"unlabeled scan folder '{folder}' does not exist")
        excluded = _excluded(folder, data)
        inner = folder / "scans" if (folder / "scans").is_dir() else folder
        try:
            files = list_scan_files(inner)
        except ValueError as exc:
            raise CaptureError(label, str(exc)) from None
        for path in files:
            if path.name in excluded:
                skipped[f"{label}/{path.name}"] = excluded[path.name]
                continue
            try:
                scan = read_scan(path)
                voxel = auto_voxel_size([scan], data.auto_target_points)
            except ValueError as exc:
                raise CaptureError(label, str(exc)) from None
            scans.append(unlabeled_scan(f"{label}/{scan.name}", scan.points, voxel))
        if not files:
            raise CaptureError(label, f"no point-cloud scans in '{inner}'")
    logger.info("%d unlabeled scans for self-supervised pairs, %d held out", len(scans), len(skipped))
    return scans, skipped


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
    d, w = config.data, config.data.weights
    posed = [pair for folder in d.extra_captures for pair in capture_pairs(Path(folder), d)] if w.posed > 0 else []
    scans, held_out = unlabeled_scans(d.unlabeled, d) if w.unlabeled > 0 else ([], {})
    synthetic: list[ScanPair] = []
    val: list[ScanPair] = []
    if d.synthetic_seeds and w.synthetic > 0:
        synthetic = synthetic_pairs(
            list(d.synthetic_seeds), d.num_scans, d.noise_sigma, d.width, d.height, d.auto_target_points, d.min_overlap
        )
        if d.validation_seeds:
            val = synthetic_pairs(
                list(d.validation_seeds),
                d.num_scans,
                d.noise_sigma,
                d.width,
                d.height,
                d.auto_target_points,
                d.min_overlap,
            )
    if len(val) > d.max_val_pairs:
        val = [val[i] for i in np.linspace(0, len(val) - 1, d.max_val_pairs).round().astype(int)]
    ss_val = validation_set(scans, d.unlabeled_val_pairs, d.self_supervised, config.seed + 104729)
    sources = [
        TrainSource("synthetic", w.synthetic, pairs=tuple(synthetic)),
        TrainSource("posed", w.posed, pairs=tuple(posed)),
        TrainSource("unlabeled", w.unlabeled, scans=tuple(scans), self_supervised=d.self_supervised),
    ]
    train = [*posed, *synthetic]
    if not train and not scans:
        raise CaptureError(LABEL, "no overlapping training pairs (check data.min_overlap and the captures)")
    try:
        device = resolve_device(config.device)
        state = state_path_for(out)
        result = train_fcgf(
            train,
            val,
            config,
            config.seed,
            device,
            state,
            sources=sources,
            val_ready=ss_val,
            val_inlier_voxels=d.val_inlier_voxels,
        )
    except ValueError as exc:
        raise CaptureError(LABEL, str(exc)) from None
    with atomic_dir(out) as tmp:
        extras: dict[str, Any] = {
            "voxel_rule": {"voxel_size": "auto", "auto_target_points": d.auto_target_points},
            "training": {
                "iterations": config.iterations,
                "seed": config.seed,
                "objective": config.loss.objective,
                "num_train_pairs": len(train),
                "num_unlabeled_scans": len(scans),
                "num_val_pairs": len(val) + len(ss_val),
            },
        }
        save_checkpoint(tmp / "model.pt", result.model, config.model, dtype=config.store_dtype, **extras)
        if config.store_dtype != "float32":
            save_checkpoint(tmp / "model_float32.pt", result.model, config.model, **extras)
        write_curve(tmp / "train_log.csv", result.history)
        write_curve(tmp / "validation.csv", result.validation)
        metrics = _metrics(result, train, [*val, *ss_val], config, str(device))
        metrics["unlabeled_scans"] = [s.name for s in scans]
        metrics["held_out_scans"] = held_out
        metrics["sources"] = [s.name for s in sources if s.weight > 0 and (s.pairs or s.scans)]
        write_json(tmp / "metrics.json", metrics)
    state.unlink(missing_ok=True)
    logger.info(
        "FCGF trained for %d iterations on %d pairs and %d unlabeled scans -> %s",
        config.iterations,
        len(train),
        len(scans),
        out,
    )
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
