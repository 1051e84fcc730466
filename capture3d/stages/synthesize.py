"""DVC stage ``synthesize``: the embedded sample capture, generated deterministically.

Inputs: the ``synthesize`` section of params.yaml (no files). Output folder (written atomically):
``images/NNNN.png``, ``intrinsics.json``, ``gt/transforms.json`` (ground-truth poses) and
``mesh.ply``, from :mod:`capture3d.tasks.synthesize_capture`.
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
from capture3d.stages.common import add_params_arguments, configure_logging, params_from_args, run_main
from capture3d.tasks.synthesize_capture import render_capture, write_capture

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
    parser = argparse.ArgumentParser(prog="python -m capture3d.stages.synthesize", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="capture folder to write (replaced atomically)")
    add_params_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    return run_main(lambda: run(args.out, load_config(params_from_args(args))))


if __name__ == "__main__":
    raise SystemExit(main())
