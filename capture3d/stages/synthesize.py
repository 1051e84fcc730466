"""DVC stage ``synthesize``: the embedded sample capture, generated deterministically.

Inputs: the ``synthesize`` section of params.yaml (no files). Output folder (written atomically):
``images/NNNN.png``, ``intrinsics.json``, ``gt/transforms.json`` (ground-truth poses) and
``mesh.ply``, from :mod:`capture3d.tasks.synthesis.photos`.
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
from capture3d.tasks.synthesis.photos import render_capture, write_capture

logger = logging.getLogger(__name__)

Inputs = NoInputs


@dataclass(frozen=True)
class SynthesizeConfig:
    """Settings of the synthetic capture (the ``synthesize`` section)."""

    num_images: int
    """photos on a circle around the scene"""
    width: int
    """image width in pixels"""
    height: int
    """image height in pixels"""
    fov_deg: float
    """horizontal field of view in degrees"""
    supersample: int
    """rays per pixel along each axis (anti-aliasing)"""
    texture_scale: float
    """multiplies the procedural texture's octave cells (1: 0.4 m down to 2.7 cm; larger: coarser
    blobs, which a fit of a few CPU minutes can learn)"""
    texture_detail: float
    """strength of the fine multiplicative detail from the two finest octaves, in [0, 1) (0.8: grainy)"""
    seed: int
    """random seed of the procedural scene and the camera jitter"""


def load_config(params: Mapping[str, Any]) -> SynthesizeConfig:
    return section(params, "synthesize", SynthesizeConfig)


def run(inputs: NoInputs, out: Path, config: SynthesizeConfig) -> Path:
    """Render the synthetic capture into ``out``; returns ``out``."""
    capture = render_capture(
        num_images=config.num_images,
        width=config.width,
        height=config.height,
        seed=config.seed,
        fov_deg=config.fov_deg,
        supersample=config.supersample,
        texture_scale=config.texture_scale,
        texture_detail=config.texture_detail,
    )
    with atomic_dir(out) as tmp:
        write_capture(capture, tmp)
    logger.info("synthetic capture with %d images -> %s", len(capture.images), out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return stage_cli.stage_main(__name__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
