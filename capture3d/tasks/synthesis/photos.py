"""Deterministic synthetic photo capture with ground truth, for testing Structure-from-Motion.

Inputs: the number of images, the image size, a horizontal field of view, a supersampling
factor and a seed (everything random is drawn from ``np.random.default_rng(seed)``).

Outputs: a :class:`SyntheticCapture` holding

* ``images``: rendered photos, each (H, W, 3) uint8;
* ``cameras``: ground-truth :class:`~capture3d.tasks.cameras.PinholeCamera` poses (OpenCV
  cam_from_world, ``x_cam = R @ X + t``) named ``0000.png``, ``0001.png``, ...;
* ``mesh``: the scene as a legacy Open3D triangle mesh with vertex colours, in metres.

:func:`write_capture` stores it as ``images/*.png``, ``intrinsics.json``,
``gt/transforms.json`` (nerfstudio convention, see :mod:`capture3d.tasks.cameras`) and
``mesh.ply``.

The scene is a walled courtyard (ground plane, ring wall, open sky) with boxes, spheres,
cylinders and a torus around the origin, world z up. Each ray hit is coloured by a
procedural 3D texture (multi-octave value noise pushed through a steep sigmoid into
high-contrast blobs, two colours per object) with Lambertian shading from one directional
light. Rays are cast with :class:`open3d.t.geometry.RaycastingScene` at ``supersample``
times the resolution and box-filtered down; texture octaves finer than the pixel footprint
are faded out to avoid aliasing. The cameras orbit the scene over 360 degrees of azimuth
with slight height and radius variation, all looking at the scene centre (``loops`` > 1: a rising
spiral of several orbits, frames in path order like a video).
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d
from PIL import Image

from capture3d.tasks.cameras import (
    PinholeCamera,
    cam_from_world_matrix,
    write_transforms_json,
)

logger = logging.getLogger(__name__)

_LATTICE = 64  # value-noise lattice size per axis (power of two, indices wrap)
_OCTAVE_CELLS = (0.4, 0.16, 0.065, 0.027)  # lattice spacing of each octave at texture_scale 1, metres
_OCTAVE_GAIN = 0.75  # amplitude ratio between consecutive octaves
_BLOB_SHARPNESS = 9.0  # slope of the sigmoid turning noise into two-colour blobs
_FADE_START = 1.5  # pixel footprints per lattice cell below which an octave is left out
_AMBIENT = 0.35  # fraction of light that is ambient (not direction dependent)
_COURTYARD_RADIUS = 9.0  # metres
_WALL_HEIGHT = 4.0  # metres
_ORBIT_RADIUS = 4.6  # metres
_ORBIT_HEIGHT = 2.0  # metres
_LOOK_AT = (0.0, 0.0, 0.4)  # scene centre the cameras look at
_OBJECT_KINDS = ("box", "sphere", "cylinder", "box", "torus", "sphere", "box", "cylinder", "box", "sphere")


@dataclass(frozen=True)
class SyntheticCapture:
    """Rendered images, their ground-truth cameras and the scene mesh."""

    images: list[np.ndarray]  # each (H, W, 3) uint8
    cameras: list[PinholeCamera]  # names "0000.png", "0001.png", ...
    mesh: o3d.geometry.TriangleMesh  # legacy mesh with vertex colours, metres


@dataclass(frozen=True)
class _Texture:
    """Procedural 3D texture: value-noise octaves plus per-object colours and offsets."""

    tables: np.ndarray  # (num_octaves, (_LATTICE + 1)**3) float32 padded lattices, values in [0, 1]
    rotation: np.ndarray  # (3, 3) float32 world -> texture axes, oblique so lattice rows align with no surface
    octave_offsets: np.ndarray  # (num_octaves, 3) float32 lattice-space shift keeping coordinates positive
    palettes: np.ndarray  # (2, 3, num_objects) float32 dark and light albedo (rgb) per object
    offsets: np.ndarray  # (3, num_objects) float32 texture-space offset per object
    cells: tuple[float, ...]  # (num_octaves,) lattice spacing of each octave, metres
    detail: float  # strength of the two finest octaves' multiplicative detail


@dataclass(frozen=True)
class _Scene:
    """Triangle soup of the whole scene with per-triangle object ids and corner normals."""

    vertices: np.ndarray  # (V, 3) float64
    triangles: np.ndarray  # (T, 3) int32
    corner_normals: np.ndarray  # (3, 3, T) float32 shading normal (xyz) at each corner of each triangle
    triangle_object: np.ndarray  # (T,) int32 object index of each triangle
    texture: _Texture
    light: np.ndarray  # (3,) float32 unit direction towards the light


# --------------------------------------------------------------------------- geometry


def _corner_normals(mesh: o3d.geometry.TriangleMesh, smooth: bool) -> np.ndarray:
    """Per-corner shading normals, (T, 3, 3): vertex normals if ``smooth`` else face normals."""
    tris = np.asarray(mesh.triangles)
    if smooth:
        mesh.compute_vertex_normals()
        return np.asarray(mesh.vertex_normals)[tris]
    mesh.compute_triangle_normals()
    return np.repeat(np.asarray(mesh.triangle_normals)[:, None, :], 3, axis=1)


def _cylinder_corner_normals(mesh: o3d.geometry.TriangleMesh) -> np.ndarray:
    """Corner normals of an upright z-axis cylinder at the origin: radial on the side, +-z on the caps, (T, 3, 3)."""
    verts = np.asarray(mesh.vertices)
    tris = np.asarray(mesh.triangles)
    mesh.compute_triangle_normals()
    face = np.asarray(mesh.triangle_normals)
    radial = verts[tris] * np.array([1.0, 1.0, 0.0])
    radial /= np.maximum(np.linalg.norm(radial, axis=2, keepdims=True), 1e-12)
    is_cap = np.abs(face[:, 2]) > 0.99
    return np.where(is_cap[:, None, None], face[:, None, :], radial)


def _ground(half_size: float, cells: int) -> o3d.geometry.TriangleMesh:
    """Square grid in the z=0 plane, normals up."""
    g = np.linspace(-half_size, half_size, cells + 1)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    verts = np.stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)], axis=1)
    idx = np.arange((cells + 1) ** 2).reshape(cells + 1, cells + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    tris = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts), o3d.utility.Vector3iVector(tris))


def _ring_wall(radius: float, height: float, segments: int, rows: int) -> o3d.geometry.TriangleMesh:
    """Open cylinder (no caps) around the z axis from z=0 to ``height``."""
    ang = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
    z = np.linspace(0.0, height, rows + 1)
    aa, zz = np.meshgrid(ang, z, indexing="ij")
    verts = np.stack([radius * np.cos(aa).ravel(), radius * np.sin(aa).ravel(), zz.ravel()], axis=1)
    idx = np.arange(segments * (rows + 1)).reshape(segments, rows + 1)
    nxt = np.roll(idx, -1, axis=0)
    a, b, c, d = idx[:, :-1], nxt[:, :-1], nxt[:, 1:], idx[:, 1:]
    tris = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts), o3d.utility.Vector3iVector(tris))


def _rotation_z(angle: float) -> np.ndarray:
    """(3, 3) rotation about the world z axis."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random (3, 3) rotation."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1.0
    return q


def _make_object(kind: str, rng: np.random.Generator) -> tuple[o3d.geometry.TriangleMesh, np.ndarray]:
    """One primitive centred on the z axis and its (T, 3, 3) corner normals in local axes."""
    if kind == "box":
        size = rng.uniform(0.35, 1.0, size=3)
        mesh = o3d.geometry.TriangleMesh.create_box(*size)
        mesh.translate(-size / 2.0)
        return mesh, _corner_normals(mesh, smooth=False)
    if kind == "sphere":
        mesh = o3d.geometry.TriangleMesh.create_sphere(radius=rng.uniform(0.3, 0.55), resolution=40)
        return mesh, _corner_normals(mesh, smooth=True)
    if kind == "cylinder":
        mesh = o3d.geometry.TriangleMesh.create_cylinder(
            radius=rng.uniform(0.2, 0.4), height=rng.uniform(0.6, 1.6), resolution=48, split=1
        )
        return mesh, _cylinder_corner_normals(mesh)
    if kind == "torus":
        mesh = o3d.geometry.TriangleMesh.create_torus(
            torus_radius=rng.uniform(0.4, 0.55),
            tube_radius=rng.uniform(0.12, 0.18),
            radial_resolution=48,
            tubular_resolution=24,
        )
        return mesh, _corner_normals(mesh, smooth=True)
    raise ValueError(f"unknown primitive kind {kind!r}")


def _place(mesh: o3d.geometry.TriangleMesh, normals: np.ndarray, R: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Rotate ``mesh`` by R (3, 3), stand it on z=0 at ``xy`` (2,); returns rotated normals (T, 3, 3)."""
    mesh.rotate(R, center=np.zeros(3))
    zmin = np.asarray(mesh.vertices)[:, 2].min()
    mesh.translate(np.array([xy[0], xy[1], -zmin]))
    return normals @ R.T


def _scene_parts(rng: np.random.Generator) -> list[tuple[o3d.geometry.TriangleMesh, np.ndarray]]:
    """Ground, wall and the objects as (mesh, corner normals (T, 3, 3)) pairs, in world units."""
    ground = _ground(_COURTYARD_RADIUS + 0.5, 48)
    wall = _ring_wall(_COURTYARD_RADIUS, _WALL_HEIGHT, 128, 6)
    wall_normals = -_cylinder_corner_normals(wall)  # facing inwards
    parts = [(ground, _corner_normals(ground, smooth=False)), (wall, wall_normals)]
    n = len(_OBJECT_KINDS)
    angles = 2.0 * np.pi * (np.arange(n) + rng.uniform(-0.25, 0.25, n)) / n
    radii = np.where(np.arange(n) % 2 == 0, rng.uniform(1.3, 2.1, n), rng.uniform(0.3, 0.9, n))
    for kind, ang, rad in zip(_OBJECT_KINDS, angles, radii):
        mesh, normals = _make_object(kind, rng)
        tilt = np.eye(3)
        if kind == "torus":  # stand the ring up so its hole is visible
            tilt = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        R = _rotation_z(rng.uniform(0.0, 2.0 * np.pi)) @ tilt
        normals = _place(mesh, normals, R, rad * np.array([np.cos(ang), np.sin(ang)]))
        parts.append((mesh, normals))
    return parts


def _make_texture(rng: np.random.Generator, num_objects: int, scale: float, detail: float) -> _Texture:
    """Random noise lattices, texture orientation, octave and per-object offsets, per-object palettes;
    octave cells ``scale`` times :data:`_OCTAVE_CELLS`."""
    tables = np.stack([_lattice_table(rng) for _ in _OCTAVE_CELLS])
    rotation = _random_rotation(rng).astype(np.float32)
    octave_offsets = rng.uniform(2000.0, 2100.0, size=(len(_OCTAVE_CELLS), 3)).astype(np.float32)
    dark = rng.uniform(0.05, 0.3, size=(3, num_objects))
    light = rng.uniform(0.65, 1.0, size=(3, num_objects))
    palettes = np.stack([dark, light]).astype(np.float32)
    offsets = rng.uniform(0.0, 20.0, size=(3, num_objects)).astype(np.float32)
    cells = tuple(float(c) * scale for c in _OCTAVE_CELLS)
    return _Texture(tables, rotation, octave_offsets, palettes, offsets, cells, detail)


def _build_scene(rng: np.random.Generator, texture_scale: float = 1.0, texture_detail: float = 0.8) -> _Scene:
    """Merge all parts into one triangle soup with object ids; draw texture and light."""
    parts = _scene_parts(rng)
    verts, tris, normals, objs = [], [], [], []
    base = 0
    for i, (mesh, cn) in enumerate(parts):
        v = np.asarray(mesh.vertices)
        verts.append(v)
        tris.append(np.asarray(mesh.triangles) + base)
        normals.append(cn)
        objs.append(np.full(len(mesh.triangles), i, dtype=np.int32))
        base += len(v)
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    elevation = np.deg2rad(55.0)
    light = np.array([np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)])
    return _Scene(
        vertices=np.concatenate(verts),
        triangles=np.concatenate(tris).astype(np.int32),
        corner_normals=np.ascontiguousarray(np.concatenate(normals).transpose(1, 2, 0), dtype=np.float32),
        triangle_object=np.concatenate(objs),
        texture=_make_texture(rng, len(parts), texture_scale, texture_detail),
        light=light.astype(np.float32),
    )


# --------------------------------------------------------------------------- texture


def _lattice_table(rng: np.random.Generator) -> np.ndarray:
    """Random periodic lattice, padded by one wrapped layer per axis and flattened: ((G+1)**3,) float32."""
    lattice = rng.random((_LATTICE,) * 3, dtype=np.float32)
    return np.pad(lattice, ((0, 1),) * 3, mode="wrap").ravel()


def _value_noise(p: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Smoothly interpolated lattice noise at points p (3, N) float32 -> (N,) float32 in [0, 1].

    ``table`` is a padded lattice from :func:`_lattice_table`; the noise repeats every
    ``_LATTICE`` units along each axis.
    """
    g1 = _LATTICE + 1
    fl = np.floor(p)
    f = p - fl
    smooth = f * np.float32(-2.0)  # smoothstep weights f * f * (3 - 2 f), in place
    smooth += 3.0
    smooth *= f
    smooth *= f
    i = fl.astype(np.int32)
    i &= _LATTICE - 1
    base32 = i[0] * (g1 * g1)
    base32 += i[1] * g1
    base32 += i[2]
    base = base32.astype(np.intp)  # gathers are faster with native-width indices
    fx, fy, fz = smooth

    def lerp(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
        b -= a
        b *= w
        b += a
        return b

    def along_z(offset: int) -> np.ndarray:
        return lerp(table[offset:][base], table[offset + 1 :][base], fz)

    def along_yz(offset: int) -> np.ndarray:
        return lerp(along_z(offset), along_z(offset + g1), fy)

    return lerp(along_yz(0), along_yz(g1 * g1), fx)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (3,) . b (3, N) -> (N,), without BLAS (whose idle worker threads spin and steal CPU)."""
    out = a[0] * b[0]
    out += a[1] * b[1]
    out += a[2] * b[2]
    return out


def _rotate(R: np.ndarray, p: np.ndarray) -> np.ndarray:
    """R (3, 3) @ p (3, N) -> (3, N), without BLAS (see :func:`_dot`)."""
    return np.stack([_dot(row, p) for row in R])


def _albedo(tex: _Texture, points: np.ndarray, objects: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Texture colour at world points (3, N) of objects (N,), given pixel footprints (N,) in metres -> (3, N).

    An octave fades in as its lattice cell grows from ``_FADE_START`` to twice that many pixel
    footprints, so octaves too fine for the pixel grid do not alias.
    """
    p = _rotate(tex.rotation, points.astype(np.float32) + np.take(tex.offsets, objects, axis=1))
    cells_per_footprint = 1.0 / np.maximum(footprint.astype(np.float32), 1e-6)
    total = np.zeros(p.shape[1], dtype=np.float32)
    detail = np.zeros(p.shape[1], dtype=np.float32)
    amplitude, norm = 1.0, 0.0
    for k, cell in enumerate(tex.cells):
        q = p * np.float32(1.0 / cell)
        q += tex.octave_offsets[k][:, None]  # decorrelates octaves, keeps lattice coordinates positive
        v = _value_noise(q, tex.tables[k])
        v -= 0.5
        fade = np.float32(cell / _FADE_START) * cells_per_footprint
        fade -= 1.0
        v *= np.clip(fade, 0.0, 1.0, out=fade)
        total += np.float32(amplitude) * v
        if k >= len(tex.cells) - 2:
            detail += v
        norm += amplitude
        amplitude *= _OCTAVE_GAIN
    total *= np.float32(-_BLOB_SHARPNESS / norm)
    blob = 1.0 / (1.0 + np.exp(total))
    dark, light = np.take(tex.palettes, objects, axis=2)  # (3, N) each
    light -= dark
    light *= blob
    light += dark
    detail *= np.float32(tex.detail)
    detail += 1.0
    light *= detail
    return light


# --------------------------------------------------------------------------- cameras


def _intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """(3, 3) pinhole K with fx = fy from the horizontal field of view, principal point at the centre."""
    f = 0.5 * width / np.tan(0.5 * np.deg2rad(fov_deg))
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def _look_at(center: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cam_from_world (R (3, 3), t (3,)), OpenCV axes, camera at ``center`` (3,) looking at ``target`` (3,); z up."""
    forward = target - center
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    return R, -R @ center


def _orbit_cameras(
    rng: np.random.Generator, num_images: int, K: np.ndarray, width: int, height: int
) -> list[PinholeCamera]:
    """Cameras on a jittered orbit over 360 degrees of azimuth, looking at the scene centre."""
    start = rng.uniform(0.0, 2.0 * np.pi)
    step = 2.0 * np.pi / num_images
    cams = []
    for i in range(num_images):
        az = start + step * (i + rng.uniform(-0.15, 0.15))
        radius = _ORBIT_RADIUS + rng.uniform(-0.3, 0.3)
        height_m = _ORBIT_HEIGHT + 0.35 * np.sin(3.0 * az) + rng.uniform(-0.15, 0.15)
        center = np.array([radius * np.cos(az), radius * np.sin(az), height_m])
        R, t = _look_at(center, np.array(_LOOK_AT) + rng.uniform(-0.15, 0.15, size=3))
        cams.append(PinholeCamera(f"{i:04d}.png", width, height, K.copy(), R, t))
    return cams


def _spiral_cameras(
    rng: np.random.Generator, num_images: int, K: np.ndarray, width: int, height: int, loops: int
) -> list[PinholeCamera]:
    """A video-like path: ``loops`` orbits in one continuous spiral, rising and changing radius.

    Frame ``i`` follows frame ``i - 1`` along the path (names ``0000.png``, ``0001.png``, ...), so
    consecutive frames overlap most; frames of different loops at the same azimuth overlap too
    (0.4 to 0.6 m apart in height), which is what image retrieval has to find. The camera height
    rises from 1.3 m to 2.9 m over the path and the radius swings between 3.9 m and 5.3 m, loop by loop.
    """
    start = rng.uniform(0.0, 2.0 * np.pi)
    step = 2.0 * np.pi * loops / num_images
    cams = []
    for i in range(num_images):
        fraction = i / max(num_images - 1, 1)
        az = start + step * (i + rng.uniform(-0.15, 0.15))
        radius = _ORBIT_RADIUS + 0.7 * np.sin(np.pi * loops * fraction) + rng.uniform(-0.1, 0.1)
        height_m = 1.3 + 1.6 * fraction + rng.uniform(-0.05, 0.05)
        center = np.array([radius * np.cos(az), radius * np.sin(az), height_m])
        R, t = _look_at(center, np.array(_LOOK_AT) + rng.uniform(-0.15, 0.15, size=3))
        cams.append(PinholeCamera(f"{i:04d}.png", width, height, K.copy(), R, t))
    return cams


# --------------------------------------------------------------------------- rendering


def _raycasting_scene(scene: _Scene) -> o3d.t.geometry.RaycastingScene:
    """Open3D raycasting scene holding the merged triangle soup, committed and safe to share between threads."""
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(
        o3d.core.Tensor(scene.vertices.astype(np.float32)), o3d.core.Tensor(scene.triangles.astype(np.uint32))
    )
    rc.cast_rays(o3d.core.Tensor(np.zeros((1, 6), dtype=np.float32)))  # the first cast commits the scene
    return rc


def _render_threads(num_images: int) -> int:
    """Images rendered concurrently: one per available CPU, at most 4 (numpy releases the GIL)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus, num_images))


def _sky(dirs: np.ndarray) -> np.ndarray:
    """Smooth sky gradient for ray directions (3, N) -> colours (3, N)."""
    up = np.clip(dirs[2] / np.linalg.norm(dirs, axis=0), 0.0, 1.0)
    horizon = np.array([[0.85], [0.88], [0.92]], dtype=np.float32)
    zenith = np.array([[0.35], [0.55], [0.85]], dtype=np.float32)
    return horizon + up * (zenith - horizon)


def _shade(
    scene: _Scene,
    center: np.ndarray,
    dirs: np.ndarray,
    t_hit: np.ndarray,
    prim: np.ndarray,
    uv: np.ndarray,
    pixel_angle: float,
) -> np.ndarray:
    """Shaded colours (3, N) of rays from ``center`` (3,) along ``dirs`` (3, N) that hit triangles ``prim`` (N,).

    ``t_hit`` (N,) is the ray parameter of the hit, ``uv`` (2, N) its barycentric coordinates
    (weights of the triangle's second and third vertex), ``pixel_angle`` the angle one output
    pixel subtends, in radians.
    """
    points = center.astype(np.float32)[:, None] + t_hit * dirs
    cn = np.take(scene.corner_normals, prim, axis=2)  # (3 corners, 3, N)
    u, v = uv
    normal = (1.0 - u - v) * cn[0] + u * cn[1] + v * cn[2]
    facing = (normal * dirs).sum(axis=0)
    dir_len = np.sqrt((dirs * dirs).sum(axis=0))
    normal_len = np.maximum(np.sqrt((normal * normal).sum(axis=0)), 1e-12)
    cos_view = np.abs(facing) / (normal_len * dir_len)
    # pixel footprint on the surface: geometric mean of its along- and across-slope extents
    footprint = t_hit * dir_len * np.float32(pixel_angle) / np.sqrt(np.maximum(cos_view, 0.1))
    normal *= -np.sign(facing) / normal_len  # unit length, facing the camera (two-sided shading)
    lambert = np.clip(_dot(scene.light, normal), 0.0, 1.0)
    albedo = _albedo(scene.texture, points, np.take(scene.triangle_object, prim), footprint)
    albedo *= _AMBIENT + (1.0 - _AMBIENT) * lambert
    return albedo


def _render_view(rc: o3d.t.geometry.RaycastingScene, scene: _Scene, cam: PinholeCamera, supersample: int) -> np.ndarray:
    """Render one (H, W, 3) uint8 image of ``scene`` seen by ``cam``."""
    s = supersample
    K_ss = np.diag([s, s, 1.0]) @ cam.K  # Open3D casts through pixel centres (u + 0.5, v + 0.5)
    rays = o3d.t.geometry.RaycastingScene.create_rays_pinhole(
        o3d.core.Tensor(K_ss), o3d.core.Tensor(cam_from_world_matrix(cam.R, cam.t)), cam.width * s, cam.height * s
    )
    result = rc.cast_rays(rays)
    dirs = np.ascontiguousarray(rays.numpy().reshape(-1, 6)[:, 3:].T)  # (3, M) world frame, camera z = 1
    t_hit = result["t_hit"].numpy().ravel().copy()
    prim = result["primitive_ids"].numpy().ravel().astype(np.intp)
    miss = np.flatnonzero(~np.isfinite(t_hit))
    t_hit[miss], prim[miss] = 0.0, 0  # shade misses as a dummy hit (few rays), then paint them sky
    uv = np.ascontiguousarray(result["primitive_uvs"].numpy().reshape(-1, 2).T)
    colour = _shade(scene, cam.center, dirs, t_hit, prim, uv, pixel_angle=1.0 / cam.K[0, 0])
    if len(miss):
        sky = _sky(np.take(dirs, miss, axis=1))
        for channel in range(3):  # row-wise scatter is much faster than colour[:, miss] = ...
            colour[channel, miss] = sky[channel]
    return _box_downsample(colour.reshape(3, cam.height, s, cam.width, s))


def _box_downsample(samples: np.ndarray) -> np.ndarray:
    """Average s x s sub-pixel samples (3, H, s, W, s) in [0, 1] -> (H, W, 3) uint8."""
    s = samples.shape[2]
    img = samples[:, :, 0, :, 0].copy()
    for i in range(s):  # strided slices are much faster than .mean(axis=(2, 4))
        for j in range(s):
            if i or j:
                img += samples[:, :, i, :, j]
    img *= np.float32(255.0 / (s * s))
    np.clip(img, 0.0, 255.0, out=img)
    img += 0.5
    return img.transpose(1, 2, 0).astype(np.uint8)


def _vertex_coloured_mesh(scene: _Scene) -> o3d.geometry.TriangleMesh:
    """Legacy mesh of the scene with the (unshaded) texture colour at each vertex."""
    v = scene.vertices
    objects = np.zeros(len(v), dtype=np.int32)
    objects[scene.triangles.ravel()] = np.repeat(scene.triangle_object, 3)
    colours = _albedo(scene.texture, v.T, objects, np.zeros(len(v))).T
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(scene.triangles))
    mesh.vertex_colors = o3d.utility.Vector3dVector(np.clip(colours, 0.0, 1.0).astype(np.float64))
    mesh.compute_vertex_normals()
    return mesh


# --------------------------------------------------------------------------- public API


def render_capture(
    num_images: int = 24,
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    fov_deg: float = 60.0,
    supersample: int = 2,
    loops: int = 1,
    texture_scale: float = 1.0,
    texture_detail: float = 0.8,
) -> SyntheticCapture:
    """Render ``num_images`` orbit views of a seeded procedural scene, with ground-truth cameras.

    ``fov_deg`` is the horizontal field of view; ``supersample`` the rays per pixel along each axis.
    ``loops`` 1 is one jittered orbit; more is a video-like spiral of that many orbits
    (:func:`_spiral_cameras`), for captures of hundreds of views. ``texture_scale`` multiplies the
    texture's octave cells (2: blobs twice as large, easier to fit); ``texture_detail`` is the
    strength of the fine multiplicative detail (0: none).
    """
    if num_images < 1 or width < 1 or height < 1 or supersample < 1 or loops < 1 or texture_scale <= 0:
        raise ValueError("num_images, width, height, supersample, loops and texture_scale must be positive")
    if not 0.0 <= texture_detail < 1.0:
        raise ValueError("texture_detail must be in [0, 1)")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    scene = _build_scene(rng, texture_scale, texture_detail)
    K = _intrinsics(width, height, fov_deg)
    if loops == 1:
        cameras = _orbit_cameras(rng, num_images, K, width, height)
    else:
        cameras = _spiral_cameras(rng, num_images, K, width, height, loops)
    rc = _raycasting_scene(scene)
    with ThreadPoolExecutor(max_workers=_render_threads(num_images)) as pool:
        images = list(pool.map(lambda cam: _render_view(rc, scene, cam, supersample), cameras))
    logger.info(
        "rendered %d synthetic %dx%d images (seed %d) in %.1f s",
        num_images,
        width,
        height,
        seed,
        time.perf_counter() - start,
    )
    return SyntheticCapture(images=images, cameras=cameras, mesh=_vertex_coloured_mesh(scene))


def write_capture(capture: SyntheticCapture, out: Path) -> None:
    """Write ``images/*.png``, ``intrinsics.json``, ``gt/transforms.json`` and ``mesh.ply`` into ``out``."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "gt").mkdir(parents=True, exist_ok=True)
    for image, cam in zip(capture.images, capture.cameras):
        Image.fromarray(image).save(out / "images" / cam.name)
    cam0 = capture.cameras[0]
    intrinsics = {
        "camera_model": "PINHOLE",
        "width": int(cam0.width),
        "height": int(cam0.height),
        "params": [float(cam0.K[0, 0]), float(cam0.K[1, 1]), float(cam0.K[0, 2]), float(cam0.K[1, 2])],
    }
    (out / "intrinsics.json").write_text(json.dumps(intrinsics, indent=2))
    write_transforms_json(out / "gt" / "transforms.json", capture.cameras, file_prefix="images/")
    if not o3d.io.write_triangle_mesh(str(out / "mesh.ply"), capture.mesh):
        raise OSError(f"could not write {out / 'mesh.ply'}")
    logger.info("wrote synthetic capture with %d images to %s", len(capture.images), out)
