"""Scan a folder of photos: which files are readable images, which are skipped and why.

Input: a folder. Output: :class:`ImageFolder` with the sorted readable image names (relative
paths, sub-folders included) and the skipped files with a reason each. Nothing is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm", ".pgm"})
_IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db"})


@dataclass(frozen=True)
class ImageFolder:
    """Readable images of a folder and the files that were skipped."""

    root: Path
    names: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (relative name, reason)
    sizes: tuple[tuple[int, int], ...] = ()  # (width, height) of each name

    @property
    def distinct_sizes(self) -> list[tuple[int, int]]:
        """The image sizes present, most common first."""
        counts: dict[tuple[int, int], int] = {}
        for size in self.sizes:
            counts[size] = counts.get(size, 0) + 1
        return sorted(counts, key=lambda s: -counts[s])


def scan_images(root: Path, min_side: int = 16) -> ImageFolder:
    """List readable images under ``root``; corrupt or non-image files are skipped with a warning."""
    root = Path(root)
    names: list[str] = []
    sizes: list[tuple[int, int]] = []
    skipped: list[tuple[str, str]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.name in _IGNORED_NAMES or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        reason, size = _check_image(path, min_side)
        if reason is None:
            names.append(rel)
            sizes.append(size)
        else:
            logger.warning("skipping %s: %s", path, reason)
            skipped.append((rel, reason))
    return ImageFolder(root, tuple(names), tuple(skipped), tuple(sizes))


def _check_image(path: Path, min_side: int) -> tuple[str | None, tuple[int, int]]:
    """(None, size) when ``path`` decodes as an image of at least ``min_side`` pixels, else (reason, (0, 0))."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file (suffix '{path.suffix}')", (0, 0)
    try:
        with Image.open(path) as img:
            img.load()  # decode fully: truncated files fail here, not in COLMAP
            size = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else "no detail"
        return f"unreadable image ({type(exc).__name__}: {detail})", (0, 0)
    if min(size) < min_side:
        return f"image too small ({size[0]}x{size[1]})", (0, 0)
    return None, (int(size[0]), int(size[1]))
