"""A body capture on disk: where its keypoints, images, cameras and ground truth are, and its ground truth.

Inputs: a body capture folder (``keypoints/`` or ``keypoints.json``, optional ``images/``,
``cameras.json`` and ``gt/``), or the pieces given one by one. Outputs: :class:`BodyInputs` and the
ground truth (2D keypoints per person, 3D joints in metres). Shared by the ``fit_bodies`` and
``evaluate_bodies`` stages.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from capture3d.tasks.body.keypoint_io import PersonKeypoints, load_keypoints

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BodyInputs:
    """Where a body capture's pieces are; ``from_capture`` fills them from the standard layout."""

    keypoints: Path
    images: Path | None = None
    cameras: Path | None = None
    gt: Path | None = None
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or (self.keypoints.name if self.keypoints.is_dir() else self.keypoints.parent.name)

    @classmethod
    def from_capture(cls, capture: Path, name: str = "") -> BodyInputs:
        capture = Path(capture)
        keypoints = next(
            (p for p in (capture / "keypoints", capture / "keypoints.json") if p.exists()), capture / "keypoints"
        )
        images = capture / "images"
        return cls(
            keypoints=keypoints,
            images=images if images.is_dir() else None,
            cameras=capture / "cameras.json" if (capture / "cameras.json").is_file() else None,
            gt=capture / "gt" if (capture / "gt").is_dir() else None,
            name=name or capture.name,
        )


def load_ground_truth(inputs: BodyInputs) -> tuple[dict[str, PersonKeypoints] | None, dict | None]:
    """2D ground truth keyed by person (``gt/keypoints2d[.json]``) and 3D joints (``gt/joints3d.json``),
    each None when absent; a malformed file raises ``ValueError``."""
    if inputs.gt is None:
        return None, None
    gt2d = gt3d = None
    source = next((p for p in (inputs.gt / "keypoints2d", inputs.gt / "keypoints2d.json") if p.exists()), None)
    if source is not None:
        gt2d = {p.person: p for p in load_keypoints(source, inputs.images)}
    if (inputs.gt / "joints3d.json").is_file():
        try:
            gt3d = json.loads((inputs.gt / "joints3d.json").read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"ground truth '{inputs.gt / 'joints3d.json'}': {exc}") from None
    return gt2d, gt3d
