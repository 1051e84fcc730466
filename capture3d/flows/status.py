"""Per-capture status of a flow run, built from Prefect futures, and its summary table.

Input: the futures of one capture's stage tasks. Output: :class:`CaptureStatus` (ok or failed
with the failing stage and its one-line reason, plus the metrics the stages returned) and a markdown table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.futures import PrefectFuture

from capture3d.catalog import summary_keys
from capture3d.ops.manifest import read_json

logger = logging.getLogger(__name__)

SUMMARY_KEYS = summary_keys()  # the catalog's summary keys: the status table's columns


@dataclass
class CaptureStatus:
    """Outcome of one capture in a flow run."""

    name: str
    ok: bool
    failed_stage: str = ""
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_futures(cls, name: str, stages: Sequence[tuple[str, PrefectFuture]]) -> CaptureStatus:
        """Wait for a capture's chain of (stage name, future); the first failure gives the reason."""
        for stage, future in stages:
            future.wait()
            state = future.state
            if not state.is_completed():
                result = future.result(raise_on_failure=False)
                reason = str(result) if isinstance(result, BaseException) else (state.message or state.name)
                return cls(name, False, stage, reason.splitlines()[0] if reason else state.name)
        metrics: dict[str, Any] = {}
        for _, future in stages:  # every stage that returns a dict adds its metrics
            result = future.result()
            if isinstance(result, dict):
                metrics.update(result)
        return cls(name, True, metrics=metrics)

    @classmethod
    def from_row(cls, row: dict[str, Any], manifests: Path) -> CaptureStatus:
        """From a batch row: ``failed`` rows give the stage and reason ("stage sfm: ..."); finished
        and current ones their metrics from the manifest."""
        name = str(row["capture"])
        if row.get("status") not in ("ok", "partial", "current"):
            reason = str(row.get("reason", row.get("status", "")))
            reason = reason.removeprefix(f"capture '{name}': ")
            stage, sep, rest = reason.partition(": ")
            if sep and stage.startswith("stage "):
                return cls(name, False, stage.removeprefix("stage "), rest)
            return cls(name, False, "", reason)
        manifest = read_json(Path(manifests) / f"{name}.json") or {}
        return cls(name, True, metrics=dict(manifest.get("metrics") or {}))

    @property
    def status(self) -> str:
        """ok; partial (a stage finished but could not verify all of its result: unplaced or
        low-confidence scans); or failed (stage)."""
        if not self.ok:
            return f"failed ({self.failed_stage})"
        return "partial" if self.metrics.get("partial") else "ok"

    def row(self) -> dict[str, Any]:
        """Flat summary: name, status, reason and the summary metrics."""
        row: dict[str, Any] = {"capture": self.name, "status": self.status}
        for key in SUMMARY_KEYS:
            if key in self.metrics:
                row[key] = self.metrics[key]
        row["reason"] = self.reason
        return row


def status_markdown(statuses: list[CaptureStatus]) -> str:
    """A markdown table with one row per capture."""
    return rows_markdown([s.row() for s in statuses])


def rows_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table, one row per dict, with the union of their keys as columns."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "/")
