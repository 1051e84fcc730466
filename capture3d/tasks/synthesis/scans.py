"""Deterministic synthetic range scans with ground-truth poses, for testing scan registration.

Inputs: the number of scans, the sensor resolution, the depth noise and a seed. The scene is the
walled courtyard of :mod:`capture3d.tasks.synthesis.photos` (its mesh for the same seed).

Outputs: ``(scans, poses)`` from :func:`render_scans`:

* ``scans``: :class:`~capture3d.tasks.registration.scan_io.Scan` objects named ``scan_000``, ``scan_001``, ...
  whose points are in the SENSOR frame (OpenCV axes: x right, y down, z forward; the sensor at
  the origin), coloured by the mesh's vertex colours interpolated at each hit (barycentric);
* ``poses``: ground-truth ``world_from_scan`` 4x4 per scan (``p_world = T @ [p; 1]``).

:func:`write_scan_capture` stores them as ``scans/<name>.ply`` (with ``comment viewpoint 0 0 0`` in the
header: the sensor origin registration's free-space test uses) and ``gt/poses.json``.

Sensors: a pinhole depth sensor (default 160 x 120 pixels, 70 degrees horizontal field of view)
at each of ``num_scans`` viewpoints evenly spread (with jitter) on a ring of radius ~4 m,
~1.8 m above the ground, looking at the scene centre. Rays are cast with Open3D's
:class:`~open3d.t.geometry.RaycastingScene`; hits farther than ``max_range`` along the ray are
dropped (the far courtyard wall and ground), and Gaussian noise of ``noise_sigma`` is added along
each ray (range noise). With 8 scans (seeds 0 and 1) each scan holds ~12k points and 50-75% of
them lie within 1 cm (point to plane) of the next scan's surface. Everything random comes from
``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import open3d as o3d

from capture3d.tasks.registration.scan_io import (
    Scan,
    write_point_cloud,
    write_poses_json,
)
from capture3d.tasks.synthesis.photos import render_capture

logger = logging.getLogger(__name__)

_RING_RADIUS = 4.0  # metres from the scene centre
_RING_HEIGHT = 1.8  # metres above the ground
_LOOK_AT = np.array([0.0, 0.0, 0.3])  # scene centre the sensors look at
_FOV_DEG = 70.0  # horizontal field of view


def scene_mesh(seed: int) -> o3d.geometry.TriangleMesh:
    """The synthetic courtyard of ``seed`` as a legacy mesh with vertex colours (metres, z up).

    :func:`render_capture` builds the scene before its cameras, so one tiny image is enough.
    """
    return render_capture(num_images=1, width=8, height=6, seed=seed, supersample=1).mesh


def _sensor_from_world(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) sensor_from_world, OpenCV axes, sensor at ``center`` (3,) looking at ``target`` (3,); z up."""
    forward = (target - center) / np.linalg.norm(target - center)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, forward])
    T[:3, 3] = -T[:3, :3] @ center
    return T


def _ring_poses(rng: np.random.Generator, num_scans: int) -> list[np.ndarray]:
    """world_from_sensor (4, 4) of ``num_scans`` jittered viewpoints on the ring."""
    start = rng.uniform(0.0, 2.0 * np.pi)
    poses = []
    for i in range(num_scans):
        az = start + 2.0 * np.pi * (i + rng.uniform(-0.05, 0.05)) / num_scans
        radius = _RING_RADIUS + rng.uniform(-0.2, 0.2)
        center = np.array([radius * np.cos(az), radius * np.sin(az), _RING_HEIGHT + rng.uniform(-0.15, 0.15)])
        target = _LOOK_AT + rng.uniform(-0.1, 0.1, size=3)
        poses.append(np.linalg.inv(_sensor_from_world(center, target)))
    return poses


def _intrinsics(width: int, height: int) -> np.ndarray:
    """(3, 3) pinhole K from the horizontal field of view, principal point at the centre."""
    f = 0.5 * width / np.tan(0.5 * np.deg2rad(_FOV_DEG))
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def _scan_one(
    rc: o3d.t.geometry.RaycastingScene,
    mesh: o3d.geometry.TriangleMesh,
    world_from_sensor: np.ndarray,
    K: np.ndarray,
    size: tuple[int, int],
    max_range: float,
    noise: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, 3) in the sensor frame and colours (N, 3) of one scan; ``noise`` (H*W,) is added along rays."""
    width, height = size
    sensor_from_world = np.linalg.inv(world_from_sensor)
    rays = o3d.t.geometry.RaycastingScene.create_rays_pinhole(
        o3d.core.Tensor(K), o3d.core.Tensor(sensor_from_world), width, height
    )
    hits = rc.cast_rays(rays)
    rays_np = rays.numpy().reshape(-1, 6)  # world origin (3) and direction (3, sensor z = 1)
    t_hit = hits["t_hit"].numpy().ravel()
    dirs = rays_np[:, 3:].astype(np.float64)
    ray_len = np.linalg.norm(dirs, axis=1)
    keep = np.isfinite(t_hit) & (t_hit * ray_len <= max_range)
    # sensor-frame hit = depth * K^-1 [u, v, 1], i.e. the world direction rotated into the sensor frame
    dirs_sensor = dirs[keep] @ sensor_from_world[:3, :3].T  # (N, 3), z = 1
    unit = dirs_sensor / ray_len[keep, None]
    points = t_hit[keep, None].astype(np.float64) * dirs_sensor + noise[keep, None] * unit
    prim = hits["primitive_ids"].numpy().ravel()[keep].astype(np.intp)
    uv = hits["primitive_uvs"].numpy().reshape(-1, 2)[keep].astype(np.float64)
    corners = np.asarray(mesh.triangles)[prim]  # (N, 3) vertex ids
    vertex_colors = np.asarray(mesh.vertex_colors)
    colors = (
        (1.0 - uv[:, :1] - uv[:, 1:]) * vertex_colors[corners[:, 0]]
        + uv[:, :1] * vertex_colors[corners[:, 1]]
        + uv[:, 1:] * vertex_colors[corners[:, 2]]
    )
    return points, np.clip(colors, 0.0, 1.0)


def render_scans(
    num_scans: int = 8,
    seed: int = 0,
    noise_sigma: float = 0.002,
    width: int = 160,
    height: int = 120,
    max_range: float = 7.0,
) -> tuple[list[Scan], dict[str, np.ndarray]]:
    """Simulate ``num_scans`` depth scans of the seeded courtyard; returns scans and world_from_scan poses."""
    if num_scans < 1 or width < 1 or height < 1 or max_range <= 0.0 or noise_sigma < 0.0:
        raise ValueError("num_scans, width, height and max_range must be positive and noise_sigma non-negative")
    rng = np.random.default_rng(seed)
    mesh = scene_mesh(seed)
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(
        o3d.core.Tensor(np.asarray(mesh.vertices, dtype=np.float32)),
        o3d.core.Tensor(np.asarray(mesh.triangles, dtype=np.uint32)),
    )
    K = _intrinsics(width, height)
    scans, poses = [], {}
    for i, pose in enumerate(_ring_poses(rng, num_scans)):
        noise = rng.normal(0.0, noise_sigma, size=width * height) if noise_sigma > 0 else np.zeros(width * height)
        points, colors = _scan_one(rc, mesh, pose, K, (width, height), max_range, noise)
        name = f"scan_{i:03d}"
        scans.append(Scan(name=name, points=points, colors=colors))
        poses[name] = pose
    logger.info(
        "simulated %d scans (seed %d, %d-%d points each)",
        num_scans,
        seed,
        min(len(s.points) for s in scans),
        max(len(s.points) for s in scans),
    )
    return scans, poses


def write_scan_capture(scans: list[Scan], poses: dict[str, np.ndarray], out: Path) -> None:
    """Write ``out/scans/<name>.ply`` (binary, with colours) and ``out/gt/poses.json``."""
    out = Path(out)
    missing = [s.name for s in scans if s.name not in poses]
    if missing:
        raise ValueError(f"{out}: no pose for scan(s) {', '.join(missing)}")
    for scan in scans:  # points are in the sensor frame: the sensor sits at the origin
        write_point_cloud(out / "scans" / f"{scan.name}.ply", scan.points, scan.colors, viewpoint=np.zeros(3))
    write_poses_json(out / "gt" / "poses.json", {s.name: poses[s.name] for s in scans})
    logger.info("wrote %d synthetic scans to %s", len(scans), out)
