"""Calibrated views for multi-view body fitting: a ``cameras.json`` file or an SfM result.

Inputs: ``cameras.json`` (``{"images": {name: {"K": 3x3, "R": 3x3, "t": [3], "width", "height"}},
"groups": [[name, ...], ...]}``; world-to-camera ``x_cam = R x_world + t``, OpenCV axes x right,
y down, z forward; t in metres; ``groups`` optional: the images that show one person at one
instant) or the ``sfm`` stage's output folder / a COLMAP sparse model (its frame and units are the
reconstruction's; lens distortion is ignored). Output: ``{image name: PinholeCamera}``, whether the
frame is metric, and the ``groups`` (:func:`read_groups`; None when the file has none).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from capture3d.errors import Capture3dError
from capture3d.tasks.cameras import PinholeCamera, read_colmap_cameras

logger = logging.getLogger(__name__)


class CamerasError(Capture3dError):
    """A cameras file or SfM model that cannot be used (one line)."""


def write_cameras_json(path: Path, cameras: dict[str, PinholeCamera]) -> None:
    """Write ``cameras.json`` (the format :func:`load_cameras` reads)."""
    data = {
        "images": {
            name: {"K": c.K.tolist(), "R": c.R.tolist(), "t": c.t.tolist(), "width": c.width, "height": c.height}
            for name, c in cameras.items()
        }
    }
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def load_cameras(source: Path) -> tuple[dict[str, PinholeCamera], bool]:
    """Cameras by image name, and True when the frame is metric (cameras.json) rather than an
    SfM reconstruction of unknown scale."""
    source = Path(source)
    if source.is_file():
        return _read_json(source), True
    if (source / "cameras.json").is_file():
        return _read_json(source / "cameras.json"), True
    for model in (source / "sparse" / "0", source / "sparse", source):
        if (model / "cameras.bin").is_file() or (model / "cameras.txt").is_file():
            try:
                return read_colmap_cameras(model), False
            except Exception as exc:  # noqa: BLE001 - pycolmap raises plain RuntimeErrors on bad files
                raise CamerasError(f"SfM model '{model}': {exc}") from None
    raise CamerasError(f"cameras '{source}': neither a cameras.json nor a COLMAP/SfM model folder")


def read_groups(path: Path) -> list[list[str]] | None:
    """The ``groups`` of a cameras.json (lists of image names), or None when it has none. A group
    that is not a list of names raises :class:`CamerasError`; names without a camera are warned of."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CamerasError(f"cameras file '{path}': {exc}") from None
    if not isinstance(data, dict) or "groups" not in data:
        return None
    groups = data["groups"]
    if not isinstance(groups, list) or not all(
        isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups
    ):
        raise CamerasError(f"cameras file '{path}': 'groups' must be a list of lists of image names")
    known = set(data.get("images") or {})
    missing = sorted({n for g in groups for n in g} - known)
    if missing:
        logger.warning("%s: groups name images without a camera: %s", path, ", ".join(missing[:5]))
    return [list(g) for g in groups]


def _read_json(path: Path) -> dict[str, PinholeCamera]:
    try:
        data = json.loads(path.read_text())
        out = {}
        for name, cam in data["images"].items():
            k, rot, trans = (np.asarray(cam[key], dtype=np.float64) for key in ("K", "R", "t"))
            if k.shape != (3, 3) or rot.shape != (3, 3) or trans.shape != (3,):
                raise ValueError(f"image '{name}': K and R must be 3x3 and t 3 numbers")
            if abs(np.linalg.det(rot) - 1) > 1e-3:
                raise ValueError(f"image '{name}': R is not a rotation")
            out[name] = PinholeCamera(name, int(cam["width"]), int(cam["height"]), k, rot, trans)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CamerasError(f"cameras file '{path}': {exc}") from None
    return out
