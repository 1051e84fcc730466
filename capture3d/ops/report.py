"""An HTML quality report of a batch work area, with a regression check.

Inputs: a work area written by ``capture3d batch``: ``runs/<run id>.json`` (one row per capture:
``capture``, ``status`` ok/current/failed/refused/busy, ``reason``, flat summary metrics),
``manifests/<name>.json`` (provenance) and ``results/<name>/<stage>/`` (stage outputs; see
:mod:`capture3d.ops.report_figures` for the files read). Optionally an older ``runs/*.json`` (the
last good run) and regression thresholds.

Output: one HTML file (images as downscaled base64 PNGs; plotly.js loaded from one shared
``plotly-<version>.min.js`` beside it; no network requests) with a table per run, per capture its
provenance, SfM cameras and points in 3D, registration error histograms, held-out PSNR per view
with the held-out renders, body-fit overlays and every loss curve (each capture with its row from
the newest run that lists it); and, given ``previous``, the regressions of the latest run against
it. Missing files only leave their part out. Every text read from a file is HTML-escaped. The
figures and file readers are in :mod:`capture3d.ops.report_figures`, the HTML pieces in
:mod:`capture3d.ops.report_html`.

The comparison takes the latest run in ``runs/`` (by ``finished``; ``previous`` itself excluded):
its ``ok`` rows' numbers, and for ``current`` rows (nothing redone) the manifest's ``metrics``;
against the ``ok`` rows of ``previous``. Captures ok/current before and failed/refused now are
reported as newly failed.

Regression check (:func:`compare_metrics`, ``dvc metrics diff`` semantics: per capture and metric
old, new, change = new - old, relative change = change / |old|). Which way is better is decided
from the metric name's ``_``-separated words (lower-better words win):

========================================================================  ============
words in the name                                                          better
========================================================================  ============
error(s), mpjpe, chamfer, rmse, ape, seconds, s, time, memory, mb,        lower
skipped, unplaced, outliers; ``..._to_gt`` / ``gt_to_...`` distances
psnr, ssim, recall, fscore, precision, fraction, auc, pck, fitness,       higher
fitted, placed, registered, within, accuracy
anything else (counts such as num_points3d, fetched)                      not checked
========================================================================  ============

A metric regresses when it moves the bad way by more than its threshold (absolute, in the
metric's unit). Thresholds are keyed by metric name or by ``fnmatch`` pattern (an exact name wins,
then the first matching pattern); metrics without a threshold are listed in the diff but never
regress. :data:`DEFAULT_THRESHOLDS` (used when ``thresholds`` is None) covers the unit-free and
fixed-unit metrics; scene-unit distances (positions, translations, Chamfer) need a threshold from
the caller:

=====================================================================  ==========================
pattern                                                                 default threshold
=====================================================================  ==========================
``*psnr*`` / ``*ssim*``                                                 0.5 dB / 0.02
``*recall*``, ``*fscore*``, ``*precision*``, ``*fraction*``, ``auc_*``, 0.05
``*pck*``
``*_deg_*``, ``*_deg`` / ``*_mm`` / ``*_px`` / ``*error_norm*``         1 deg / 10 mm / 0.5 px / 0.01
``bodies_fitted``, ``bodies_skipped``, ``num_placed``,                  0 (any loss)
``num_within_tolerance``
=====================================================================  ==========================
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from capture3d import results as tidy
from capture3d.atomic import atomic_write_text
from capture3d.ops import report_figures as figs
from capture3d.ops import report_html as page_html
from capture3d.ops.manifest import FINISHED

logger = logging.getLogger(__name__)

Better = Literal["higher", "lower"]
LOWER_BETTER = frozenset(
    {
        "error",
        "errors",
        "mpjpe",
        "chamfer",
        "rmse",
        "ape",
        "seconds",
        "s",
        "time",
        "memory",
        "mb",
        "skipped",
        "unplaced",
        "outliers",
    }
)
HIGHER_BETTER = frozenset(
    {
        "psnr",
        "ssim",
        "recall",
        "fscore",
        "precision",
        "fraction",
        "auc",
        "pck",
        "fitness",
        "fitted",
        "placed",
        "registered",
        "within",
        "accuracy",
    }
)
DEFAULT_THRESHOLDS: dict[str, float] = {
    "*psnr*": 0.5,
    "*ssim*": 0.02,  # dB; SSIM
    "*recall*": 0.05,
    "*fscore*": 0.05,
    "*precision*": 0.05,
    "*fraction*": 0.05,
    "auc_*": 0.05,
    "*pck*": 0.05,
    "*_deg_*": 1.0,
    "*_deg": 1.0,
    "*_mm": 10.0,
    "*_px": 0.5,
    "*error_norm*": 0.01,  # degrees, mm, px, box size
    "bodies_fitted": 0.0,
    "bodies_skipped": 0.0,
    "num_placed": 0.0,
    "num_within_tolerance": 0.0,  # counts
}


@dataclass(frozen=True)
class MetricDiff:
    """One metric of one capture in two runs (None where a run lacks it)."""

    capture: str
    metric: str
    old: float | None
    new: float | None

    @property
    def change(self) -> float | None:
        return None if self.old is None or self.new is None else self.new - self.old

    @property
    def relative_change(self) -> float | None:
        change = self.change
        return None if change is None or not self.old else change / abs(self.old)


@dataclass(frozen=True)
class Regression:
    """A metric that moved the bad way (``better`` says which way is good) by more than ``threshold``."""

    capture: str
    metric: str
    old: float
    new: float
    change: float
    relative_change: float | None
    better: Better
    threshold: float


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote and found."""

    path: Path
    regressions: list[Regression]
    run_id: str | None
    previous_run_id: str | None
    num_runs: int
    num_captures: int
    status_counts: dict[str, int]
    newly_failed: list[str]
    num_figures: int
    num_images: int


def metric_direction(name: str) -> Better | None:
    """``"lower"`` or ``"higher"`` is better for the metric ``name``, or None when unknown."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    if words & LOWER_BETTER or ("to" in words and "gt" in words):
        return "lower"
    return "higher" if words & HIGHER_BETTER else None


def threshold_for(name: str, thresholds: Mapping[str, float]) -> float | None:
    """The threshold of ``name``: an exact key, else the first matching ``fnmatch`` pattern."""
    if name in thresholds:
        return float(thresholds[name])
    return next((float(v) for k, v in thresholds.items() if fnmatch.fnmatchcase(name, k)), None)


def diff_metrics(
    current: Mapping[str, Mapping[str, float]], previous: Mapping[str, Mapping[str, float]]
) -> list[MetricDiff]:
    """Every (capture, metric) in either run, sorted, with its old and new value."""
    out = []
    for capture in sorted(set(current) | set(previous)):
        new, old = current.get(capture, {}), previous.get(capture, {})
        for metric in sorted(set(new) | set(old)):
            out.append(MetricDiff(capture, metric, old.get(metric), new.get(metric)))
    return out


def compare_metrics(
    current: dict[str, dict[str, float]], previous: dict[str, dict[str, float]], thresholds: Mapping[str, float]
) -> list[Regression]:
    """The metrics (present in both runs, with a known direction and a threshold) that regressed."""
    found = []
    for d in diff_metrics(current, previous):
        better, limit = metric_direction(d.metric), threshold_for(d.metric, thresholds)
        if d.change is None or better is None or limit is None:
            continue
        worse_by = -d.change if better == "higher" else d.change
        if worse_by > limit:
            found.append(Regression(d.capture, d.metric, d.old, d.new, d.change, d.relative_change, better, limit))
    return found


def load_run(path: Path) -> dict[str, Any] | None:
    """A ``runs/<run id>.json`` summary (``captures`` a list of rows), or None when unreadable."""
    data = figs.read_json(path)
    if data is None or not isinstance(data.get("captures"), list):
        return None
    data["captures"] = [r for r in data["captures"] if isinstance(r, dict) and "capture" in r]
    data.setdefault("run_id", Path(path).stem)
    return data


def build_report(
    work: Path,
    out: Path,
    *,
    previous: Path | None = None,
    thresholds: Mapping[str, float] | None = None,
    results_root: Path | None = None,
) -> ReportResult:
    """Write the HTML report of the work area ``work`` to ``out``; see the module docstring.
    ``results_root``: where the captures' results are when not in ``work/results`` (a folder run)."""
    work, out = Path(work), Path(out)
    results_root = Path(results_root) if results_root is not None else work / "results"
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    runs = {p.resolve(): r for p in sorted((work / "runs").glob("*.json")) if (r := load_run(p)) is not None}
    base = load_run(previous) if previous is not None else None
    if previous is not None and base is None:
        logger.warning("report: previous run %s is missing or unreadable; no regression check", previous)
    base_path = Path(previous).resolve() if previous is not None else None
    ordered = _ordered(runs)
    latest = next((r for p, r in reversed(ordered) if p != base_path), None)
    manifests = {p.stem: m for p in sorted((work / "manifests").glob("*.json")) if (m := figs.read_json(p))}
    results = {p.name: p for p in sorted(results_root.glob("*")) if p.is_dir() and not p.name.startswith(".")}
    rows = {str(r["capture"]): r for r in (latest or {}).get("captures", [])}
    regressions: list[Regression] = []
    newly_failed: list[str] = []
    diffs: list[MetricDiff] = []
    if base is not None and latest is not None:
        # current rows (nothing redone) compare with the numbers their manifest recorded
        redone = [
            r
            if r.get("status") in FINISHED
            else {**((manifests.get(n) or {}).get("metrics") or {}), **r, "status": "ok"}
            for n, r in rows.items()
            if r.get("status") in (*FINISHED, "current")
        ]
        current = tidy.by_capture(tidy.frame(tidy.run_rows({**latest, "captures": redone})))
        old = tidy.by_capture(tidy.frame(tidy.run_rows(base)))
        regressions, diffs = compare_metrics(current, old, thresholds), diff_metrics(current, old)
        good_before = {str(r["capture"]) for r in base["captures"] if r.get("status") in (*FINISHED, "current")}
        newly_failed = sorted(
            n for n, r in rows.items() if n in good_before and r.get("status") in ("failed", "refused")
        )
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[str(row.get("status", "?"))] = counts.get(str(row.get("status", "?")), 0) + 1
    page = page_html.Page()
    run_tables = [page_html.run_table(r, manifests, open_=r is latest) for _, r in reversed(ordered)]
    if base is not None and base_path not in runs:
        run_tables.append(page_html.run_table(base, manifests, open_=False, label="previous run (baseline)"))
    captures = sorted(set(results) | set(manifests))
    newest: dict[str, dict[str, Any]] = {}  # each capture's row in the newest run that lists it
    for _, run in ordered:
        newest.update({str(r["capture"]): r for r in run.get("captures", [])})
    newest.update(rows)
    sections = [page_html.capture_section(page, n, newest.get(n), manifests.get(n), results.get(n)) for n in captures]
    title = f"capture3d quality report: {latest['run_id']}" if latest else "capture3d quality report"
    toc = " · ".join(f'<a href="#{page_html.anchor(n)}">{page_html.esc(n)}</a>' for n in captures)
    body = [
        f"<h1>{page_html.esc(title)}</h1>",
        page_html.kv_table(
            {
                "work area": str(work),
                "generated": datetime.now(UTC).isoformat(timespec="seconds"),
                "latest run": (latest or {}).get("run_id"),
                "code version": (latest or {}).get("code_version"),
                "compared with": base["run_id"] if base and latest else None,
                "captures": ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
            }
        ),
        page_html.regression_section(
            regressions, newly_failed, diffs, base["run_id"] if base and latest else None, thresholds
        ),
        '<section id="runs"><h2>Runs</h2>',
        *run_tables,
        "</section>",
        f'<section id="captures"><h2>Captures</h2><p>{toc}</p>',
        *sections,
        "</section>",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page.document(title, body, page_html.write_plotly_asset(out.parent)))
    logger.info(
        "report: %d captures, %d figures, %d images, %d regressions -> %s",
        len(captures),
        page.figures,
        page.images,
        len(regressions),
        out,
    )
    return ReportResult(
        out,
        regressions,
        (latest or {}).get("run_id"),
        base["run_id"] if base and latest else None,
        len(runs),
        len(captures),
        counts,
        newly_failed,
        page.figures,
        page.images,
    )


def last_good_run(runs_dir: Path, exclude: str | None = None) -> Path | None:
    """The newest ``runs/*.json`` (other than run ``exclude``) with at least one capture ok and
    none failed: the baseline a scheduled run is compared with."""
    runs = {p.resolve(): r for p in sorted(Path(runs_dir).glob("*.json")) if (r := load_run(p)) is not None}
    for path, run in reversed(_ordered(runs)):
        statuses = [row.get("status") for row in run.get("captures", [])]
        if run.get("run_id") != exclude and "ok" in statuses and "failed" not in statuses:
            return path
    return None


def _ordered(runs: Mapping[Path, dict[str, Any]]) -> list[tuple[Path, dict[str, Any]]]:
    """Runs oldest first: by ``finished``, then run id."""
    return sorted(runs.items(), key=lambda kv: (str(kv[1].get("finished", "")), str(kv[1]["run_id"])))
