"""What the ``capture3d`` command prints: metric tables, status tables and each stage's extra lines.

Inputs: a stage's metrics (its ``metrics.json``) and catalog step, or the rows of a flow run.
Outputs: rich tables on stdout (200 columns wide when stdout is not a terminal). A stage prints
its catalog ``display`` metrics, then what :data:`EXTRAS` adds for it (register's unplaced,
low-confidence and status lines, the fits' per-view table, the bodies' per-body rows and skipped
people); ``evaluate features`` prints one column per descriptor instead.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

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


def print_statuses(rows: list[dict[str, Any]], title: str = "captures") -> None:
    """One row per capture: status, summary metrics, reason when failed."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    table = Table(title=title)
    for key in keys:
        table.add_column(key, overflow="fold")
    for row in rows:
        table.add_row(*(fmt(row.get(k, "")) for k in keys))
    console().print(table)


def _register_lines(metrics: dict[str, Any]) -> None:
    out = console()
    for name, reason in metrics.get("unplaced", {}).items():
        out.print(f"unplaced: {name}: {reason}")
    for name, reason in metrics.get("low_confidence", {}).items():
        out.print(f"low confidence: {name}: {reason}")
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
