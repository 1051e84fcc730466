"""Photos of a posed capture kept as uint8 and decoded lazily through a byte-capped LRU cache.

Inputs: image files (PNG / JPEG, any PIL mode; an alpha channel is dropped), the size each is
served at (a Lanczos resize when it differs from the file's) and an :class:`ImageCache` shared by
the views of a scene. Outputs: (H, W, 3) uint8 RGB arrays (read-only), decoded on first use and
kept while the cache's byte cap allows; the least recently used ones are dropped first, and an
image larger than the whole cap is decoded on every use and never kept. Float conversion
(uint8 / 255 as float32) is left to the caller, per training batch.

A file that cannot be decoded raises :class:`~capture3d.errors.CaptureError` naming the capture.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from capture3d.errors import CaptureError

logger = logging.getLogger(__name__)

MB = 1 << 20


class ImageCache:
    """Least-recently-used decoded images, never holding more than ``max_bytes`` of pixels."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"image cache cap must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self.nbytes = 0  # bytes held now
        self.peak_bytes = 0  # most bytes ever held
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array of ``key``, else ``load()`` (kept when it fits under the cap), read-only."""
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return found
        self.misses += 1
        array = load()
        array.setflags(write=False)
        if array.nbytes > self.max_bytes:
            return array
        while self._items and self.nbytes + array.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes
        self._items[key] = array
        self.nbytes += array.nbytes
        self.peak_bytes = max(self.peak_bytes, self.nbytes)
        return array

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


@dataclass(frozen=True, eq=False)
class ImageFile:
    """A photo on disk served at ``size`` (W, H) through ``cache``.

    ``keepalive``: an object that must live as long as the file is needed (the temporary folder
    of undistorted images; it deletes itself once no view refers to it).
    """

    path: Path
    size: tuple[int, int]
    label: str
    cache: ImageCache
    keepalive: object | None = None

    @property
    def width(self) -> int:
        return int(self.size[0])

    @property
    def height(self) -> int:
        return int(self.size[1])

    def pixels(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB at ``size``, read-only (from the cache, or decoded now)."""
        return self.cache.get((str(self.path), self.size), self.decode)

    def decode(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB at ``size``, decoded (and resized) now, bypassing the cache."""
        rgb = read_rgb8(self.path, self.label)
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = resize_rgb8(rgb, self.size)
        return rgb

    def resized(self, size: tuple[int, int]) -> ImageFile:
        """The same file served at another (W, H)."""
        return replace(self, size=(int(size[0]), int(size[1])))


def image_size(path: Path, label: str) -> tuple[int, int]:
    """(W, H) of an image file from its header, without decoding the pixels."""
    if not path.is_file():
        raise CaptureError(label, f"image {path} is missing")
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise CaptureError(label, f"cannot read image {path}: {_one_line(exc)}") from exc


def read_rgb8(path: Path, label: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; any alpha channel is dropped."""
    if not path.is_file():
        raise CaptureError(label, f"image {path} is missing")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise CaptureError(label, f"cannot read image {path}: {_one_line(exc)}") from exc


def resize_rgb8(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Lanczos resize of (H, W, 3) uint8 to ``size`` (W, H), uint8."""
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)


def to_float(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> float32 in [0, 1] (exactly value / 255); float input is returned as float32."""
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float32) / 255.0
    return np.asarray(rgb, dtype=np.float32)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
