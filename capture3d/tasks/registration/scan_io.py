"""Point-cloud scans and ground-truth scan poses: reading, validating and writing.

Inputs: a folder of scans (``.ply``/``.pcd`` read with Open3D, ``.xyz`` whitespace text with 3 or
6 columns, ``.npy`` arrays N x 3 or N x 6) and optionally a ground-truth pose file.
Outputs: :class:`Scan` objects (points (N, 3) float64, colours (N, 3) float64 in [0, 1] or None)
and ``world_from_scan`` 4x4 poses, ``p_world = T @ [p; 1]``, keyed by scan name (the file name
without its suffix). Writers: :func:`write_poses_json` and :func:`write_point_cloud` (binary PLY).

Ground-truth formats read by :func:`read_gt_poses`:

* ``stanford`` (``.conf``, e.g. the Stanford bunny's ``bun.conf``): lines
  ``bmesh FILE tx ty tz qi qj qk qr``. With R the rotation matrix of the unit quaternion
  (x, y, z, w) = (qi, qj, qk, qr), a scan point p lands at ``R^T p + t``, so
  ``world_from_scan = [[R^T, t], [0, 1]]``. Checked on the bunny: with R^T, 91% of bun045's
  points lie within 1 mm of bun000; with R, 0.3% do. ``camera`` lines are ignored.
* ``3dmatch`` (``gt.log``, the Redwood/3DMatch ``.log`` format): blocks of a metadata line
  ``i j n`` and four matrix rows. Following the Redwood registration benchmark's documentation
  (the benchmark 3DMatch uses), the matrix T_ji "aligns fragment P_j to fragment P_i", i.e. it
  takes points of fragment j into fragment i's frame: ``p_i = T @ p_j``. Fragment indices map to
  scan names by the names' trailing integers (``cloud_bin_12`` -> 12) when every name has a
  distinct one, else by position in ``names``. Poses are expressed in the frame of ``names[0]``:
  its (0, j) entries give the other poses directly; scans without a direct entry are reached by
  chaining entries (breadth-first, so direct entries always win).
* ``pair`` (a ``.npy`` or ``.txt`` file holding one 4x4): the transform taking ``names[1]`` into
  ``names[0]``'s frame (the 3DMatch demo pair's ``gt.npy`` maps ``src`` into ``ref``, and the
  sorted names are ``["ref", "src"]``); ``names[0]`` gets the identity.
* ``matrices`` (a folder): ``<name>.txt`` or ``<name>.npy`` with a 4x4 world_from_scan per scan.
* ``json``: ``{"name": 4x4 nested list, ...}`` or ``{"poses": {...}}`` (what
  :func:`write_poses_json` writes).

Every matrix must be rigid: last row (0, 0, 0, 1), every entry of ``|R^T R - I|`` at most 1e-4
and ``|det R - 1|`` at most 3e-4 (what the first bound implies, to first order, with margin); the
rotation returned is the nearest exact rotation (SVD). Problems are raised as ``ValueError``
with one line naming the file.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d

logger = logging.getLogger(__name__)

SCAN_SUFFIXES = (".ply", ".pcd", ".xyz", ".npy")
GT_FORMATS = ("auto", "stanford", "3dmatch", "pair", "matrices", "json")
_SKIPPED_FOLDERS = frozenset({"gt", "poses"})  # ground truth lives there, never scans
_RIGID_TOL = 1e-4  # max |R^T R - I|
# |det R - 1| allowed: R^T R = I + E gives det R ~ 1 + trace(E) / 2, up to 1.5 * _RIGID_TOL;
# real ground truth sits there (3DMatch demo gt.npy: |R^T R - I| = 7e-5, det R - 1 = -1.0e-4).
_DET_TOL = 3 * _RIGID_TOL


@dataclass(frozen=True)
class Scan:
    """One range scan in its own frame."""

    name: str  # file name without suffix, e.g. "bun000"
    points: np.ndarray  # (N, 3) float64
    colors: np.ndarray | None  # (N, 3) float64 in [0, 1], or None


# --------------------------------------------------------------------------- scans


def _npy_shape(path: Path) -> tuple[int, ...] | None:
    """Shape of the array in a .npy file without loading it, or None when it cannot be read."""
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except (OSError, ValueError):
        return None


def _is_point_array_shape(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) == 2 and shape[1] in (3, 6) and shape != (4, 4)


def list_scan_files(folder: Path) -> list[Path]:
    """Point-cloud files under ``folder`` (recursively), sorted by path.

    Skips hidden files and folders, anything under a ``gt/`` or ``poses/`` folder, files with
    other suffixes, and ``.npy`` files that are not N x 3 / N x 6 arrays (e.g. a 4x4 ``gt.npy``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    found = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if any(p.startswith(".") for p in parts) or any(p in _SKIPPED_FOLDERS for p in parts[:-1]):
            continue
        if not path.is_file() or path.suffix.lower() not in SCAN_SUFFIXES:
            continue
        if path.suffix.lower() == ".npy" and not _is_point_array_shape(_npy_shape(path)):
            logger.debug("skipping %s: not an N x 3 or N x 6 array", path)
            continue
        found.append(path)
    return found


def _colors_to_unit(colors: np.ndarray, path: Path) -> np.ndarray:
    """Colours (N, 3) given as 0-255 or 0-1 -> float64 in [0, 1]."""
    colors = np.asarray(colors, dtype=np.float64)
    if not np.isfinite(colors).all():
        raise ValueError(f"{path}: {int((~np.isfinite(colors)).any(axis=1).sum())} colour(s) are NaN or infinite")
    if colors.size and (colors.min() < 0.0 or colors.max() > 255.0):
        raise ValueError(f"{path}: colours outside [0, 255]")
    if colors.size and colors.max() > 1.0:
        colors = colors / 255.0
    return colors


def _split_columns(array: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, 3) or (N, 6) array -> points (N, 3), colours (N, 3) in [0, 1] or None."""
    if array.ndim != 2 or array.shape[1] not in (3, 6):
        raise ValueError(f"{path}: expected an N x 3 or N x 6 array, got shape {array.shape}")
    points = np.ascontiguousarray(array[:, :3], dtype=np.float64)
    colors = _colors_to_unit(array[:, 3:6], path) if array.shape[1] == 6 else None
    return points, colors


def _read_open3d(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    pcd = o3d.io.read_point_cloud(str(path), remove_nan_points=False, remove_infinite_points=False)
    points = np.asarray(pcd.points, dtype=np.float64).copy()
    colors = np.asarray(pcd.colors, dtype=np.float64).copy() if pcd.has_colors() else None
    return points, colors


def _read_xyz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        rows = [line.split() for line in path.read_text().splitlines()]
        rows = [r for r in rows if r and not r[0].startswith("#")]
        widths = {len(r) for r in rows}
        if len(widths) > 1:
            raise ValueError(f"{path}: rows have different numbers of columns {sorted(widths)}")
        array = np.array(rows, dtype=np.float64).reshape(len(rows), -1 if rows else 3)
    except (UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"{path}: unreadable XYZ file ({exc.__class__.__name__})") from None
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: unreadable XYZ file (non-numeric value)") from None
    return _split_columns(array, path)


def _read_npy(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable .npy file ({exc.__class__.__name__})") from None
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    return _split_columns(array, path)


def read_scan(path: Path) -> Scan:
    """Read one scan; ValueError (one line naming the file) on an unreadable or invalid file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SCAN_SUFFIXES:
        raise ValueError(f"{path}: unsupported scan format (expected one of {', '.join(SCAN_SUFFIXES)})")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if suffix in (".ply", ".pcd"):
        points, colors = _read_open3d(path)
    elif suffix == ".xyz":
        points, colors = _read_xyz(path)
    else:
        points, colors = _read_npy(path)
    if len(points) == 0:
        raise ValueError(f"{path}: no points (empty or unreadable file)")
    bad = int((~np.isfinite(points)).any(axis=1).sum())
    if bad:
        raise ValueError(f"{path}: {bad} of {len(points)} points have NaN or infinite coordinates")
    if colors is not None and colors.shape != points.shape:
        raise ValueError(f"{path}: {len(colors)} colours for {len(points)} points")
    return Scan(name=path.stem, points=points, colors=colors)


def _scan_paths(folder: Path) -> list[Path]:
    """:func:`list_scan_files`; ValueError when there are none or two share a name."""
    paths = list_scan_files(folder)
    if not paths:
        raise ValueError(f"{folder}: no point-cloud scans ({', '.join(SCAN_SUFFIXES)}) found")
    names = [p.stem for p in paths]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{folder}: several scans share the name(s) {', '.join(duplicates)}")
    return paths


def read_readable_scans(folder: Path) -> tuple[list[Scan], dict[str, str]]:
    """The readable scans of :func:`list_scan_files` and, for every unreadable or invalid one, its
    reason by file name (relative to ``folder``), each logged as a warning: capture3d's bad-input
    policy is to skip and list bad items. ValueError when there are no scan files or names clash."""
    folder = Path(folder)
    paths = _scan_paths(folder)
    scans, skipped = [], {}
    for path in paths:
        try:
            scans.append(read_scan(path))
        except ValueError as exc:
            skipped[path.relative_to(folder).as_posix()] = str(exc).removeprefix(f"{path}: ")
            logger.warning("skipping scan %s: %s", path, skipped[path.relative_to(folder).as_posix()])
    return scans, skipped


def read_scans(folder: Path) -> list[Scan]:
    """All scans of :func:`list_scan_files`, in its order; ValueError when there are none or names clash."""
    folder = Path(folder)
    scans = [read_scan(p) for p in _scan_paths(folder)]
    logger.info("read %d scans (%d points) from %s", len(scans), sum(len(s.points) for s in scans), folder)
    return scans


# --------------------------------------------------------------------------- ground truth


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), (4,) -> rotation matrix (3, 3); ``q`` is normalised first."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def check_rigid(T: np.ndarray, where: str) -> np.ndarray:
    """``T`` as a (4, 4) float64 rigid transform, rotation re-orthonormalised; ValueError naming
    ``where`` if not rigid."""
    M = np.asarray(T, dtype=np.float64)
    if M.shape != (4, 4):
        raise ValueError(f"{where}: expected a 4x4 matrix, got shape {M.shape}")
    if not np.isfinite(M).all():
        raise ValueError(f"{where}: matrix has NaN or infinite entries")
    if np.abs(M[3] - [0.0, 0.0, 0.0, 1.0]).max() > _RIGID_TOL:
        raise ValueError(f"{where}: last row is {M[3].tolist()}, not [0, 0, 0, 1]")
    R = M[:3, :3]
    det = float(np.linalg.det(R))
    ortho = float(np.abs(R.T @ R - np.eye(3)).max())
    if abs(det - 1.0) > _DET_TOL or ortho > _RIGID_TOL:
        raise ValueError(f"{where}: not a rigid transform (det R = {det:.6f}, max |R^T R - I| = {ortho:.2e})")
    U, _, Vt = np.linalg.svd(R)  # nearest rotation: removes the rounding of the stored values
    out = np.eye(4)
    out[:3, :3] = U @ Vt
    out[:3, 3] = M[:3, 3]
    return out


def _parse_stanford(path: Path) -> dict[str, np.ndarray]:
    poses = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] != "bmesh":
            continue
        if len(fields) != 9:
            raise ValueError(f"{path}:{lineno}: expected 'bmesh FILE tx ty tz qi qj qk qr'")
        try:
            values = np.array(fields[2:], dtype=np.float64)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: non-numeric pose values") from None
        T = np.eye(4)
        T[:3, :3] = quaternion_to_rotation(values[3:]).T  # p_world = R^T p + t (see module docstring)
        T[:3, 3] = values[:3]
        poses[Path(fields[1]).stem] = T
    return poses


def _read_log_blocks(path: Path) -> dict[tuple[int, int], np.ndarray]:
    """Redwood/3DMatch .log -> {(i, j): T taking fragment j into fragment i's frame}."""
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) % 5:
        raise ValueError(f"{path}: {len(lines)} non-empty lines, expected blocks of 5 (metadata + 4 rows)")
    blocks = {}
    for k in range(0, len(lines), 5):
        try:
            i, j = int(lines[k][0]), int(lines[k][1])
            T = np.array(lines[k + 1 : k + 5], dtype=np.float64)
        except (ValueError, IndexError):
            raise ValueError(f"{path}: malformed block at line {k + 1}") from None
        blocks[(i, j)] = check_rigid(T, f"{path} block {i} {j}")
    return blocks


def _fragment_indices(names: list[str]) -> list[int]:
    """Fragment index of each name: its trailing integer when all are distinct, else its position."""
    found = [re.search(r"(\d+)$", n) for n in names]
    if all(found) and len({int(m.group(1)) for m in found}) == len(names):  # type: ignore[union-attr]
        return [int(m.group(1)) for m in found]  # type: ignore[union-attr]
    return list(range(len(names)))


def _parse_3dmatch(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    blocks = _read_log_blocks(path)
    index = _fragment_indices(names)
    name_of = dict(zip(index, names))
    # i_from_j edges in both directions: T (i <- j) and inv(T) (j <- i)
    edges: dict[int, list[tuple[int, np.ndarray]]] = {}
    for (i, j), T in blocks.items():
        edges.setdefault(i, []).append((j, T))
        edges.setdefault(j, []).append((i, np.linalg.inv(T)))
    ref = index[0]
    ref_from = {ref: np.eye(4)}
    queue = deque([ref])
    while queue:  # breadth-first: direct (0, j) entries are used before any chain
        i = queue.popleft()
        for j, i_from_j in edges.get(i, []):
            if j not in ref_from:
                ref_from[j] = ref_from[i] @ i_from_j
                queue.append(j)
    return {name_of[k]: T for k, T in ref_from.items() if k in name_of}


def _load_matrix(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        return np.loadtxt(path, ndmin=2)
    except (OSError, ValueError):
        raise ValueError(f"{path}: unreadable matrix file") from None


def _parse_pair(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    if len(names) != 2:
        raise ValueError(f"{path}: a single 4x4 ground truth needs exactly 2 scans, got {len(names)}")
    return {names[0]: np.eye(4), names[1]: _load_matrix(path)}


def _parse_matrices(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    poses = {}
    for name in names:
        for suffix in (".txt", ".npy"):
            if (folder / f"{name}{suffix}").is_file():
                poses[name] = _load_matrix(folder / f"{name}{suffix}")
                break
    return poses


def _parse_json(path: Path) -> dict[str, np.ndarray]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path}: unreadable JSON") from None
    if isinstance(data, dict) and isinstance(data.get("poses"), dict):
        data = data["poses"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object mapping scan names to 4x4 matrices")  # noqa: TRY004
    poses = {}
    for name, value in data.items():
        try:
            poses[str(name)] = np.array(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise ValueError(f"{path}: pose of {name!r} is not a numeric matrix") from None
    return poses


def detect_gt_format(path: Path) -> str:
    """Guess the ground-truth format of ``path`` from its suffix and content (see module docstring)."""
    path = Path(path)
    if path.is_dir():
        return "matrices"
    suffix = path.suffix.lower()
    if suffix == ".conf":
        return "stanford"
    if suffix == ".log":
        return "3dmatch"
    if suffix == ".json":
        return "json"
    if suffix in (".npy", ".txt") and path.is_file() and np.shape(_load_matrix(path)) == (4, 4):
        return "pair"
    raise ValueError(f"{path}: cannot tell the ground-truth format; pass one of {', '.join(GT_FORMATS[1:])}")


def read_gt_poses(path: Path, names: list[str], fmt: str = "auto", require_all: bool = True) -> dict[str, np.ndarray]:
    """world_from_scan (4, 4) poses (``p_world = T @ [p; 1]``) of the scans in ``names`` the file covers.

    ``fmt`` is one of :data:`GT_FORMATS` (formats and conventions: module docstring). Entries for
    scans not in ``names`` are ignored. ValueError (one line) when the file is missing or
    malformed, holds a non-rigid matrix, covers none of ``names``, or, with ``require_all``,
    misses any of them.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: ground-truth file not found")
    if not names:
        raise ValueError(f"{path}: no scan names given to match the ground truth against")
    if fmt not in GT_FORMATS:
        raise ValueError(f"{path}: unknown ground-truth format {fmt!r} (known: {', '.join(GT_FORMATS)})")
    fmt = detect_gt_format(path) if fmt == "auto" else fmt
    if fmt == "matrices" and not path.is_dir():
        raise ValueError(f"{path}: format 'matrices' needs a folder")
    if fmt != "matrices" and not path.is_file():
        raise ValueError(f"{path}: format {fmt!r} needs a file")
    try:
        if fmt == "stanford":
            raw = _parse_stanford(path)
        elif fmt == "3dmatch":
            raw = _parse_3dmatch(path, names)
        elif fmt == "pair":
            raw = _parse_pair(path, names)
        elif fmt == "matrices":
            raw = _parse_matrices(path, names)
        else:
            raw = _parse_json(path)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None
    poses = {n: check_rigid(raw[n], f"{path}: pose of {n!r}") for n in names if n in raw}
    missing = [n for n in names if n not in poses]
    if not poses:
        more = ", ..." if len(names) > 5 else ""
        raise ValueError(f"{path}: covers none of the scans ({', '.join(names[:5])}{more})")
    if missing and require_all:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"{path}: no ground-truth pose for scan(s) {', '.join(missing[:5])}{more}")
    if missing:
        logger.warning("%s: no ground-truth pose for %d scan(s): %s", path, len(missing), ", ".join(missing))
    return poses


# --------------------------------------------------------------------------- writers


def write_poses_json(path: Path, poses: dict[str, np.ndarray], confidence: dict[str, str] | None = None) -> None:
    """Write ``{"convention": ..., "poses": {name: 4x4 nested list}}`` (plus ``confidence``: name ->
    high | low, when given); read back by :func:`read_gt_poses`."""
    path = Path(path)
    checked = {name: check_rigid(T, f"{path}: pose of {name!r}") for name, T in poses.items()}
    data: dict[str, object] = {
        "convention": "world_from_scan: p_world = T @ [p_scan; 1]",
        "poses": {name: T.tolist() for name, T in checked.items()},
    }
    if confidence is not None:
        data["confidence"] = {name: confidence[name] for name in checked}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def write_point_cloud(
    path: Path,
    points: np.ndarray,
    colors: np.ndarray | None = None,
    normals: np.ndarray | None = None,
    viewpoint: np.ndarray | None = None,
) -> None:
    """Write points (N, 3), optional colours (N, 3) in [0, 1] and normals (N, 3) as a binary PLY.

    ``viewpoint`` (3,), the sensor origin in the points' frame, goes into the header as
    ``comment viewpoint x y z`` (read back by :mod:`capture3d.tasks.registration.sensor_origin`).
    """
    path = Path(path)
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{path}: points must be N x 3, got shape {points.shape}")
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    for label, extra in (("colors", colors), ("normals", normals)):
        if extra is None:
            continue
        extra = np.asarray(extra, dtype=np.float64)
        if extra.shape != points.shape:
            raise ValueError(f"{path}: {label} must have shape {points.shape}, got {extra.shape}")
        setattr(pcd, label, o3d.utility.Vector3dVector(extra))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not o3d.io.write_point_cloud(str(path), pcd, write_ascii=False):
        raise OSError(f"could not write {path}")
    if viewpoint is not None:
        x, y, z = (float(v) for v in np.asarray(viewpoint, dtype=np.float64).reshape(3))
        data = path.read_bytes()
        first, rest = data.split(b"\n", 2)[:2], data.split(b"\n", 2)[2]  # "ply", "format ...", the rest
        comment = f"comment viewpoint {x!r} {y!r} {z!r}".encode("ascii")
        path.write_bytes(b"\n".join([*first, comment, rest]))
