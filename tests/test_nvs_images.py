"""Bounded-memory photos of NVS scenes: uint8 pixels decoded lazily through a byte-capped LRU cache give
exactly the float pixels the eager loader gave (value / 255, at every resolution_scale and for every
loader), the cache never holds more than its cap, and NeRF's per-batch rays are the rays of whole images."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from capture3d.tasks.cameras import write_transforms_json
from capture3d.tasks.nvs.data import load_scene
from capture3d.tasks.nvs.fit_gaussians import target_image
from capture3d.tasks.nvs.fit_nerf import RayBatcher
from capture3d.tasks.nvs.images import ImageCache, ImageFile
from capture3d.tasks.nvs.nerf_render import normalize_rays, scene_normalization, view_rays
from tests.test_nvs_data import _cameras, _write_colmap_model

W, H = 64, 48


def _eager_float(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """What the eager loader held: float32 RGB / 255, Lanczos-resized through uint8 when ``size`` is given."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
    if size is not None and size != (rgb.shape[1], rgb.shape[0]):
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)
    return rgb.astype(np.float32) / 255.0


def _write_mixed(folder: Path, names: list[str], seed: int = 0) -> None:
    """Smooth + noisy RGB photos as PNG, RGBA PNG and JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    for i, name in enumerate(names):
        base = np.stack([xx * 3 + 40 * i, yy * 4, (xx + yy) * 2], -1) + rng.integers(0, 40, (H, W, 3))
        rgb = (base % 256).astype(np.uint8)
        if name.endswith(".jpg"):
            Image.fromarray(rgb).save(folder / name, quality=85)
        elif i % 2:
            Image.fromarray(np.dstack([rgb, np.full((H, W), 128, np.uint8)])).save(folder / name)  # RGBA
        else:
            Image.fromarray(rgb).save(folder / name)


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.73])
def test_lazy_uint8_pixels_equal_the_eager_float_pixels(tmp_path: Path, scale: float) -> None:
    cams = _cameras(4, shared=False)
    cams[3] = dataclasses.replace(cams[3], name=cams[3].name.replace(".png", ".jpg"))
    _write_mixed(tmp_path / "images", [c.name for c in cams])
    write_transforms_json(tmp_path / "transforms.json", cams)
    scene = load_scene(tmp_path, "mixed", resolution_scale=scale)
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    for view in scene.views:
        assert isinstance(view.pixels, ImageFile) and (view.width, view.height) == size
        stored = view.pixel_array()
        assert stored.dtype == np.uint8 and stored.shape == (size[1], size[0], 3) and not stored.flags.writeable
        expected = _eager_float(tmp_path / "images" / view.name, size)
        image = view.image
        assert image.dtype == np.float32 and np.array_equal(image, expected)  # bit for bit, not just to 1/255
        assert np.array_equal(target_image(view, torch.device("cpu")).numpy(), expected)
        assert np.abs(image * 255 - stored).max() < 1e-3  # the float is the uint8 / 255
        flat = np.array([0, 5, size[0] * size[1] - 1, size[0] + 3])
        assert np.array_equal(view.colors_at(flat), expected.reshape(-1, 3)[flat])


def test_undistorted_colmap_images_stay_readable_without_a_cache(tmp_path: Path) -> None:
    """Non-pinhole COLMAP folders are undistorted into a temporary folder the views keep alive."""
    cams = _cameras(3, shared=True)
    _write_colmap_model(tmp_path / "sparse", cams, "SIMPLE_RADIAL", [-0.2])
    _write_mixed(tmp_path / "images", [c.name for c in cams])
    scene = load_scene(tmp_path, "radial", image_cache_mb=0)
    folder = scene.views[0].pixels.path.parent
    assert folder.is_dir() and scene.image_cache is not None and len(scene.image_cache) == 0
    for view in scene.views:
        px = view.image  # decoded from the temporary folder now
        assert px.shape == (view.height, view.width, 3) and 0.05 < float(px.mean()) < 0.95
    del scene, view
    gc.collect()
    assert not folder.exists()


def test_cache_never_holds_more_than_its_cap(tmp_path: Path) -> None:
    cams = _cameras(10, shared=True)
    _write_mixed(tmp_path / "images", [c.name for c in cams])
    write_transforms_json(tmp_path / "transforms.json", cams)
    one = W * H * 3
    cap_mb = 2.5 * one / 2**20  # room for two photos
    scene = load_scene(tmp_path, "cap", image_cache_mb=cap_mb)
    cache = scene.image_cache
    assert cache is not None and cache.max_bytes == int(2.5 * one)
    rng = np.random.default_rng(0)
    for i in list(range(10)) * 2 + list(rng.integers(0, 10, 30)):
        view = scene.views[int(i)]
        assert np.array_equal(view.image, _eager_float(tmp_path / "images" / view.name))
        assert cache.nbytes <= cache.max_bytes and len(cache) <= 2
    assert cache.peak_bytes <= cache.max_bytes and cache.peak_bytes == 2 * one
    assert cache.misses > 40  # 10 photos cycling through room for 2: nearly every access decodes

    # LRU order: the most recently used photo survives, the least recently used is dropped
    loads: list[str] = []
    small = ImageCache(2 * one)

    def loader(key: str):
        return lambda: loads.append(key) or np.zeros((H, W, 3), np.uint8)

    for key in ("a", "b", "a", "c", "a", "b"):
        small.get(key, loader(key))
    assert loads == ["a", "b", "c", "b"] and small.hits == 2 and small.nbytes == 2 * one
    big = small.get("huge", lambda: np.zeros((H, W * 3, 3), np.uint8))  # larger than the cap: not kept
    assert big.shape == (H, W * 3, 3) and small.nbytes == 2 * one and len(small) == 2


def test_nerf_batches_are_the_rays_of_whole_images(tmp_path: Path) -> None:
    cams = _cameras(3, shared=False)
    _write_mixed(tmp_path / "images", [c.name for c in cams])
    write_transforms_json(tmp_path / "transforms.json", cams)
    views = list(load_scene(tmp_path, "rays", image_cache_mb=0.02).views)  # room for one photo
    norm = scene_normalization(views, np.zeros((0, 3)), (0.5, 10.0), False)
    full = [
        torch.cat(p)
        for p in zip(
            *((*normalize_rays(*view_rays(v), norm), torch.from_numpy(v.image).reshape(-1, 3)) for v in views),
            strict=True,
        )
    ]
    batcher = RayBatcher(views, norm, torch.device("cpu"))
    assert batcher.num_rays == full[0].shape[0] == 3 * W * H
    index = np.random.default_rng(1).integers(0, batcher.num_rays, 500)
    for got, want in zip(batcher.batch(index), full, strict=True):
        assert torch.equal(got, want[torch.from_numpy(index)])
