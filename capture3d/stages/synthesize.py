"""DVC stage ``synthesize``: the embedded sample capture, generated deterministically.

Inputs: the ``synthesize`` section of params.yaml (no files). Output folder (written atomically):
``images/NNNN.png``, ``intrinsics.json``, ``gt/transforms.json`` (ground-truth poses) and
``mesh.ply``, from :mod:`capture3d.tasks.synthesis.photos`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.stages.common import params_from_args, stage_main, stage_parser
from capture3d.tasks.synthesis.photos import render_capture, write_capture

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthesizeConfig:
    """Settings of the synthetic capture (the ``synthesize`` section)."""

    num_images: int
    width: int
    height: int
    fov_deg: float
    supersample: int
    seed: int


def load_config(params: Mapping[str, Any]) -> SynthesizeConfig:
    return section(params, "synthesize", SynthesizeConfig)


def run(out: Path, config: SynthesizeConfig) -> Path:
    """Render the synthetic capture into ``out``; returns ``out``."""
    capture = render_capture(num_images=config.num_images, width=config.width, height=config.height,
                             seed=config.seed, fov_deg=config.fov_deg, supersample=config.supersample)
    with atomic_dir(out) as tmp:
        write_capture(capture, tmp)
    logger.info("synthetic capture with %d images -> %s", len(capture.images), out)
    return out


def build_parser() -> argparse.ArgumentParser:
    return stage_parser("capture3d.stages.synthesize", __doc__ or "")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(build_parser(), argv, lambda args: run(args.out, load_config(params_from_args(args))))


if __name__ == "__main__":
    raise SystemExit(main())
