"""Training FCGF with the hardest-contrastive loss: seeded, resumable, with loss and FMR curves.

Inputs: training and validation :class:`~capture3d.tasks.fcgf.data.ScanPair` lists, a
:class:`FcgfTrainConfig`, a seed, a device and a resume-state path. Outputs: a
:class:`TrainResult` -- the trained network, the per-iteration loss curve and the validation
curve (feature-match recall and inlier ratio, 3DMatch protocol). While it runs, the whole
training state (weights, optimiser, scheduler, both random generators, the curves) is written to
``state_path`` every ``checkpoint_every`` iterations and at the end; a later call with the same
``state_path`` continues from there and produces the same curve and weights as an uninterrupted
run (on the CPU, where the kernels are deterministic).

One iteration (FCGF's ``HardestContrastiveLossTrainer``, batch of one pair): draw a pair, augment
it (:func:`~capture3d.tasks.fcgf.data.augment_pair`), voxelise both clouds into one batched
tensor, run the network once, and take the loss over the ground-truth positives: FCGF's
hardest-contrastive loss (:func:`~capture3d.tasks.fcgf.loss.hardest_contrastive_loss`,
``objective: hardest_contrastive``) or PointInfoNCE
(:func:`~capture3d.tasks.fcgf.loss.point_info_nce_loss`, ``objective: point_info_nce``). Measured on
the synthetic courtyard scans (README, FCGF section): PointInfoNCE raises the held-out inlier
ratio several times faster, and switching a PointInfoNCE-trained model to the hardest-contrastive
loss lowers it again within 50 iterations.
Pairs too small for the network or with fewer than ``min_positives`` positives are redrawn.
Validation pairs are augmented once with a fixed seed (so they are rotated like the training
data) and evaluated in eval mode.

Mixed sources (``sources``, :class:`TrainSource`): each iteration first picks a source with
probability proportional to its weight -- a list of posed pairs (synthetic courtyards, captures
with ground truth), augmented as above, or a list of unlabeled scans, from which a fresh
self-supervised pair is cut (:func:`~capture3d.tasks.fcgf.self_supervised.make_pair`, already
moved and degraded, so not augmented again). Ready validation pairs (``val_ready``, e.g.
self-supervised ones) are used as they are, with the inlier distance ``val_inlier_voxels`` times
their voxel (their scans span millimetres to hundreds of metres). A non-finite loss stops
training with a ValueError; the state file then still holds the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from capture3d.progress import report as report_progress
from capture3d.tasks.fcgf.checkpoint import FcgfModelConfig, build_model
from capture3d.tasks.fcgf.data import (
    AugmentConfig,
    ScanPair,
    VoxelPair,
    augment_pair,
    voxelize_pair,
)
from capture3d.tasks.fcgf.loss import (
    feature_match_recall,
    hardest_contrastive_loss,
    point_info_nce_loss,
)
from capture3d.tasks.fcgf.model import ResUNetBN2C
from capture3d.tasks.fcgf.self_supervised import (
    SelfSupervisedConfig,
    UnlabeledScan,
    make_pair,
    to_scan_pair,
)
from capture3d.tasks.train_state import load_train_state, save_train_state

logger = logging.getLogger(__name__)

STATE_FORMAT = "capture3d.fcgf-train-state"
_MAX_DRAWS = 50  # attempts to draw a usable training pair per iteration


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (exponential decay every ``lr_decay_every`` steps)."""

    optimizer: Literal["adam", "sgd"]
    """optimiser (FCGF: sgd, learning rate 0.1, momentum 0.8)"""
    learning_rate: float
    """initial learning rate"""
    momentum: float
    """SGD momentum (sgd only)"""
    weight_decay: float
    """L2 weight decay"""
    lr_gamma: float
    """learning-rate decay factor ..."""
    lr_decay_every: int
    """... applied every this many iterations"""


@dataclass(frozen=True)
class LossConfig:
    """Training objective and its settings (FCGF: hardest-contrastive, margins 0.1 / 1.4, positives
    within 1.5 voxels; PointInfoNCE: temperature 0.07)."""

    objective: Literal["hardest_contrastive", "point_info_nce"]
    """point_info_nce (PointContrast) | hardest_contrastive (FCGF's paper)"""
    num_pos: int
    """sampled matches per step"""
    num_hn_samples: int
    """hardest_contrastive: negative candidates per cloud"""
    pos_thresh: float
    """hardest_contrastive: positive margin (FCGF: 0.1)"""
    neg_thresh: float
    """hardest_contrastive: negative margin (FCGF: 1.4)"""
    positive_radius_factor: float
    """matches: points within this many voxels under the true motion (FCGF: 1.5)"""
    safe_radius_factor: float
    """candidates this close (voxels) to the true match are never negatives (FCGF: 0)"""
    min_positives: int
    """pairs with fewer matches are redrawn"""
    temperature: float
    """point_info_nce: softmax temperature (PointContrast: 0.07)"""


@dataclass(frozen=True)
class FcgfTrainConfig:
    """Everything that shapes a training run except the data, the seed and the device."""

    model: FcgfModelConfig
    """the network's shape"""
    optim: OptimConfig
    """optimiser and learning-rate schedule"""
    loss: LossConfig
    """training objective"""
    augment: AugmentConfig
    """random rotation, crop and jitter of each training cloud"""
    iterations: int
    """training steps (one pair each)"""
    checkpoint_every: int
    """training state saved every this many iterations (resumable)"""
    val_every: int
    """validation (feature-match recall) every this many iterations"""
    fmr_inlier_distance: float
    """validation: inlier distance of the feature-match recall (3DMatch: 0.10, scene units)"""
    fmr_inlier_ratio: float
    """validation: inlier ratio of the feature-match recall (3DMatch: 0.05)"""


@dataclass(frozen=True)
class TrainSource:
    """One kind of training data and its share of the iterations (weights are relative)."""

    name: str
    """label in logs and metrics (synthetic, posed, unlabeled)"""
    weight: float
    """relative chance that an iteration draws from this source"""
    pairs: tuple[ScanPair, ...] = ()
    """posed pairs, augmented per draw"""
    scans: tuple[UnlabeledScan, ...] = ()
    """unlabeled scans: each draw cuts a fresh self-supervised pair from one of them"""
    self_supervised: SelfSupervisedConfig | None = None
    """how self-supervised pairs are cut (needed with scans)"""

    def identity(self) -> str:
        """What a resumed run must share with this source."""
        return repr((self.name, self.weight, len(self.pairs), [s.name for s in self.scans], self.self_supervised))


@dataclass
class TrainResult:
    """The trained network and its curves (rows of plain numbers, ready for CSV / dvc plots)."""

    model: ResUNetBN2C
    history: list[dict[str, float]]  # iteration, loss, pos_loss, neg_loss, lr, num_positives, seconds
    validation: list[dict[str, float]]  # iteration, fmr, inlier_ratio
    resumed_from: int  # iteration the run resumed at (0: fresh)
    seconds: float  # wall time of this call


@dataclass
class _State:
    model: ResUNetBN2C
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    rng: np.random.Generator
    gen: torch.Generator
    iteration: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    validation: list[dict[str, float]] = dataclasses.field(default_factory=list)


def _fresh_state(config: FcgfTrainConfig, seed: int, device: torch.device) -> _State:
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        model = build_model(config.model).to(device)
    o = config.optim
    if o.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=o.learning_rate, momentum=o.momentum, weight_decay=o.weight_decay
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=o.learning_rate, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, o.lr_decay_every), gamma=o.lr_gamma)
    gen = torch.Generator().manual_seed(seed)
    return _State(model, opt, sched, np.random.default_rng(seed), gen)


def _identity(config: FcgfTrainConfig) -> str:
    """What a saved state must match to be resumed: the training settings alone (not data paths or device)."""
    return repr({f.name: getattr(config, f.name) for f in dataclasses.fields(FcgfTrainConfig)})


def _state_identity(config: FcgfTrainConfig, seed: int, sources: tuple[str, ...] = ()) -> str:
    return repr((_identity(config), seed)) if not sources else repr((_identity(config), seed, sources))


def _save_state(path: Path, state: _State, config: FcgfTrainConfig, seed: int, sources: tuple[str, ...] = ()) -> None:
    payload = {
        "iteration": state.iteration,
        "model": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "rng": state.rng.bit_generator.state,
        "gen": state.gen.get_state(),
        "history": state.history,
        "validation": state.validation,
    }
    save_train_state(path, STATE_FORMAT, _state_identity(config, seed, sources), payload)


def _restore(path: Path, state: _State, config: FcgfTrainConfig, seed: int, sources: tuple[str, ...] = ()) -> bool:
    """Load ``path`` into ``state`` when it is a state of this very run (same config, seed and sources)."""
    saved = load_train_state(path, STATE_FORMAT, _state_identity(config, seed, sources))
    if saved is None:
        return False
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.rng.bit_generator.state = saved["rng"]
    state.gen.set_state(saved["gen"])
    state.iteration = int(saved["iteration"])
    state.history = list(saved["history"])
    state.validation = list(saved["validation"])
    return True


def _draw(
    sources: list[TrainSource], state: _State, config: FcgfTrainConfig, device: torch.device
) -> tuple[VoxelPair, str]:
    """A voxelised training pair with enough positives (redrawn up to _MAX_DRAWS times) and its source.

    Posed pairs are augmented; self-supervised ones are cut fresh from an unlabeled scan. With one
    source no generator draw picks it (a single-source run draws exactly as before sources existed).
    """
    weights = np.array([s.weight for s in sources], dtype=np.float64)
    for _ in range(_MAX_DRAWS):
        src = (
            sources[0] if len(sources) == 1 else sources[int(state.rng.choice(len(sources), p=weights / weights.sum()))]
        )
        try:
            if src.scans:
                scan = src.scans[int(state.rng.integers(len(src.scans)))]
                assert src.self_supervised is not None
                aug = to_scan_pair(make_pair(scan.points, scan.voxel, src.self_supervised, state.rng), scan.name)
            else:
                pair = src.pairs[int(state.rng.integers(len(src.pairs)))]
                aug = augment_pair(pair, state.rng, config.augment)
            safe = config.loss.safe_radius_factor if config.loss.objective == "hardest_contrastive" else 0.0
            vp = voxelize_pair(aug, config.loss.positive_radius_factor, device, safe)
        except ValueError:
            continue
        if vp.positives.shape[0] >= config.loss.min_positives:
            return vp, src.name
    raise ValueError(
        f"no usable training pair in {_MAX_DRAWS} draws: clouds too small or too little overlap "
        f"(need >= {config.loss.min_positives} positive voxel pairs)"
    )


def objective(
    feats: torch.Tensor, vp: VoxelPair, lc: LossConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, positive term, negative term) of one step; PointInfoNCE has no separate terms (NaN)."""
    f0, f1 = feats[: vp.num0], feats[vp.num0 :]  # (M0, D), (M1, D)
    if lc.objective == "point_info_nce":
        radius = max(lc.safe_radius_factor, lc.positive_radius_factor) * vp.voxel
        loss = point_info_nce_loss(
            f0,
            f1,
            vp.positives,
            vp.positions0,
            vp.positions1,
            radius,
            num_pos=lc.num_pos,
            temperature=lc.temperature,
            generator=gen,
        )
        nan = torch.tensor(float("nan"))
        return loss, nan, nan
    return hardest_contrastive_loss(
        f0,
        f1,
        vp.positives,
        num_pos=lc.num_pos,
        num_hn_samples=lc.num_hn_samples,
        pos_thresh=lc.pos_thresh,
        neg_thresh=lc.neg_thresh,
        generator=gen,
        excluded_pairs=vp.excluded,
    )


def validation_pairs(
    pairs: list[ScanPair], config: FcgfTrainConfig, seed: int, device: torch.device | str = "cpu"
) -> list[VoxelPair]:
    """Validation pairs augmented once with a generator seeded from ``seed`` (fixed across runs)."""
    rng = np.random.default_rng(seed + 7919)
    out = []
    for pair in pairs:
        try:
            out.append(
                voxelize_pair(augment_pair(pair, rng, config.augment), config.loss.positive_radius_factor, device)
            )
        except ValueError as exc:
            logger.warning("validation pair %s skipped: %s", pair.name, exc)
    return out


def evaluate_fmr(
    model: ResUNetBN2C,
    pairs: list[VoxelPair],
    inlier_distance: float,
    inlier_ratio: float,
    inlier_voxels: float | None = None,
) -> dict[str, float]:
    """Feature-match recall and mean inlier ratio of ``model`` on voxelised pairs (eval mode).

    With ``inlier_voxels`` the inlier distance of each pair is that many of its voxels instead of
    ``inlier_distance`` (pairs of scans at very different scales)."""
    if not pairs:
        return {"fmr": float("nan"), "inlier_ratio": float("nan")}
    was_training = model.training
    model.eval()
    flags, ratios = [], []
    try:
        with torch.no_grad():
            for vp in pairs:
                feats = model(vp.tensor).features.float().cpu()  # (M0 + M1, D)
                ok, frac = feature_match_recall(
                    feats[: vp.num0],
                    feats[vp.num0 :],
                    vp.positions0,
                    vp.positions1,
                    vp.T_1_from_0,
                    inlier_distance if inlier_voxels is None else inlier_voxels * vp.voxel,
                    inlier_ratio,
                )
                flags.append(ok)
                ratios.append(frac)
    finally:
        model.train(was_training)
    return {"fmr": float(np.mean(flags)), "inlier_ratio": float(np.mean(ratios))}


def ready_pairs(pairs: list[ScanPair], config: FcgfTrainConfig, device: torch.device | str = "cpu") -> list[VoxelPair]:
    """``pairs`` voxelised as they are (no augmentation); pairs too small for the network are skipped."""
    out = []
    for pair in pairs:
        try:
            out.append(voxelize_pair(pair, config.loss.positive_radius_factor, device))
        except ValueError as exc:
            logger.warning("validation pair %s skipped: %s", pair.name, exc)
    return out


def _validate(
    model: ResUNetBN2C,
    val: list[VoxelPair],
    ready: list[VoxelPair],
    config: FcgfTrainConfig,
    val_inlier_voxels: float,
) -> dict[str, float]:
    """Validation row: FMR and inlier ratio over both kinds of pairs (weighted by their counts)."""
    parts = []
    if val:
        parts.append((len(val), evaluate_fmr(model, val, config.fmr_inlier_distance, config.fmr_inlier_ratio)))
    if ready:
        parts.append(
            (len(ready), evaluate_fmr(model, ready, 0.0, config.fmr_inlier_ratio, inlier_voxels=val_inlier_voxels))
        )
    n = sum(k for k, _ in parts)
    return {key: float(sum(k * m[key] for k, m in parts) / n) for key in ("fmr", "inlier_ratio")}


def train_fcgf(
    train_pairs: list[ScanPair],
    val_pairs: list[ScanPair],
    config: FcgfTrainConfig,
    seed: int,
    device: torch.device | str,
    state_path: Path,
    progress: Callable[[dict[str, float]], None] | None = None,
    sources: list[TrainSource] | None = None,
    val_ready: list[ScanPair] | None = None,
    val_inlier_voxels: float = 2.0,
) -> TrainResult:
    """Train (or resume training) FCGF; see the module docstring. ``progress`` gets each history row.

    ``sources`` (weighted posed and unlabeled data) replaces ``train_pairs`` when given;
    ``val_ready`` pairs are validated unaugmented at ``val_inlier_voxels`` voxels.
    """
    if sources is None:
        sources = [TrainSource("pairs", 1.0, pairs=tuple(train_pairs))] if train_pairs else []
        identity: tuple[str, ...] = ()
    else:
        sources = [s for s in sources if s.weight > 0 and (s.pairs or s.scans)]
        identity = tuple(s.identity() for s in sources)
    if not sources:
        raise ValueError("no training pairs")
    start = time.perf_counter()
    device = torch.device(device)
    state = _fresh_state(config, seed, device)
    state_path = Path(state_path)
    if state_path.is_file() and _restore(state_path, state, config, seed, identity):
        logger.info("resuming FCGF training at iteration %d from %s", state.iteration, state_path)
    resumed_from = state.iteration
    val = validation_pairs(val_pairs, config, seed, device)
    ready = ready_pairs(list(val_ready or []), config, device)
    if state.iteration == 0 and (val or ready):
        state.validation.append({"iteration": 0.0, **_validate(state.model, val, ready, config, val_inlier_voxels)})
    state.model.train()
    lc = config.loss
    while state.iteration < config.iterations:
        t = time.perf_counter()
        vp, source = _draw(sources, state, config, device)
        feats = state.model(vp.tensor).features  # (M0 + M1, D)
        loss, pos, neg = objective(feats, vp, lc, state.gen)
        if not bool(torch.isfinite(loss)):
            raise ValueError(
                f"FCGF loss became {float(loss)} at iteration {state.iteration + 1}; "
                f"the last good state is kept in '{state_path}'"
            )
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        lr = float(state.optimizer.param_groups[0]["lr"])
        state.scheduler.step()
        state.iteration += 1
        report_progress(logger, "train fcgf (iterations)", state.iteration, config.iterations)
        row = {
            "iteration": float(state.iteration),
            "loss": loss.item(),
            "pos_loss": pos.item(),
            "neg_loss": neg.item(),
            "lr": lr,
            "num_positives": float(vp.positives.shape[0]),
            "source": float(next(i for i, s in enumerate(sources) if s.name == source)),
            "seconds": time.perf_counter() - t,
        }
        state.history.append(row)
        if progress is not None:
            progress(row)
        last = state.iteration == config.iterations
        if (val or ready) and (state.iteration % max(1, config.val_every) == 0 or last):
            metrics = _validate(state.model, val, ready, config, val_inlier_voxels)
            state.validation.append({"iteration": float(state.iteration), **metrics})
            logger.info(
                "iteration %d: loss %.4f, validation FMR %.3f, inlier ratio %.3f",
                state.iteration,
                row["loss"],
                metrics["fmr"],
                metrics["inlier_ratio"],
            )
        if state.iteration % max(1, config.checkpoint_every) == 0 or last:
            _save_state(state_path, state, config, seed, identity)
    state.model.eval()
    return TrainResult(state.model, state.history, state.validation, resumed_from, time.perf_counter() - start)
