"""DVC stage ``evaluate_bodies``: score a ``fit_bodies`` result against a capture's ground truth.

Inputs: the fit's output folder (``people.json``), the body capture (``gt/keypoints2d`` 2D ground
truth in any keypoint format, ``gt/joints3d.json`` 3D ground truth in metres; without 2D ground
truth the fitted keypoints are the reference) and the ``evaluate_bodies`` section of params.yaml.
Output folder (written atomically): ``metrics.json`` with per-body 2D error (pixels and per box
size), PCK, MPJPE and PA-MPJPE (millimetres), and their medians and means.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.errors import Capture3dError, CaptureError
from capture3d.stages.common import (
    params_from_args,
    stage_main,
    stage_parser,
    write_json,
)
from capture3d.tasks.body.capture import BodyInputs, load_ground_truth
from capture3d.tasks.body.evaluate import evaluate_records

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateBodiesConfig:
    """The ``evaluate_bodies`` section."""

    pck_threshold: float      # PCK counts keypoints closer than this x box size


def load_config(params: Mapping[str, Any]) -> EvaluateBodiesConfig:
    return section(params, "evaluate_bodies", EvaluateBodiesConfig)


def run(result: Path, capture: Path, out: Path, config: EvaluateBodiesConfig, name: str = "") -> Path:
    """Evaluate ``result`` against ``capture``'s ground truth into ``out``; returns ``out``."""
    inputs = BodyInputs.from_capture(capture, name)
    try:
        records = json.loads((Path(result) / "people.json").read_text())["bodies"]
        gt2d, gt3d = load_ground_truth(inputs)
    except (OSError, KeyError, json.JSONDecodeError, ValueError, Capture3dError) as exc:
        raise CaptureError(inputs.label, f"cannot evaluate '{result}': {exc}") from None
    if gt2d is None and gt3d is None:
        raise CaptureError(inputs.label, f"no ground truth in '{capture}/gt' (keypoints2d or joints3d.json)")
    metrics = evaluate_records(records, gt2d, gt3d, config.pck_threshold)
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", {"capture": inputs.label, **metrics["summary"],
                                          "per_body": metrics["per_body"]})
    logger.info("%s: %s", inputs.label, metrics["summary"])
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("capture3d.stages.evaluate_bodies", __doc__ or "")
    parser.add_argument("--result", type=Path, required=True, help="fit_bodies output folder")
    parser.add_argument("--capture", type=Path, required=True, help="body capture with gt/")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(build_parser(), argv, lambda args: run(
        args.result, args.capture, args.out, load_config(params_from_args(args)), args.name))


if __name__ == "__main__":
    raise SystemExit(main())
