"""DVC stage ``synthesize_scans``: the embedded sample scan capture, generated deterministically.

Inputs: the ``synthesize_scans`` section of params.yaml (no files). Output folder (written
atomically): ``scans/scan_NNN.ply`` (partial, noisy depth-sensor scans of the demo scene, each in
its sensor frame) and ``gt/poses.json`` (world_from_scan), from :mod:`capture3d.tasks.synthesis.scans`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture3d import stage_cli
from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.stages.common import NoInputs
from capture3d.tasks.synthesis.scans import render_scans, write_scan_capture

logger = logging.getLogger(__name__)

Inputs = NoInputs


@dataclass(frozen=True)
class SynthesizeScansConfig:
    """Settings of the synthetic scan capture (the ``synthesize_scans`` section)."""

    num_scans: int
    """depth-sensor scans around the scene"""
    noise_sigma: float
    """Gaussian depth noise, metres"""
    width: int
    """depth sensor resolution: width in pixels"""
    height: int
    """depth sensor resolution: height in pixels"""
    seed: int
    """random seed of the sensor poses and the noise"""


def load_config(params: Mapping[str, Any]) -> SynthesizeScansConfig:
    return section(params, "synthesize_scans", SynthesizeScansConfig)


def run(inputs: NoInputs, out: Path, config: SynthesizeScansConfig) -> Path:
    """Render the synthetic scans into ``out``; returns ``out``."""
    scans, poses = render_scans(
        num_scans=config.num_scans,
        seed=config.seed,
        noise_sigma=config.noise_sigma,
        width=config.width,
        height=config.height,
    )
    with atomic_dir(out) as tmp:
        write_scan_capture(scans, poses, tmp)
    logger.info("synthetic scan capture with %d scans -> %s", len(scans), out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return stage_cli.stage_main(__name__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
