"""Domain adaptation of a trained FCGF model to a capture's own scans, without ground truth.

Inputs: a trained :class:`~capture3d.tasks.fcgf.model.ResUNetBN2C` (weights are copied, the
given model is left untouched), the capture's scans as (N_i, 3) point arrays with the voxel the
registration runs at, an :class:`AdaptConfig`, a seed and a device. Output: an
:class:`AdaptResult` -- the fine-tuned model (eval mode), the feature-match recall and inlier
ratio on fixed self-supervised validation pairs before and after, the iterations run and time.

Method: the training objective of the shipped model (PointInfoNCE, temperature 0.07, 1024
matches, positives within 1.5 voxels, neighbours within 2 voxels masked) on self-supervised pairs
cut from the capture's scans (:mod:`capture3d.tasks.fcgf.self_supervised`); Adam at
``learning_rate``; batch norm in training mode, so its statistics follow the capture. It stops
after ``max_iterations`` or once ``max_seconds`` have passed (whichever comes first: with a time
box the iteration count, and so the weights, depend on the machine's speed). Validation pairs are
cut with a generator seeded apart from the training draws, from the same scans (other random
views): they estimate matching on this capture's geometry, not on its true scan pairs.

Safety: when the validation FMR after adaptation is below the one before, ``improved`` is False
and the caller should keep the original model (register_scans does, and says so).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from capture3d.progress import report as report_progress
from capture3d.tasks.fcgf.data import voxelize_pair
from capture3d.tasks.fcgf.model import ResUNetBN2C
from capture3d.tasks.fcgf.self_supervised import (
    SelfSupervisedConfig,
    make_pair,
    to_scan_pair,
    unlabeled_scan,
    validation_set,
)
from capture3d.tasks.fcgf.train import LossConfig, evaluate_fmr, objective

logger = logging.getLogger(__name__)

#: The shipped model's objective (train_fcgf's params.yaml defaults), used unchanged to adapt it.
ADAPT_LOSS = LossConfig(
    objective="point_info_nce",
    num_pos=1024,
    num_hn_samples=256,
    pos_thresh=0.1,
    neg_thresh=1.4,
    positive_radius_factor=1.5,
    safe_radius_factor=2.0,
    min_positives=64,
    temperature=0.07,
)
_MAX_DRAWS = 20


@dataclass(frozen=True)
class AdaptConfig:
    """Budget and settings of the self-supervised fine-tuning."""

    max_seconds: float
    """time box of the fine-tuning, seconds"""
    max_iterations: int
    """at most this many steps (one self-supervised pair each)"""
    learning_rate: float
    """Adam learning rate"""
    val_pairs: int
    """fixed self-supervised validation pairs for the before / after FMR"""
    val_inlier_voxels: float
    """validation: a match is an inlier within this many voxels"""
    inlier_ratio: float
    """validation: FMR counts pairs with at least this inlier ratio (3DMatch: 0.05)"""
    views: SelfSupervisedConfig
    """how the self-supervised pairs are cut from the scans"""


@dataclass
class AdaptResult:
    """The adapted model and what adaptation changed on the validation pairs."""

    model: ResUNetBN2C
    fmr_before: float
    inlier_ratio_before: float
    fmr_after: float
    inlier_ratio_after: float
    iterations: int
    seconds: float
    num_val_pairs: int
    losses: list[float]

    @property
    def improved(self) -> bool:
        """The adapted model matches the validation pairs at least as well as the original."""
        return self.fmr_after > self.fmr_before or (
            self.fmr_after == self.fmr_before and self.inlier_ratio_after >= self.inlier_ratio_before
        )


def adapt_model(
    model: ResUNetBN2C,
    scans: list[tuple[str, np.ndarray]],
    voxel: float,
    config: AdaptConfig,
    seed: int,
    device: torch.device | str = "cpu",
) -> AdaptResult:
    """Fine-tune a copy of ``model`` on self-supervised pairs of ``scans`` ((name, (N, 3) points)).

    See the module docstring.

    Raises ValueError when no usable pair can be cut (scans too small for the network at ``voxel``).
    """
    start = time.perf_counter()
    device = torch.device(device)
    tuned = copy.deepcopy(model).to(device)
    ready = [unlabeled_scan(name, pts, voxel) for name, pts in scans]
    val = []
    for pair in validation_set(ready, config.val_pairs, config.views, seed + 7919):
        try:
            val.append(voxelize_pair(pair, ADAPT_LOSS.positive_radius_factor, device))
        except ValueError as exc:
            logger.warning("adaptation validation pair %s skipped: %s", pair.name, exc)
    if not val:
        raise ValueError("no self-supervised validation pair could be cut from the scans (too small at this voxel)")
    before = evaluate_fmr(tuned, val, 0.0, config.inlier_ratio, inlier_voxels=config.val_inlier_voxels)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(tuned.parameters(), lr=config.learning_rate)
    tuned.train()
    losses: list[float] = []
    it = 0
    while it < config.max_iterations and time.perf_counter() - start < config.max_seconds:
        vp = None
        for _ in range(_MAX_DRAWS):
            scan = ready[int(rng.integers(len(ready)))]
            try:
                cand = voxelize_pair(
                    to_scan_pair(make_pair(scan.points, scan.voxel, config.views, rng), scan.name),
                    ADAPT_LOSS.positive_radius_factor,
                    device,
                )
            except ValueError:
                continue
            if cand.positives.shape[0] >= ADAPT_LOSS.min_positives:
                vp = cand
                break
        if vp is None:
            raise ValueError(f"no usable self-supervised pair in {_MAX_DRAWS} draws (scans too small at this voxel)")
        loss, _, _ = objective(tuned(vp.tensor).features, vp, ADAPT_LOSS, gen)
        if not bool(torch.isfinite(loss)):
            raise ValueError(f"adaptation loss became {float(loss)} at step {it + 1}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
        it += 1
        report_progress(logger, "adapt fcgf (iterations)", it, config.max_iterations)
    tuned.eval()
    after = evaluate_fmr(tuned, val, 0.0, config.inlier_ratio, inlier_voxels=config.val_inlier_voxels)
    result = AdaptResult(
        tuned,
        before["fmr"],
        before["inlier_ratio"],
        after["fmr"],
        after["inlier_ratio"],
        it,
        time.perf_counter() - start,
        len(val),
        losses,
    )
    logger.info(
        "FCGF adapted for %d steps (%.0f s): validation FMR %.3f -> %.3f, inlier ratio %.3f -> %.3f",
        it,
        result.seconds,
        result.fmr_before,
        result.fmr_after,
        result.inlier_ratio_before,
        result.inlier_ratio_after,
    )
    return result
