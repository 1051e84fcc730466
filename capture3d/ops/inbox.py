"""The capture inbox: a local folder or an S3 prefix holding one sub-folder per capture.

Inputs: a source (a folder path or ``s3://bucket/prefix``). Outputs: :class:`CaptureListing` per
capture (its files with ETag and size, the capture kind and an input hash), the names refused as
unsafe, and :func:`sync` to mirror one capture into a local folder, fetching only files that are
new or changed (by ETag and size) since the last sync; the mirror is replaced atomically.

Capture kinds, from the file names alone (so a no-op rerun needs no download):
``bodies`` (``keypoints/`` or ``keypoints.json``), ``scans`` (``scans/`` or point clouds),
``photos`` (``images/`` or image files).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture3d.atomic import atomic_dir, atomic_write_text
from capture3d.errors import SourceError
from capture3d.ops.names import UnsafeNameError, check_capture_name, check_relative_key
from capture3d.ops.s3 import (
    RemoteObject,
    S3Settings,
    download,
    list_objects,
    make_client,
    parse_s3_url,
)

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
CLOUD_SUFFIXES = {".ply", ".pcd", ".xyz", ".npy"}
KINDS = ("photos", "scans", "bodies")


@dataclass(frozen=True)
class SourceFile:
    """A file of a capture: path relative to the capture folder, ETag (or a local stamp), size."""

    key: str
    etag: str
    size: int


@dataclass(frozen=True)
class CaptureListing:
    """One capture of the inbox."""

    name: str
    files: tuple[SourceFile, ...]
    kind: str  # one of KINDS, or "" when nothing tells
    source: str  # where it lives (URL or folder), for the manifest

    @property
    def input_hash(self) -> str:
        """SHA-256 over the sorted (key, etag, size) triples: changes when any file does."""
        text = "\n".join(f"{f.key}\t{f.etag}\t{f.size}" for f in sorted(self.files, key=lambda f: f.key))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class Listing:
    """What a source holds: the usable captures and the refused names with their reason."""

    captures: list[CaptureListing] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncResult:
    """What :func:`sync` did: files fetched, files reused from the previous mirror, bytes fetched."""

    fetched: int
    reused: int
    bytes_fetched: int


def detect_kind(keys: Iterable[str]) -> str:
    """The capture kind from its relative file keys ("" when none matches)."""
    keys = list(keys)
    tops = {k.split("/", 1)[0] for k in keys}
    suffixes = {Path(k).suffix.lower() for k in keys}
    if "keypoints" in tops or "keypoints.json" in tops:
        return "bodies"
    if "scans" in tops or suffixes & CLOUD_SUFFIXES:
        return "scans"
    if "images" in tops or suffixes & IMAGE_SUFFIXES:
        return "photos"
    return ""


def _group(objects: Iterable[tuple[str, str, int]], source: str) -> Listing:
    """(relative key, etag, size) -> captures by first path component; unsafe names refused."""
    files: dict[str, list[SourceFile]] = {}
    listing = Listing()
    for key, etag, size in objects:
        name, _, rest = key.partition("/")
        if not rest or key.endswith("/"):
            continue  # a file at the top or a folder marker: not part of a capture
        try:
            check_capture_name(name)
            check_relative_key(rest)
        except UnsafeNameError as exc:
            listing.refused.setdefault(name or key, str(exc))
            logger.warning("inbox %s: %s", source, exc)
            continue
        files.setdefault(name, []).append(SourceFile(rest, etag, size))
    for name in sorted(files):
        if name in listing.refused:
            continue  # one unsafe key refuses its whole capture
        found = tuple(files[name])
        listing.captures.append(CaptureListing(name, found, detect_kind(f.key for f in found), source))
    return listing


class Inbox:
    """A source of captures: :meth:`list` them, :meth:`fetch` one file."""

    url: str

    def list(self) -> Listing:
        raise NotImplementedError

    def fetch(self, name: str, file: SourceFile, dest: Path) -> None:
        raise NotImplementedError


class LocalInbox(Inbox):
    """A folder of captures. The ETag of a file is its size and modification time in ns (as DVC's
    state does), so an unchanged folder lists without reading any file."""

    def __init__(self, root: Path, include_empty: bool = False) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self.include_empty = include_empty  # list empty capture folders too (they fail in their first stage)

    def list(self) -> Listing:
        if not self.root.is_dir():
            raise SourceError(f"inbox folder '{self.root}' not found")
        entries = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                path = Path(dirpath) / filename
                stat = path.stat()
                entries.append(
                    (path.relative_to(self.root).as_posix(), f"{stat.st_size}-{stat.st_mtime_ns}", stat.st_size)
                )
        listing = _group(entries, self.url)
        if self.include_empty:
            listed = {c.name for c in listing.captures} | set(listing.refused)
            for entry in sorted(self.root.iterdir()):
                if entry.is_dir() and not entry.name.startswith(".") and entry.name not in listed:
                    listing.captures.append(CaptureListing(entry.name, (), "", self.url))
            listing.captures.sort(key=lambda c: c.name)
        return listing

    def fetch(self, name: str, file: SourceFile, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.root / name / file.key, dest)


class S3Inbox(Inbox):
    """An ``s3://bucket/prefix`` of captures, through :mod:`capture3d.ops.s3`."""

    def __init__(self, url: str, settings: S3Settings, client: Any = None) -> None:
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        self.settings = settings
        self.client = client or make_client(settings)

    def list(self) -> Listing:
        objects = list_objects(self.client, self.bucket, self.prefix, self.settings)
        return _group(((o.key[len(self.prefix) :], o.etag, o.size) for o in objects), self.url)

    def fetch(self, name: str, file: SourceFile, dest: Path) -> None:
        obj = RemoteObject(f"{self.prefix}{name}/{file.key}", file.etag, file.size)
        download(self.client, self.bucket, obj, dest, self.settings)


def open_inbox(source: str, settings: S3Settings) -> Inbox:
    """:class:`S3Inbox` for ``s3://`` URLs, else :class:`LocalInbox`."""
    return S3Inbox(source, settings) if source.startswith("s3://") else LocalInbox(Path(source))


def sync(inbox: Inbox, capture: CaptureListing, mirror: Path, state_file: Path) -> SyncResult:
    """Make ``mirror`` hold exactly ``capture``'s files. Files whose (ETag, size) match the last
    sync (``state_file``) are reused from the old mirror, the others fetched; the new mirror then
    replaces the old one in one rename and the state is rewritten."""
    mirror, state_file = Path(mirror), Path(state_file)
    previous: dict[str, Any] = json.loads(state_file.read_text()) if state_file.is_file() else {}
    fetched = reused = nbytes = 0
    with atomic_dir(mirror) as tmp:
        for file in capture.files:
            dest = tmp / file.key
            old = mirror / file.key
            if previous.get(file.key) == [file.etag, file.size] and old.is_file() and old.stat().st_size == file.size:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(old, dest)
                reused += 1
            else:
                inbox.fetch(capture.name, file, dest)
                fetched += 1
                nbytes += file.size
    atomic_write_text(state_file, json.dumps({f.key: [f.etag, f.size] for f in capture.files}, indent=0))
    logger.info("capture '%s': %d file(s) fetched (%d bytes), %d unchanged", capture.name, fetched, nbytes, reused)
    return SyncResult(fetched, reused, nbytes)


def clean_stale(folder: Path, names: Sequence[str] | None = None) -> int:
    """Remove the temporary siblings a killed run left in ``folder`` (``.<name>.tmp-*`` and
    ``.<name>.old-*``; only for ``names`` when given). Call it only while holding the lock of the
    capture that owns them, so no live writer loses its temporary folder."""
    removed = 0
    if not Path(folder).is_dir():
        return 0
    for entry in Path(folder).iterdir():
        if not entry.name.startswith("."):
            continue
        owner, sep, tag = entry.name[1:].rpartition(".")
        if not sep or not tag.startswith(("tmp-", "old-")) or (names is not None and owner not in names):
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed += 1
    return removed
