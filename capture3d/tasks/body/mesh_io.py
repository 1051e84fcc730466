"""Writing triangle meshes (a fitted body) to disk.

Inputs: vertices (V, 3) float and faces (F, 3) int (0-based vertex indices), and a path ending in
``.ply`` or ``.obj``. Output: a binary little-endian PLY (float32 x, y, z; ``uchar int`` face
lists) or a text Wavefront OBJ (``v`` and 1-based ``f`` lines), written through a temporary file
that is renamed into place.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from capture3d.atomic import atomic_file

logger = logging.getLogger(__name__)


def _check(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"write_mesh: vertices must be (V, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or (f.size and not np.issubdtype(f.dtype, np.integer)):
        raise ValueError(f"write_mesh: faces must be (F, 3) integers, got {f.shape} {f.dtype}")
    if not np.isfinite(v).all():
        raise ValueError("write_mesh: vertices hold non-finite values")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"write_mesh: face indices outside 0..{len(v) - 1}")
    return v, f.astype(np.int64)


def _ply_bytes(v: np.ndarray, f: np.ndarray) -> bytes:
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment capture3d body mesh\n"
        f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    face_rows = np.empty(len(f), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face_rows["n"] = 3
    face_rows["idx"] = f
    return header.encode("ascii") + v.astype("<f4").tobytes() + face_rows.tobytes()


def _obj_text(v: np.ndarray, f: np.ndarray) -> str:
    buf = io.StringIO()
    buf.write("# capture3d body mesh\n")
    np.savetxt(buf, v, fmt="v %.6f %.6f %.6f")
    np.savetxt(buf, f + 1, fmt="f %d %d %d")
    return buf.getvalue()


def write_mesh(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write the mesh ``vertices`` (V, 3), ``faces`` (F, 3) to ``path`` (``.ply`` or ``.obj``)."""
    path = Path(path)
    v, f = _check(vertices, faces)
    suffix = path.suffix.lower()
    if suffix == ".ply":
        data = _ply_bytes(v, f)
    elif suffix == ".obj":
        data = _obj_text(v, f).encode("ascii")
    else:
        raise ValueError(f"write_mesh: {path.name}: unknown mesh suffix (use .ply or .obj)")
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    logger.debug("wrote %s (%d vertices, %d faces)", path, len(v), len(f))
