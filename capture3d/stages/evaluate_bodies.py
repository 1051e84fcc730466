"""DVC stage ``evaluate_bodies``: score a ``fit_bodies`` result against a capture's ground truth.

Inputs: the fit's output folder (``people.json``), the body capture (``gt/keypoints2d`` 2D ground
truth in any keypoint format, ``gt/joints3d.json`` 3D ground truth in metres; without 2D ground
truth the fitted keypoints are the reference) and the ``evaluate_bodies`` section of params.yaml.
Output folder (written atomically): ``metrics.json`` with per-body 2D error (pixels and per box
size), PCK, MPJPE and PA-MPJPE (millimetres), and their medians and means. A body whose 3D ground
truth shares fewer than 3 joints with the fit fails the stage with one line naming the body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture3d import stage_cli
from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.errors import Capture3dError, CaptureError
from capture3d.stages.common import write_json
from capture3d.tasks.body.capture import BodyInputs, load_ground_truth
from capture3d.tasks.body.evaluate import evaluate_records

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateBodiesConfig:
    """The ``evaluate_bodies`` section."""

    pck_threshold: float
    """PCK counts keypoints closer than this times the box size (max of width and height, as mmpose)"""


@dataclass(frozen=True)
class EvaluateBodiesInputs:
    """A fit_bodies output folder and the body capture with its ground truth."""

    result: Path
    """fit_bodies output folder (people.json)"""
    capture: Path
    """body capture with gt/ (keypoints2d, joints3d.json)"""
    name: str = ""
    """capture name for messages (default: the capture folder name)"""

    @property
    def label(self) -> str:
        return self.name or self.capture.name


Inputs = EvaluateBodiesInputs


def has_ground_truth(inputs: EvaluateBodiesInputs) -> bool:
    """Whether the capture has a ``gt/`` folder."""
    return (Path(inputs.capture) / "gt").is_dir()


def load_config(params: Mapping[str, Any]) -> EvaluateBodiesConfig:
    return section(params, "evaluate_bodies", EvaluateBodiesConfig)


def run(inputs: EvaluateBodiesInputs, out: Path, config: EvaluateBodiesConfig) -> Path:
    """Evaluate ``inputs.result`` against the capture's ground truth into ``out``; returns ``out``."""
    result, capture = inputs.result, inputs.capture
    body = BodyInputs.from_capture(capture, inputs.name)
    try:
        records = json.loads((Path(result) / "people.json").read_text())["bodies"]
        gt2d, gt3d = load_ground_truth(body)
    except (OSError, KeyError, json.JSONDecodeError, ValueError, Capture3dError) as exc:
        raise CaptureError(inputs.label, f"cannot evaluate '{result}': {exc}") from None
    if gt2d is None and gt3d is None:
        raise CaptureError(inputs.label, f"no ground truth in '{capture}/gt' (keypoints2d or joints3d.json)")
    try:
        metrics = evaluate_records(records, gt2d, gt3d, config.pck_threshold)
    except ValueError as exc:  # GroundTruthError: a body's ground truth shares too few joints
        raise CaptureError(inputs.label, str(exc)) from None
    with atomic_dir(out) as tmp:
        write_json(
            tmp / "metrics.json", {"capture": inputs.label, **metrics["summary"], "per_body": metrics["per_body"]}
        )
    logger.info("%s: %s", inputs.label, metrics["summary"])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return stage_cli.stage_main(__name__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
