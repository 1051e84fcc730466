"""Shared fixtures: repository paths, the real-data folder, the project's params, synthetic photos."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from capture3d.config import load_params

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding ``params.yaml`` and ``capture3d/``)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data(repo_root: Path) -> Path:
    """``<repo>/../shared/data``; tests that use it are skipped when it is absent."""
    path = repo_root.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is absent: real-data test skipped")
    return path


@pytest.fixture
def base_params(repo_root: Path) -> dict[str, Any]:
    """The project's params.yaml as a plain dict (a fresh copy per test)."""
    return load_params(repo_root / "params.yaml")


# ----------------------------------------------------------------------------- synthetic photos

TEXTURE_SIZE = 1024  # pixels of the texture, covering the plane square [-1, 1]^2


def noise_texture(seed: int, size: int = TEXTURE_SIZE) -> np.ndarray:
    """A seeded multi-scale random texture, (size, size, 3) uint8: blobs at several scales for SIFT."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((size, size, 3), dtype=np.float64)
    for cells, weight in ((8, 0.6), (32, 1.0), (128, 1.0), (512, 0.5)):
        small = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        up = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        acc += weight * (np.asarray(up, dtype=np.float64) - 127.5)
    acc = acc / np.abs(acc).max() * 127.0 + 128.0
    return np.clip(acc, 0, 255).astype(np.uint8)


def _rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """cam_from_world rotation of a camera looking along world +z, perturbed by yaw/pitch/roll."""
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    Rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    Rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return Rz @ Rx @ Ry


def plane_views(
    texture: np.ndarray, n: int, width: int, height: int, seed: int
) -> list[Image.Image]:
    """``n`` pinhole views (focal ~0.9 * width) of the textured plane z = 0, cameras on an arc at z < 0.

    Each view is the texture warped by the exact plane-to-image homography ``K [r1 r2 t] A``
    (A: texture pixel -> plane coordinates), so the views are geometrically consistent.
    """
    rng = np.random.default_rng(seed + 1)
    size = texture.shape[0]
    f = 0.9 * width
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    A = np.array([[2.0 / size, 0, -1.0], [0, 2.0 / size, -1.0], [0, 0, 1.0]])  # texture px -> plane
    tex = Image.fromarray(texture)
    views = []
    for i, x in enumerate(np.linspace(-0.3, 0.3, n)):
        C = np.array([x, 0.08 * rng.normal(), -1.2 + 0.1 * rng.normal()])
        # look back toward the plane's centre: yaw against the x offset, plus small jitter
        yaw = -np.degrees(np.arctan2(x, 1.2)) * 0.8 + 2.0 * rng.normal()
        R = _rotation(yaw, 3.0 * rng.normal(), 4.0 * rng.normal())
        t = -R @ C
        H_img_from_tex = K @ np.column_stack([R[:, 0], R[:, 1], t]) @ A
        H_tex_from_img = np.linalg.inv(H_img_from_tex)
        H_tex_from_img /= H_tex_from_img[2, 2]
        coeffs = tuple(H_tex_from_img.ravel()[:8])
        views.append(tex.transform((width, height), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC))
    return views


@pytest.fixture
def make_textured_images(tmp_path: Path) -> Callable[..., list[Path]]:
    """Factory: ``make(folder=None, n=8, width=320, height=240, seed=0, prefix="view")`` writes
    ``n`` overlapping JPEG views of one seeded random-texture plane and returns their paths.

    Deterministic for a given seed. The default folder is ``tmp_path / "capture" / "images"``.
    """

    def make(
        folder: Path | None = None, n: int = 8, width: int = 320, height: int = 240, seed: int = 0,
        prefix: str = "view",
    ) -> list[Path]:
        folder = Path(folder) if folder is not None else tmp_path / "capture" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, img in enumerate(plane_views(noise_texture(seed), n, width, height, seed)):
            path = folder / f"{prefix}_{i:02d}.jpg"
            img.save(path, quality=95)
            paths.append(path)
        return paths

    return make
