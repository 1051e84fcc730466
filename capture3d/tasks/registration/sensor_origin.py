"""Where each scan's sensor was: the origin the free-space test of registration needs.

Inputs: a scan file's path (its header), the capture folder (an optional ``sensor_origin.json``)
and a mode. Output: per scan the sensor origin (3,) in the scan's own frame, or None, and where it
came from. Sources, first found wins in ``auto`` mode:

1. the file's own header: a PCD ``VIEWPOINT tx ty tz qw qx qy qz`` line (PCL writes the acquisition
   viewpoint there; ``0 0 0 1 0 0 0`` means the sensor at the frame's origin, as for organised
   depth-camera and LiDAR frames); a PLY header line ``comment viewpoint tx ty tz`` (or
   ``comment sensor_origin x y z``, ``obj_info viewpoint ...``), as
   :func:`~capture3d.tasks.registration.scan_io.write_point_cloud` writes with ``viewpoint``;
2. the capture's ``sensor_origin.json``: ``{"default": [x, y, z], "<scan name>": [x, y, z], ...}``
   (a per-scan entry beats the default);
3. nothing: the origin is unknown and the free-space test is not used for that scan.

``scan_frame`` mode asserts that every scan's sensor sits at its frame's origin (range grids and
single depth or LiDAR frames exported in the sensor frame); ``none`` disables the test. Fused or
registered clouds (3DMatch fragments, scans already moved into a common frame) have no single
sensor origin: leave them to ``auto`` without a viewpoint, or ``none``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

ORIGIN_FILE = "sensor_origin.json"
OriginMode = Literal["auto", "scan_frame", "none"]
_HEADER_LIMIT = 65536  # bytes of a file read to find its header
_PLY_KEYS = ("viewpoint", "sensor_origin")


def _header_lines(path: Path, end_marker: str) -> list[str]:
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_LIMIT)
    lines = []
    for raw in head.split(b"\n"):
        line = raw.decode("ascii", errors="replace").strip()
        lines.append(line)
        if line.upper().startswith(end_marker):
            break
    return lines


def _numbers(fields: list[str], path: Path, what: str) -> np.ndarray:
    try:
        values = np.array([float(f) for f in fields[:3]], dtype=np.float64)
    except ValueError:
        raise ValueError(f"{path}: {what} is not three numbers") from None
    if values.shape != (3,) or not np.isfinite(values).all():
        raise ValueError(f"{path}: {what} must hold three finite numbers")
    return values


def header_origin(path: Path) -> np.ndarray | None:
    """The sensor origin (3,) a PCD or PLY header states, or None; ValueError when it is malformed."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pcd":
        for line in _header_lines(path, "DATA"):
            fields = line.split()
            if fields and fields[0].upper() == "VIEWPOINT":
                return _numbers(fields[1:], path, "the VIEWPOINT line")
        return None
    if suffix == ".ply":
        for line in _header_lines(path, "END_HEADER"):
            fields = line.split()
            if len(fields) >= 2 and fields[0] in ("comment", "obj_info") and fields[1].lower() in _PLY_KEYS:
                return _numbers(fields[2:], path, f"the '{fields[0]} {fields[1]}' line")
        return None
    return None


def capture_origins(capture: Path) -> dict[str, np.ndarray]:
    """``sensor_origin.json`` of a capture folder (name or ``default`` -> (3,)); {} when absent."""
    path = Path(capture) / ORIGIN_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object of scan name (or 'default') -> [x, y, z]")
    return {
        str(k): _numbers(list(map(str, v)) if isinstance(v, list) else [], path, f"entry {k!r}") for k, v in raw.items()
    }


def sensor_origins(
    names: list[str], paths: list[Path], capture: Path, mode: OriginMode
) -> list[tuple[np.ndarray | None, str]]:
    """Per scan (origin (3,) in its frame or None, source): see the module docstring."""
    if len(names) != len(paths):
        raise ValueError(f"{len(names)} scan names for {len(paths)} files")
    if mode == "none":
        return [(None, "disabled") for _ in names]
    if mode == "scan_frame":
        return [(np.zeros(3), "scan_frame") for _ in names]
    if mode != "auto":
        raise ValueError(f"unknown sensor_origin mode {mode!r} (known: auto, scan_frame, none)")
    listed = capture_origins(capture)
    out: list[tuple[np.ndarray | None, str]] = []
    for name, path in zip(names, paths):
        origin = header_origin(path)
        if origin is not None:
            out.append((origin, "file header"))
        elif name in listed:
            out.append((listed[name], ORIGIN_FILE))
        elif "default" in listed:
            out.append((listed["default"], f"{ORIGIN_FILE} default"))
        else:
            out.append((None, "unknown"))
    return out
