"""DVC stage ``evaluate_sfm``: metrics of an SfM result, against ground truth when there is one.

Inputs: the ``sfm`` stage's output folder (or any folder with COLMAP models in ``sparse/<i>/`` or
directly in it), optional ground-truth cameras (a capture folder's ``gt/``, ``gt_cameras/``, or a
path in Strecha, COLMAP or transforms.json format), and the ``evaluate_sfm`` section. Output
folder (written atomically): ``metrics.json`` with registered_fraction, num_models, num_points3d,
mean_track_length, mean_reprojection_error_px and, with ground truth, rotation/position errors after
a similarity alignment and ``auc_rel_pose_5deg``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pycolmap

from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.errors import CaptureError
from capture3d.stages.common import (
    params_from_args,
    stage_main,
    stage_parser,
    write_json,
)
from capture3d.tasks.sfm.evaluate import evaluate_sfm, read_ground_truth

logger = logging.getLogger(__name__)

GT_CANDIDATES = ("gt/transforms.json", "gt/cameras.bin", "gt/cameras.txt", "gt", "gt_cameras")


@dataclass(frozen=True)
class EvaluateSfmConfig:
    """Settings of SfM evaluation (the ``evaluate_sfm`` section)."""

    gt_format: Literal["auto", "strecha", "colmap", "transforms"]
    auc_threshold_deg: float


@dataclass(frozen=True)
class EvaluateSfmInputs:
    """An SfM output folder, optional ground truth, and the number of input images when known."""

    model: Path
    gt: Path | None = None
    num_images: int | None = None
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or (self.model.parent.name if self.model.name == "sfm" else self.model.name)


def load_config(params: Mapping[str, Any]) -> EvaluateSfmConfig:
    return section(params, "evaluate_sfm", EvaluateSfmConfig)


def find_ground_truth(capture: Path) -> Path | None:
    """The ground-truth path inside a capture folder, if any."""
    for rel in GT_CANDIDATES:
        path = capture / rel
        if path.is_file():
            return path.parent if path.suffix in (".bin", ".txt") else path
        if path.is_dir() and any(path.iterdir()):
            return path
    return None


def load_models(model: Path) -> list[pycolmap.Reconstruction]:
    """COLMAP models of an SfM output folder: ``sparse/<i>/`` in order, or the folder itself."""
    sparse = model / "sparse"
    folders = sorted((p for p in sparse.iterdir() if p.is_dir()), key=lambda p: int(p.name) if p.name.isdigit() else 1 << 30) if sparse.is_dir() else [model]
    models = [pycolmap.Reconstruction(f) for f in folders if (f / "images.bin").exists() or (f / "images.txt").exists()]
    return models


def read_metrics(out: Path) -> dict[str, Any]:
    """The metrics a run of this stage wrote into ``out``."""
    return json.loads((Path(out) / "metrics.json").read_text())


def run(inputs: EvaluateSfmInputs, out: Path, config: EvaluateSfmConfig) -> Path:
    """Evaluate ``inputs.model`` into ``out/metrics.json``; returns ``out``."""
    if not inputs.model.is_dir():
        raise CaptureError(inputs.label, f"model folder '{inputs.model}' does not exist")
    models = load_models(inputs.model)
    if not models:
        raise CaptureError(inputs.label, f"no COLMAP model in '{inputs.model}'")
    num_images = inputs.num_images
    sfm_metrics = inputs.model / "metrics.json"
    if num_images is None and sfm_metrics.is_file():
        num_images = int(json.loads(sfm_metrics.read_text())["num_images"])
    if num_images is None:
        num_images = max(m.num_images() for m in models)
    gt = None
    if inputs.gt is not None:
        try:
            gt = read_ground_truth(inputs.gt, config.gt_format)
        except (ValueError, OSError) as exc:
            raise CaptureError(inputs.label, f"ground truth: {exc}") from None
    try:
        metrics = evaluate_sfm(models, num_images, gt, auc_threshold_deg=config.auc_threshold_deg)
    except ValueError as exc:
        raise CaptureError(inputs.label, f"evaluation against ground truth failed: {exc}") from None
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", {"capture": inputs.label, "has_ground_truth": gt is not None, **metrics})
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("capture3d.stages.evaluate_sfm", __doc__ or "")
    parser.add_argument("--model", type=Path, required=True, help="sfm output folder")
    parser.add_argument("--capture", type=Path, default=None, help="capture folder: ground truth found inside it")
    parser.add_argument("--gt", type=Path, default=None, help="ground-truth path (overrides --capture)")
    return parser


def _main(args: argparse.Namespace) -> Path:
    gt = args.gt if args.gt is not None else (find_ground_truth(args.capture) if args.capture else None)
    inputs = EvaluateSfmInputs(args.model, gt, None, args.name or (args.capture.name if args.capture else ""))
    return run(inputs, args.out, load_config(params_from_args(args)))


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(build_parser(), argv, _main)


if __name__ == "__main__":
    raise SystemExit(main())
