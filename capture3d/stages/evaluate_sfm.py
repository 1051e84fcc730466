"""DVC stage ``evaluate_sfm``: metrics of an SfM result, against ground truth when there is one.

Inputs: the ``sfm`` stage's output folder (or any folder with COLMAP models in ``sparse/<i>/`` or
directly in it), optional ground-truth cameras (a capture folder's ``gt/``, ``gt_cameras/``, or a
path in Strecha, COLMAP or transforms.json format), and the ``evaluate_sfm`` section. Output
folder (written atomically): ``metrics.json`` with registered_fraction, num_models, num_points3d,
mean_track_length, mean_reprojection_error_px and, with ground truth, rotation/position errors after
a similarity alignment and ``auc_rel_pose_5deg``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pycolmap

from capture3d import stage_cli
from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.errors import CaptureError
from capture3d.stages.common import write_json
from capture3d.tasks.sfm.evaluate import evaluate_sfm, read_ground_truth

logger = logging.getLogger(__name__)

GT_CANDIDATES = ("gt/transforms.json", "gt/cameras.bin", "gt/cameras.txt", "gt", "gt_cameras")


@dataclass(frozen=True)
class EvaluateSfmConfig:
    """Settings of SfM evaluation (the ``evaluate_sfm`` section)."""

    gt_format: Literal["auto", "strecha", "colmap", "transforms"]
    """format of the ground-truth cameras (auto: from the files found)"""
    auc_threshold_deg: float
    """relative-pose AUC up to this angular error (``auc_rel_pose_5deg``)"""


@dataclass(frozen=True)
class EvaluateSfmInputs:
    """An SfM output folder, optional ground truth (given, or found in the capture folder), and the
    number of input images when known."""

    model: Path
    """sfm output folder (or a COLMAP model folder)"""
    gt: Path | None = None
    """ground-truth cameras (default: found in the capture folder)"""
    num_images: int | None = None
    """number of input images (default: from the sfm metrics)"""
    name: str = ""
    """capture name for messages (default: the capture or model folder name)"""
    capture: Path | None = None
    """capture folder holding ground truth in ``gt/`` or ``gt_cameras/``"""

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.capture is not None:
            return self.capture.name
        return self.model.parent.name if self.model.name == "sfm" else self.model.name

    @property
    def ground_truth(self) -> Path | None:
        """``gt``, else the ground truth found in the capture folder, else None."""
        if self.gt is not None:
            return self.gt
        return find_ground_truth(self.capture) if self.capture is not None else None


Inputs = EvaluateSfmInputs


def load_config(params: Mapping[str, Any]) -> EvaluateSfmConfig:
    return section(params, "evaluate_sfm", EvaluateSfmConfig)


def has_ground_truth(inputs: EvaluateSfmInputs) -> bool:
    """Whether there is ground truth to evaluate against (given, or found in the capture)."""
    return inputs.ground_truth is not None


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
    folders = (
        sorted((p for p in sparse.iterdir() if p.is_dir()), key=lambda p: int(p.name) if p.name.isdigit() else 1 << 30)
        if sparse.is_dir()
        else [model]
    )
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
    gt_path = inputs.ground_truth
    if gt_path is not None:
        try:
            gt = read_ground_truth(gt_path, config.gt_format)
        except (ValueError, OSError) as exc:
            raise CaptureError(inputs.label, f"ground truth: {exc}") from None
    try:
        metrics = evaluate_sfm(models, num_images, gt, auc_threshold_deg=config.auc_threshold_deg)
    except ValueError as exc:
        raise CaptureError(inputs.label, f"evaluation against ground truth failed: {exc}") from None
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", {"capture": inputs.label, "has_ground_truth": gt is not None, **metrics})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return stage_cli.stage_main(__name__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
