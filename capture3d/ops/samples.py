"""Real sample captures: ``capture3d samples list`` and ``capture3d samples fetch [NAME ...] --to DIR``.

Inputs: the registry shipped in the package (``capture3d/samples.json``: per sample its folder, source,
licence, optional byte-identical upstream copy, and every file's relative path, size and SHA-256), sample
names, a target folder and a mirror URL (``--mirror``, else ``$CAPTURE3D_SAMPLES_URL``; a plain folder
path is read through ``file://``). Outputs: ``DIR/<folder>/`` for each sample (``DIR/sfm/fountain_p11``
...), laid out exactly like the mirror (and like ``../shared/data``), so every command reads a fetched
sample as it reads the original.

Where each file comes from: ``<mirror>/<folder>/<path>`` when a mirror is set; otherwise the file's
upstream URL (the registry's ``upstream`` base and path prefixes, only for files that are copied
unchanged from a public repository). Files that were re-packaged (downscaled, converted, renamed) exist
only on a mirror; fetching them without one is refused before anything is downloaded.

Guarantees: a file is kept only when its size and SHA-256 match (a mismatch is a one-line error naming
the sample, the file and the URL); downloads go to ``<name>.part`` files in a staging folder beside the
sample (``.<name>.download``), resume with HTTP Range requests after a cut connection (also across
runs), and retry transient faults with exponential backoff; the sample folder appears (or is replaced)
by one rename only when every file verified. Files already present and verified are not downloaded
again. Progress is reported through :func:`capture3d.progress.report` (bytes per sample).

``python -m capture3d.ops.samples --update DATA`` recomputes the registry's file lists from a data
folder (``../shared/data``), keeping the metadata; ``--check DATA`` exits 1 when they differ.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError

from capture3d.errors import Capture3dError
from capture3d.progress import report

logger = logging.getLogger(__name__)

REGISTRY = Path(__file__).resolve().parents[1] / "samples.json"
MIRROR_ENV = "CAPTURE3D_SAMPLES_URL"
CHUNK = 1 << 16  # bytes per read
REPORT_EVERY = 1 << 20  # bytes between progress records
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}
USER_AGENT = "capture3d-samples"


class SampleError(Capture3dError):
    """A sample that cannot be fetched or verified; the message names the sample (and file)."""


@dataclass(frozen=True)
class SampleFile:
    """One file of a sample."""

    path: str
    """path inside the sample folder, '/'-separated"""
    size: int
    """bytes"""
    sha256: str
    """hex digest"""


@dataclass(frozen=True)
class Sample:
    """One sample capture of the registry."""

    name: str
    """what ``samples fetch`` takes (``fountain_p11``)"""
    folder: str
    """where it lands under the target folder, as in the mirror (``sfm/fountain_p11``)"""
    title: str
    """one line: what it is"""
    source: str
    """where the data come from, and what was changed here"""
    licence: str
    """the data's terms"""
    upstream_base: str | None
    """base URL of a public copy of the unchanged files (None: mirror only)"""
    upstream_paths: tuple[tuple[str, str], ...]
    """(prefix in the sample, prefix under ``upstream_base``): the files a public copy has unchanged"""
    files: tuple[SampleFile, ...]
    """every file, sorted by path"""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def upstream_url(self, file: SampleFile) -> str | None:
        """The public URL of ``file`` when it is unchanged upstream, else None."""
        if self.upstream_base is None:
            return None
        for local, remote in self.upstream_paths:
            if file.path.startswith(local):
                return self.upstream_base + urllib.parse.quote(remote + file.path[len(local) :])
        return None


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_sample` did for one sample."""

    name: str
    path: Path
    """the verified sample folder"""
    downloaded: int
    """files downloaded in this run"""
    bytes_downloaded: int
    present: int
    """files that were already there and verified"""


def load_registry(path: Path | None = None) -> dict[str, Sample]:
    """The samples of the registry file (default: the shipped :data:`REGISTRY`), by name."""
    data = json.loads(Path(path or REGISTRY).read_text())
    out = {}
    for s in data["samples"]:
        up = s.get("upstream") or {}
        out[s["name"]] = Sample(
            name=s["name"],
            folder=s["folder"],
            title=s["title"],
            source=s["source"],
            licence=s["licence"],
            upstream_base=up.get("base"),
            upstream_paths=tuple((k, v) for k, v in (up.get("paths") or {}).items()),
            files=tuple(SampleFile(f["path"], int(f["size"]), f["sha256"]) for f in s["files"]),
        )
    return out


def select(registry: dict[str, Sample], names: Sequence[str]) -> list[Sample]:
    """The samples ``names`` (all of them when empty); an unknown name is refused in one line."""
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise SampleError(f"samples: unknown sample '{unknown[0]}' (known: {', '.join(registry)})")
    return [registry[n] for n in names] if names else list(registry.values())


def describe(registry: dict[str, Sample]) -> list[str]:
    """``samples list``: two lines per sample (name, folder, files, size, where from; title and licence)."""
    lines = []
    for s in registry.values():
        public = sum(s.upstream_url(f) is not None for f in s.files)
        where = "public" if public == len(s.files) else f"mirror ({public}/{len(s.files)} files public)"
        lines.append(f"{s.name:15} {s.folder:30} {len(s.files):4d} files {s.size / 1e6:6.1f} MB  {where}")
        lines.append(f"{'':15} {s.title}; {s.licence}")
    return lines


def resolve_mirror(mirror: str | None) -> str | None:
    """The mirror base URL (ending in '/'): ``mirror``, else ``$CAPTURE3D_SAMPLES_URL``, else None.
    A value without a URL scheme is a local folder, read through ``file://``."""
    value = mirror or os.environ.get(MIRROR_ENV) or None
    if value is None:
        return None
    if "://" not in value:
        value = Path(value).expanduser().resolve().as_uri()
    return value if value.endswith("/") else value + "/"


def file_url(sample: Sample, file: SampleFile, mirror: str | None) -> str | None:
    """Where ``file`` is fetched from: the mirror when set, else its upstream copy (or None)."""
    if mirror is not None:
        return mirror + urllib.parse.quote(f"{sample.folder}/{file.path}")
    return sample.upstream_url(file)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path, file: SampleFile) -> bool:
    """Whether ``path`` is ``file``: same size, then same SHA-256."""
    return path.is_file() and path.stat().st_size == file.size and sha256_of(path) == file.sha256


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _open(url: str, offset: int, timeout_s: float) -> Any:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)


def download(
    url: str,
    part: Path,
    size: int,
    *,
    attempts: int = 5,
    backoff_s: float = 0.5,
    timeout_s: float = 30.0,
    on_progress: Callable[[int], None] | None = None,
) -> bool:
    """Download ``url`` (``size`` bytes) into ``part``, continuing from what ``part`` already holds
    (HTTP Range) and retrying transient faults with exponential backoff. Returns whether any bytes
    came from before (an earlier run's ``part``) or from a ranged request: a checksum failure may then
    be a mix of two versions. ``on_progress(bytes in part)`` is called as data arrive.
    A permanent fault (HTTP 404, a missing local file) or the last failed attempt raises
    :class:`SampleError` with a short reason (the caller names the sample and file)."""
    resumed = part.is_file() and part.stat().st_size > 0
    last = ""
    attempts = max(1, attempts)
    for attempt in range(attempts):
        have = part.stat().st_size if part.is_file() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            return resumed
        try:
            with _open(url, have, timeout_s) as resp:
                ranged = have > 0 and (getattr(resp, "status", None) or resp.getcode()) == 206
                resumed = resumed or ranged
                with part.open("ab" if ranged else "wb") as fh:
                    while block := resp.read(CHUNK):
                        fh.write(block)
                        if on_progress is not None:
                            on_progress(fh.tell())
            got = part.stat().st_size
            if got == size:
                return resumed
            if got > size:
                part.unlink()
                raise SampleError(f"the server sent {got} bytes, expected {size}")
            last = f"connection ended at byte {got} of {size}"
        except HTTPError as exc:
            if exc.code == 416:  # the range starts at or past the end: start again from zero
                part.unlink(missing_ok=True)
                last = "HTTP 416"
            elif exc.code in RETRYABLE_HTTP:
                last = f"HTTP {exc.code}"
            else:
                raise SampleError(f"HTTP {exc.code} {exc.reason}") from None
        except (URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            last = f"{type(exc).__name__}: {reason}"
            if isinstance(exc, URLError) and isinstance(reason, FileNotFoundError):
                raise SampleError(f"not found ({reason.strerror})") from None
        if attempt + 1 < attempts:
            delay = min(backoff_s * 2**attempt, 30.0)
            logger.info("retrying %s in %.1f s (%s)", url, delay, last)
            time.sleep(delay)
    raise SampleError(f"failed after {attempts} attempts ({last})")


def _staging(final: Path) -> Path:
    return final.parent / f".{final.name}.download"


def _prefill(final: Path, staging: Path, sample: Sample, ok: set[str]) -> None:
    """Link into ``staging`` what an existing sample folder holds: its verified files (``ok``) and the
    files that are not the sample's (the user's: kept); files that failed verification are left out."""
    wanted = {f.path for f in sample.files}
    for src in sorted(p for p in final.rglob("*") if p.is_file()):
        rel = src.relative_to(final).as_posix()
        if rel in ok or rel not in wanted:
            _link_or_copy(src, staging / rel)


def _fetch_file(
    sample: Sample, file: SampleFile, url: str, part: Path, report_bytes: Callable[[int], None], **retry: Any
) -> None:
    """Download one file into ``part`` and verify it; a resumed download that fails its checksum is
    fetched once more from zero, a fresh one is refused."""
    for fresh in (False, True):
        if fresh:
            part.unlink(missing_ok=True)
        try:
            resumed = download(url, part, file.size, on_progress=report_bytes, **retry)
        except SampleError as exc:
            raise SampleError(f"samples: sample '{sample.name}': file '{file.path}': {exc} ({url})") from None
        if verified(part, file):
            return
        got = sha256_of(part)
        part.unlink()
        if fresh or not resumed:
            raise SampleError(
                f"samples: sample '{sample.name}': file '{file.path}' failed its checksum (sha256 {got[:16]}..., "
                f"expected {file.sha256[:16]}...) from {url}"
            )
        logger.warning(
            "sample '%s': %s failed its checksum after a resumed download: again from zero", sample.name, file.path
        )


def fetch_sample(
    sample: Sample,
    to: Path,
    mirror: str | None = None,
    *,
    attempts: int = 5,
    backoff_s: float = 0.5,
    timeout_s: float = 30.0,
) -> FetchResult:
    """Fetch ``sample`` into ``to/<sample.folder>`` (see the module docstring); ``mirror`` is a base URL
    (:func:`resolve_mirror`) or None for the upstream copies."""
    final, staging = Path(to) / sample.folder, _staging(Path(to) / sample.folder)
    ok = {f.path for f in sample.files if verified(final / f.path, f)}
    if len(ok) == len(sample.files):
        logger.info("sample '%s': all %d files present and verified in %s", sample.name, len(ok), final)
        return FetchResult(sample.name, final, 0, 0, len(ok))
    # files finished by an earlier, interrupted run are in staging already
    todo = [f for f in sample.files if f.path not in ok and not verified(staging / f.path, f)]
    missing = [f for f in todo if file_url(sample, f, mirror) is None]
    if missing:
        raise SampleError(
            f"samples: sample '{sample.name}': {len(missing)} file(s) ('{missing[0].path}' ...) have no unchanged "
            f"public copy (re-packaged here): set --mirror URL or {MIRROR_ENV} to a mirror laid out like the samples "
            "folder"
        )
    staging.mkdir(parents=True, exist_ok=True)
    if final.is_dir():
        _prefill(final, staging, sample, ok)
    label, total = f"fetch {sample.name}", sample.size
    done = total - sum(f.size for f in todo)
    report(logger, label, done, total)
    if todo:
        logger.info(
            "sample '%s': downloading %d file(s), %.1f MB from %s",
            sample.name,
            len(todo),
            (total - done) / 1e6,
            mirror or "the upstream copies",
        )
    shown = done

    def report_bytes(in_part: int) -> None:
        nonlocal shown
        if done + in_part - shown >= REPORT_EVERY:
            shown = done + in_part
            report(logger, label, shown, total)

    for f in todo:
        url = str(file_url(sample, f, mirror))
        target = staging / f.path
        target.unlink(missing_ok=True)
        part = target.with_name(target.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        _fetch_file(sample, f, url, part, report_bytes, attempts=attempts, backoff_s=backoff_s, timeout_s=timeout_s)
        os.replace(part, target)
        done += f.size
        shown = done
        report(logger, label, done, total)
    _swap(staging, final)
    logger.info("sample '%s': %d file(s) verified in %s", sample.name, len(sample.files), final)
    return FetchResult(sample.name, final, len(todo), sum(f.size for f in todo), len(sample.files) - len(todo))


def _swap(staging: Path, final: Path) -> None:
    """Replace ``final`` by ``staging`` with renames (the old folder is removed afterwards)."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- the registry itself


def scan_folder(folder: Path) -> list[SampleFile]:
    """Every file under ``folder`` (sorted), with its size and SHA-256."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return [SampleFile(p.relative_to(folder).as_posix(), p.stat().st_size, sha256_of(p)) for p in files]


def registry_text(data: dict[str, Any]) -> str:
    """The registry as JSON text: metadata indented, one line per file."""
    lines = ['{\n  "comment": ' + json.dumps(data["comment"]) + ',\n  "samples": [']
    for i, s in enumerate(data["samples"]):
        head = {k: v for k, v in s.items() if k != "files"}
        body = json.dumps(head, indent=2, ensure_ascii=False)[:-2].replace("\n", "\n    ")
        files = ",\n".join(f"        {json.dumps(f, ensure_ascii=False)}" for f in s["files"])
        sep = "," if i + 1 < len(data["samples"]) else ""
        lines.append(f'    {body},\n      "files": [\n{files}\n      ]\n    }}{sep}')
    return "\n".join(lines) + "\n  ]\n}\n"


def updated_registry(data_root: Path, path: Path | None = None) -> str:
    """The registry text with every sample's files recomputed from ``data_root/<folder>``."""
    data = json.loads(Path(path or REGISTRY).read_text())
    for s in data["samples"]:
        folder = Path(data_root) / s["folder"]
        if not folder.is_dir():
            raise SampleError(f"samples: sample '{s['name']}': folder '{folder}' not found")
        s["files"] = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in scan_folder(folder)]
    return registry_text(data)


def main(argv: Sequence[str] | None = None) -> int:
    """``--update DATA``: rewrite the registry's file lists from DATA; ``--check DATA``: exit 1 when stale."""
    parser = argparse.ArgumentParser(prog="python -m capture3d.ops.samples", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--update", type=Path, metavar="DATA")
    mode.add_argument("--check", type=Path, metavar="DATA")
    args = parser.parse_args(argv)
    text = updated_registry(args.update or args.check)
    if args.update is not None:
        REGISTRY.write_text(text)
        return 0
    if REGISTRY.read_text() != text:
        sys.stderr.write(f"error: {REGISTRY} differs from {args.check}: run python -m capture3d.ops.samples --update\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
