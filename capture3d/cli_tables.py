"""What the ``capture3d`` command prints: metric tables, status tables and each stage's extra lines.

Inputs: a stage's metrics (its ``metrics.json``) and catalog step, or the rows of a flow run.
Outputs: rich tables on stdout (200 columns wide when stdout is not a terminal; the status tables of
flow runs 80: a kind's few terminal metrics from the catalog, reasons below). A stage prints
its catalog ``display`` metrics, then what :data:`EXTRAS` adds for it (register's unplaced,
low-confidence and status lines, the fits' per-view table, the bodies' per-body rows and skipped
people); ``evaluate features`` prints one column per descriptor instead.
"""

from __future__ import annotations

import fnmatch
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from capture3d import catalog
from capture3d.catalog import Step

logger = logging.getLogger(__name__)

FEATURE_TABLE_KEYS = (
    "num_pairs",
    "feature_match_recall",
    "inlier_ratio",
    "registration_recall",
    "median_rotation_error_deg",
    "median_translation_error",
    "extract_s_per_scan",
    "dimension",
)
BODY_COLUMNS = ("body", "error_px", "error_norm", "pck_0.1", "mpjpe_mm", "pa_mpjpe_mm")
STATUS_WIDTH = 80
"""the status tables' width when stdout is not a terminal"""
MAX_STATUS_METRICS = 4
"""metric columns of a status table at most"""
BODY_STATUS_KEYS = ("bodies_fitted", "bodies_skipped", "body_error_norm", "body_mpjpe_mm", "body_pa_mpjpe_mm")


def console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=200)


def fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_metrics(title: str, metrics: dict[str, Any], keys: Sequence[str]) -> None:
    """A two-column table of the metrics that are present."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in keys:
        if key in metrics:
            table.add_row(key, fmt(metrics[key]))
    console().print(table)


def _kind_of(row: Mapping[str, Any], kind: str | None) -> str:
    """The row's capture kind: its ``kind``, the caller's, or the first whose summary keys it holds."""
    if row.get("kind") or kind:
        return str(row.get("kind") or kind)
    for p in catalog.PIPELINES:
        if any(k in row for s in p.steps for k in s.summary.values()):
            return p.kind
    return ""


def status_columns(kind: str, rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(row key, column title) of the kind's terminal metrics (:attr:`catalog.Pipeline.terminal`)
    that some row holds, at most :data:`MAX_STATUS_METRICS`."""
    known = {p.kind: p for p in catalog.PIPELINES}
    terminal = known[kind].terminal if kind in known else {}
    keys = list(dict.fromkeys(k for r in rows for k in r))
    columns: list[tuple[str, str]] = []
    for key, title in terminal.items():
        if "*" in key:
            head, tail = key.split("*", 1)
            for k in keys:
                if fnmatch.fnmatchcase(k, key):
                    columns.append((k, title.replace("*", k[len(head) : len(k) - len(tail)])))
        elif key in keys:
            columns.append((key, title))
    return columns[:MAX_STATUS_METRICS]


def status_console() -> Console:
    """The status tables' console: the terminal, or 80 columns when stdout is not one."""
    return Console() if sys.stdout.isatty() else Console(width=STATUS_WIDTH)


def print_statuses(
    rows: Sequence[Mapping[str, Any]], title: str = "captures", kind: str | None = None, out: Console | None = None
) -> None:
    """One table per capture kind: capture, status and the kind's few terminal metrics (fits 80
    columns); then each failed or refused capture's reason on a line of its own. Every other metric
    is in the report and in ``capture3d results``."""
    out = out or status_console()
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_kind_of(row, kind), []).append(row)
    for group_kind, group in groups.items():
        columns = status_columns(group_kind, group)
        label = f"{title} ({group_kind})" if len(groups) > 1 and group_kind else title
        table = Table(title=label, box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("capture", overflow="fold", max_width=32)
        table.add_column("status", overflow="fold", max_width=24)
        for _, column in columns:
            table.add_column(column, justify="right", no_wrap=True)
        for row in group:
            table.add_row(
                str(row.get("capture", "")), str(row.get("status", "")), *(fmt(row.get(k, "")) for k, _ in columns)
            )
        out.print(table)
        for row in group:
            if row.get("reason"):
                out.print(f"  {row.get('capture')}: {row['reason']}", markup=False, highlight=False, overflow="fold")
            if row.get("skipped_inputs"):  # the bad-input policy: skipped and listed, never silent
                count = row["skipped_inputs"]
                text = f"  {row.get('capture')}: {count} unreadable input(s) skipped (listed in metrics.json)"
                out.print(text, markup=False, highlight=False, overflow="fold")


def _register_lines(metrics: dict[str, Any]) -> None:
    out = console()
    for name, reason in metrics.get("unplaced", {}).items():
        out.print(f"unplaced: {name}: {reason}")
    for name, reason in metrics.get("low_confidence", {}).items():
        out.print(f"low confidence: {name}: {reason}")
    for name, reason in metrics.get("skipped_scans", {}).items():
        out.print(f"skipped: {name}: {reason}", markup=False, highlight=False)
    free_space = metrics.get("verification", {}).get("free_space_test")
    out.print(f"status: {metrics.get('status')} (free-space test: {free_space})")


def _per_view(metrics: dict[str, Any]) -> None:
    table = Table(title="held-out views")
    for col in ("view", "psnr", "ssim"):
        table.add_column(col, justify="right")
    for row in metrics.get("per_view", []):
        table.add_row(str(row["view"]), fmt(row["psnr"]), fmt(row["ssim"]))
    console().print(table)


def _body_rows(metrics: dict[str, Any]) -> None:
    table = Table(title="bodies")
    for col in BODY_COLUMNS:
        table.add_column(col, justify="right")
    for row in metrics.get("per_body", []):
        table.add_row(*(fmt(row[c]) if c in row else "" for c in BODY_COLUMNS))
    console().print(table)
    for skip in metrics.get("skipped", []):
        console().print(f"skipped: {skip['person']}: {skip['reason']}")


def _features(metrics: dict[str, Any]) -> None:
    """One row per metric, one column per descriptor."""
    features = metrics["features"]
    table = Table(
        title=f"features on {metrics['capture']} (voxel {metrics['voxel_size']:.3g}, {metrics['global_method']})"
    )
    table.add_column("metric")
    for name in features:
        table.add_column(name, justify="right")
    for key in FEATURE_TABLE_KEYS:
        table.add_row(key, *(fmt(features[name].get(key)) for name in features))
    console().print(table)


EXTRAS: dict[str, Callable[[dict[str, Any]], None]] = {
    "register_scans": _register_lines,
    "fit_gaussians": _per_view,
    "fit_nerf": _per_view,
    "fit_bodies": _body_rows,
    "evaluate_bodies": _body_rows,
    "evaluate_features": _features,
}
"""step name -> what its subcommand prints after the metrics table"""


def show_stage(step: Step, metrics: dict[str, Any]) -> None:
    """What a stage's subcommand prints: its ``display`` metrics, then its extras."""
    if step.display:
        title = " ".join(step.command) + (f": {metrics['capture']}" if "capture" in metrics else "")
        print_metrics(title, metrics, step.display)
    if step.name in EXTRAS:
        EXTRAS[step.name](metrics)


def print_demo(statuses: Sequence[Any], captures: Sequence[tuple[str, str]]) -> None:
    """The demo's tables: each capture's metrics against ground truth, then one status table per
    kind (``captures``: (title, capture name) pairs)."""
    photos = (*catalog.step("sfm").display, "gaussians_psnr", "gaussians_ssim", "nerf_psnr", "nerf_ssim")
    for status in statuses:
        if status.ok and "bodies_fitted" in status.metrics:
            title, keys = "body fits against ground truth", BODY_STATUS_KEYS
        elif status.ok and "num_placed" in status.metrics:
            title, keys = "registration against ground truth", catalog.step("evaluate_registration").display
        elif status.ok:
            title, keys = "SfM against ground truth; 3DGS and NeRF on held-out views", photos
        else:
            continue
        print_metrics(f"demo capture '{status.name}': {title}", status.metrics, keys)
    for title, name in captures:
        print_statuses([s.row() for s in statuses if s.name == name], title)
