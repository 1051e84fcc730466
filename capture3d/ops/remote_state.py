"""Resume states of long fits kept on the batch's remote, so a fit survives a lost worker.

Inputs: the remote (``s3://bucket/path`` or a local folder: the batch's DVC remote), the S3
settings, a state key (:func:`state_key`: capture, step and an identity digest of the step's
params, code and input data) and the local state file a fitting stage checkpoints to. Outputs:
the state under ``<remote>/capture3d-resume/<capture>/<step>/<digest>.pt``, uploaded by
:func:`synced` whenever the local file changed, at most every ``every_s`` seconds, and deleted
once the step succeeded; before the step runs, a state found there for the same key is fetched
into the (absent) local file, so a fresh worker continues the same loss curve.

Uploads are whole-object writes (a single S3 PUT, or a copy to a temporary sibling renamed into
place): a reader sees the old state or the new one, never a torn one. A failing upload only logs
a warning -- the fit itself goes on -- and the training loops still refuse a state made with other
settings (:mod:`capture3d.tasks.train_state`). No Prefect, no stage code: the flows wrap a step in
:func:`synced`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from capture3d.ops.s3 import RemoteObject, S3Settings, download, make_client, parse_s3_url, retrying

logger = logging.getLogger(__name__)

PREFIX = "capture3d-resume"
"""folder of the resume states inside the remote (outside DVC's own ``files/`` and hash folders)"""


def state_key(capture: str, step: str, identity: Iterable[str]) -> str:
    """``<capture>/<step>/<digest>.pt``: the digest (SHA-256, 32 hex) of the identity strings
    (params digest, code version, input data digest ...), so a state of other settings, code or
    inputs is never fetched."""
    digest = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:32]
    return f"{capture}/{step}/{digest}.pt"


def data_digest(paths: Sequence[Path]) -> str:
    """SHA-256 of every file under ``paths`` (relative name and content, in sorted order); missing
    paths count as absent. What a fit reads, so a state of other input data is never used."""
    digest = hashlib.sha256()
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root] if root.is_file() else []
        digest.update(f"{root.name}\0{len(files)}\0".encode())
        for path in files:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            with path.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(chunk)
            digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class RemoteStore:
    """A remote holding resume states: ``s3://bucket/path`` (through boto3 with retries) or a folder."""

    remote: str
    settings: S3Settings = field(default_factory=S3Settings)

    @property
    def is_s3(self) -> bool:
        return self.remote.startswith("s3://")

    @cached_property
    def _client(self) -> Any:
        return make_client(self.settings)  # built once: a boto3 client costs ~0.1 s of CPU (thread-safe)

    def _s3(self, key: str) -> tuple[Any, str, str]:
        bucket, prefix = parse_s3_url(self.remote)
        return self._client, bucket, f"{prefix}{PREFIX}/{key}"

    def _folder(self, key: str) -> Path:
        return Path(self.remote) / PREFIX / key

    def url(self, key: str) -> str:
        """Where ``key`` lives, for messages."""
        return f"{self.remote.rstrip('/')}/{PREFIX}/{key}"

    def fetch(self, key: str, dest: Path) -> bool:
        """Download the state ``key`` to ``dest`` atomically; False when the remote has none."""
        if not self.is_s3:
            source = self._folder(key)
            if not source.is_file():
                return False
            _copy_atomic(source, Path(dest))
            return True
        from botocore.exceptions import ClientError

        client, bucket, object_key = self._s3(key)

        def head() -> dict[str, Any] | None:
            try:
                return client.head_object(Bucket=bucket, Key=object_key)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

        meta = retrying(head, self.settings, f"looking up {self.url(key)}")
        if meta is None:
            return False
        obj = RemoteObject(object_key, str(meta["ETag"]).strip('"'), int(meta["ContentLength"]))
        download(client, bucket, obj, Path(dest), self.settings)
        return True

    def put(self, path: Path, key: str) -> None:
        """Upload the file ``path`` as the state ``key`` (one whole-object write)."""
        if not self.is_s3:
            _copy_atomic(Path(path), self._folder(key))
            return
        client, bucket, object_key = self._s3(key)
        with Path(path).open("rb") as fh:  # the open handle keeps this version if the fit replaces the file

            def upload() -> None:
                fh.seek(0)
                client.put_object(Bucket=bucket, Key=object_key, Body=fh)

            retrying(upload, self.settings, f"uploading {self.url(key)}")

    def delete(self, key: str) -> None:
        """Remove the state ``key`` (nothing when absent)."""
        if not self.is_s3:
            self._folder(key).unlink(missing_ok=True)
            return
        client, bucket, object_key = self._s3(key)
        retrying(
            lambda: client.delete_object(Bucket=bucket, Key=object_key), self.settings, f"deleting {self.url(key)}"
        )

    def exists(self, key: str) -> bool:
        """Whether the remote holds the state ``key``."""
        if not self.is_s3:
            return self._folder(key).is_file()
        client, bucket, object_key = self._s3(key)
        page = retrying(
            lambda: client.list_objects_v2(Bucket=bucket, Prefix=object_key, MaxKeys=1),
            self.settings,
            f"listing {self.url(key)}",
        )
        return any(item["Key"] == object_key for item in page.get("Contents", []))


def _copy_atomic(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of ``path``: a new atomic write changes it; None when absent."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def pull(store: RemoteStore, key: str, local: Path) -> bool:
    """Before a step runs: fetch the remote state ``key`` into ``local`` when ``local`` is absent
    and the remote has one. True when a state was fetched."""
    if Path(local).exists():
        return False
    if not store.fetch(key, Path(local)):
        return False
    logger.info("fetched the resume state %s into %s", store.url(key), local)
    return True


@dataclass
class SyncReport:
    """What one :func:`synced` block did (for logs and tests)."""

    pulled: bool = False
    uploads: int = 0
    failed_uploads: int = 0
    deleted: bool = False


class _Uploader:
    """Uploads ``local`` as ``key`` when its signature changed since the last upload."""

    def __init__(self, store: RemoteStore, key: str, local: Path, report: SyncReport) -> None:
        self.store, self.key, self.local, self.report = store, key, Path(local), report
        self.last = _signature(local) if report.pulled else None  # a fetched state is already there
        self.lock = threading.Lock()

    def once(self) -> None:
        with self.lock:
            sig = _signature(self.local)
            if sig is None or sig == self.last:
                return
            try:
                self.store.put(self.local, self.key)
            except FileNotFoundError:  # deleted by a finishing stage between stat and open
                return
            except Exception as exc:  # noqa: BLE001 - the fit goes on; the next change is retried
                self.report.failed_uploads += 1
                logger.warning("resume state not uploaded to %s: %s", self.store.url(self.key), exc)
                return
            self.last = sig
            self.report.uploads += 1
            logger.debug("uploaded the resume state %s", self.store.url(self.key))


@contextmanager
def synced(store: RemoteStore, key: str, local: Path, every_s: float) -> Iterator[SyncReport]:
    """Run a step with its resume state ``local`` mirrored on ``store`` as ``key``: :func:`pull`
    first; while the block runs, a thread uploads ``local`` whenever it changed, checking every
    ``every_s`` seconds; when the block succeeds the remote state is deleted (the step is done),
    when it raises the latest local state is uploaded once more (another worker may go on)."""
    report = SyncReport(pulled=pull(store, key, local))
    uploader = _Uploader(store, key, local, report)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            uploader.once()

    thread = threading.Thread(target=loop, name=f"resume-sync-{key}", daemon=True)
    thread.start()
    try:
        yield report
    except BaseException:
        stop.set()
        thread.join()
        uploader.once()
        raise
    stop.set()
    thread.join()
    try:
        store.delete(key)
        report.deleted = True
    except Exception as exc:  # noqa: BLE001 - the step succeeded; a stale state only costs space
        logger.warning("finished step's resume state %s not deleted: %s", store.url(key), exc)
