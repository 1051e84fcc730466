"""Planning a batch run over an inbox, without Prefect and without heavy imports: the ``batch``
params section, the work area's layout, and which captures are pending.

Inputs: an :class:`~capture3d.ops.inbox.Inbox`, the work folder and the params. Output: a
:class:`Plan`: captures whose manifest does not record the current work key (inputs' ETags and
sizes, the params sections their kind's stages read, the code version), those that are current,
and the names refused as unsafe. A no-op rerun is this listing and one small JSON read per capture.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture3d.catalog import batch_kinds, pipeline
from capture3d.config import section
from capture3d.ops.inbox import CaptureListing, Inbox
from capture3d.ops.manifest import (
    code_version,
    is_current,
    params_hash,
    read_json,
    work_key,
)
from capture3d.ops.s3 import S3Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchConfig:
    """The ``batch`` section of params.yaml."""

    remote: str  # DVC remote for the artifacts (s3://bucket/path or a folder); "" = none
    endpoint_url: str  # S3 API endpoint (MinIO, moto ...); "" = AWS or AWS_ENDPOINT_URL
    max_attempts: int  # tries per S3 operation
    retry_base_s: float  # first backoff, doubling, full jitter
    checkpoint_every_s: float  # long fits' resume state uploaded to the remote at most this often; 0 = never
    max_workers: int  # captures processed at once (threads, or Dask worker processes)
    record_dvc: bool  # inside the DVC project on its own paths: `dvc commit` the stages that ran
    lock_timeout_s: float  # how long to wait for a capture another run holds
    runner: str  # "threads" | "dask"
    dask_address: str  # a Dask scheduler (tcp://host:8786); "" = a LocalCluster
    isolate_stages: bool  # heavy stages in a child process (memory freed between captures)
    worker_pool: bool  # isolate_stages, thread runner: warm workers kept for the run instead of a process per step
    max_tasks_per_worker: int  # worker_pool: a worker is replaced after this many heavy steps (0: never)
    worker_max_rss_mb: float  # worker_pool: ... or when its resident memory after a step exceeds this (0: no cap)
    gpu_pool: str  # `capture3d deploy`: work pool of the GPU stages' kinds
    cpu_pool: str  # ... and of the CPU-only kinds
    schedule_cron: str  # deployments' schedule: a cron line, or
    schedule_interval_s: float  # an interval in seconds (0 with an empty cron: on demand)

    def s3(self) -> S3Settings:
        return S3Settings(
            self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL", ""), self.max_attempts, self.retry_base_s
        )


@dataclass(frozen=True)
class WorkLayout:
    """The folders of a batch work area. ``results_root`` puts the results elsewhere (a folder
    run: ``<out>/<capture>/<step>``); ``in_place`` reads a local inbox's captures where they are
    instead of mirroring them into ``inbox/``."""

    root: Path
    results_root: Path | None = None
    in_place: bool = False

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def results(self) -> Path:
        return self.results_root if self.results_root is not None else self.root / "results"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def state(self, name: str) -> Path:
        return self.root / "state" / name

    def lock(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    @property
    def runs(self) -> Path:
        return self.root / "runs"


@dataclass(frozen=True)
class PlannedCapture:
    """A capture with the key its finished work is stored under."""

    listing: CaptureListing
    key: str
    params_digest: str


@dataclass
class Plan:
    """What an inbox holds against the work area: pending captures, current ones, refused names."""

    pending: list[PlannedCapture]
    current: list[str]
    refused: dict[str, str]
    code: str

    def rows(self) -> list[dict[str, Any]]:
        """Status rows of the captures that need no work: current and refused ones."""
        rows = [{"capture": n, "status": "current"} for n in self.current]
        rows += [{"capture": n, "status": "refused", "reason": r} for n, r in self.refused.items()]
        return sorted(rows, key=lambda r: r["capture"])


def load_batch_config(
    params: dict[str, Any], endpoint_url: str | None = None, remote: str | None = None
) -> BatchConfig:
    """The ``batch`` section, with the command line's endpoint and remote taking precedence."""
    config = section(params, "batch", BatchConfig)
    updates = {k: v for k, v in (("endpoint_url", endpoint_url), ("remote", remote)) if v is not None}
    return BatchConfig(**{**config.__dict__, **updates}) if updates else config


def kind_sections(kind: str) -> tuple[str, ...]:
    """The params sections a capture kind's steps read (from the catalog; () for an unknown kind)."""
    return pipeline(kind).sections if kind in batch_kinds() else ()


def plan(
    inbox: Inbox,
    work: Path,
    params: dict[str, Any],
    names: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    force_kind: str | None = None,
) -> Plan:
    """List the inbox and compare each capture's work key with its manifest (no Prefect, no
    download); only ``names`` / ``kinds`` when given. ``force_kind``: every capture is of that
    kind (a folder of photo captures: an empty or unreadable one fails in its first stage with
    the stage's reason, instead of being left out as of no kind)."""
    layout = WorkLayout(Path(work))
    listing = inbox.list()
    if force_kind is not None:
        listing.captures = [dataclasses.replace(c, kind=force_kind) for c in listing.captures]
    code = code_version()
    pending, current = [], []
    wanted = set(names) if names else None
    for capture in listing.captures:
        if (wanted is not None and capture.name not in wanted) or (kinds and capture.kind not in kinds):
            continue
        digest = params_hash(params, kind_sections(capture.kind))
        key = work_key(capture.input_hash, digest, code)
        if is_current(read_json(layout.manifests / f"{capture.name}.json"), key):
            current.append(capture.name)
        else:
            pending.append(PlannedCapture(capture, key, digest))
    return Plan(pending, current, dict(listing.refused), code)
