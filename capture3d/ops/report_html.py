"""The HTML pieces of the quality report (:mod:`capture3d.ops.report`): run tables, the
regression section, one section per capture, and the page around them.

Inputs: run summaries, manifests and a capture's results folder (already located by the caller),
plus plotly figures and thumbnails from :mod:`capture3d.ops.report_figures`. Outputs: HTML
strings. Every text that comes from a file goes through :func:`esc` (``html.escape``); images are
base64 data URIs, and plotly.js is one file beside the report (:func:`write_plotly_asset`, shared
by every report in the folder), so the page makes no network requests.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capture3d.catalog import batch_kinds, pipeline, summary_keys
from capture3d.ops import report_figures as figs

if TYPE_CHECKING:
    from capture3d.ops.report import MetricDiff, Regression

logger = logging.getLogger(__name__)

# The run table's columns: the catalog's summary keys, then the capture's wall time.
SUMMARY_KEYS = (*summary_keys(), "seconds")
# The steps (= results sub-folders) of each capture kind, from the catalog.
KIND_STAGES = {kind: tuple(s.name for s in pipeline(kind).capture_steps) for kind in batch_kinds()}
MAX_OVERLAYS = 24
CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f0f0f0}.num{text-align:right;font-variant-numeric:tabular-nums}
.ok,.current{color:#1a7f37}.partial{color:#b26a00;font-weight:bold}.failed,.refused,.busy{color:#c62828;font-weight:bold}
#regressions.bad{border:3px solid #c62828;background:#fdecea;padding:8px 16px}
#regressions.good{border:2px solid #1a7f37;background:#eaf7ee;padding:8px 16px}
section.capture{border-top:2px solid #888;margin-top:28px}figure{display:inline-block;margin:4px}
figcaption{font-size:12px;max-width:256px}.wide{overflow-x:auto}.note{color:#777;font-style:italic}
.metrics{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:2px 16px;font-size:13px}
.metrics b{font-weight:normal;color:#555}"""


class Page:
    """Turns figures and images into HTML, counting them."""

    def __init__(self) -> None:
        self.figures = 0
        self.images = 0

    def figure(self, fig: Any) -> str:
        """The figure's ``<div>`` and script (plotly.js itself is in the page head); "" for None."""
        if fig is None:
            return ""
        self.figures += 1
        return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})

    def thumbnail(self, path: Path, caption: str) -> str:
        """A ``<figure>`` with the image downscaled and embedded, or a note when it is unreadable."""
        uri = figs.thumbnail_uri(path)
        if uri is None:
            return f'<p class="note">unreadable image {esc(path.name)}</p>'
        self.images += 1
        return f'<figure><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'

    @staticmethod
    def document(title: str, body: Sequence[str], plotly_src: str) -> str:
        """The whole page: head with the CSS and the ``<script>`` loading plotly.js from the relative
        path ``plotly_src`` (see :func:`write_plotly_asset`), then ``body``."""
        return (
            f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{esc(title)}</title><style>{CSS}</style>'
            f'<script type="text/javascript" src="{esc(plotly_src)}"></script></head><body>\n'
            + "\n".join(body)
            + "\n</body></html>\n"
        )


def write_plotly_asset(folder: Path) -> str:
    """Write plotly.js (``plotly-<version>.min.js``, about 4.7 MB) into ``folder`` unless it is
    there already, and return its file name: every report in a folder (a work area's ``runs/``)
    shares one copy instead of inlining it. Written atomically; the report loads it by relative
    path, so the folder stays viewable offline and can be moved as a whole."""
    import plotly
    from plotly.offline import get_plotlyjs

    from capture3d.atomic import atomic_write_text

    name = f"plotly-{plotly.__version__}.min.js"
    path = Path(folder) / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, get_plotlyjs())
    return name


def esc(value: Any) -> str:
    """``html.escape`` of ``str(value)``, quotes included."""
    return html.escape(str(value), quote=True)


def anchor(name: str) -> str:
    """An element id for a capture name."""
    return "c-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return esc(value)


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{value * 100:+.1f} %"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 99) -> str:
    """A table of escaped cells; columns from ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    lines = []
    for row in rows:
        cells = "".join(f'<td class="{"num" if i >= numeric_from else ""}">{_fmt(v)}</td>' for i, v in enumerate(row))
        lines.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def kv_table(values: Mapping[str, Any]) -> str:
    """A two-column table of the entries that have a value."""
    return table(["", ""], [[k, v] for k, v in values.items() if v not in (None, "")])


def metrics_grid(values: Mapping[str, float]) -> str:
    """Name-value pairs in a compact grid."""
    cells = "".join(f"<span><b>{esc(k)}</b> {_fmt(v)}</span>" for k, v in values.items())
    return f'<div class="metrics">{cells}</div>' if cells else ""


def run_table(
    run: Mapping[str, Any], manifests: Mapping[str, Mapping[str, Any]], open_: bool, label: str = "run"
) -> str:
    """A run's rows (status, kind, reason, the summary metrics present) in a collapsible block."""
    rows = run["captures"]
    keys = [k for k in SUMMARY_KEYS if any(k in r for r in rows)]
    cells = []
    for r in rows:
        kind = r.get("kind") or (manifests.get(str(r["capture"])) or {}).get("kind", "")
        cells.append([r["capture"], str(r.get("status", "?")), kind, r.get("reason", ""), *[r.get(k) for k in keys]])
    text = table(["capture", "status", "kind", "reason", *keys], cells, numeric_from=4)
    text = re.sub(r'<td class="">(ok|partial|current|failed|refused|busy)</td>', r'<td class="\1">\1</td>', text)
    summary = f"{label} {esc(run['run_id'])} · finished {esc(run.get('finished', '?'))} · {len(rows)} captures"
    return (
        f'<details class="run"{" open" if open_ else ""}><summary>{summary}</summary>'
        f'<div class="wide">{text}</div></details>'
    )


def regression_section(
    regressions: Sequence[Regression],
    newly_failed: Sequence[str],
    diffs: Sequence[MetricDiff],
    base_id: str | None,
    thresholds: Mapping[str, float],
) -> str:
    """The highlighted regression section (red when anything regressed); ``base_id`` None: nothing compared."""
    if base_id is None:
        return (
            '<section id="regressions"><h2>Regressions</h2>'
            '<p class="note">no previous run given: nothing compared</p></section>'
        )
    bad = bool(regressions or newly_failed)
    parts = [
        f'<section id="regressions" class="{"bad" if bad else "good"}">',
        f"<h2>Regressions against {esc(base_id)}: {len(regressions)} metric(s), "
        f"{len(newly_failed)} newly failed capture(s)</h2>",
    ]
    if newly_failed:
        parts.append("<p>ok before, failed or refused now: " + ", ".join(esc(n) for n in newly_failed) + "</p>")
    if regressions:
        parts.append(
            table(
                ["capture", "metric", "better", "old", "new", "change", "relative", "threshold"],
                [
                    [r.capture, r.metric, r.better, r.old, r.new, r.change, _pct(r.relative_change), r.threshold]
                    for r in regressions
                ],
                numeric_from=3,
            )
        )
    elif not bad:
        parts.append("<p>no metric moved the bad way by more than its threshold</p>")
    changed = [d for d in diffs if d.change != 0]
    parts.append(
        f"<details><summary>all changed metrics ({len(changed)}, as dvc metrics diff)</summary>"
        + table(
            ["capture", "metric", "old", "new", "change", "relative"],
            [[d.capture, d.metric, d.old, d.new, d.change, _pct(d.relative_change)] for d in changed],
            numeric_from=2,
        )
        + "</details>"
    )
    parts.append(
        "<details><summary>thresholds</summary>"
        + table(["metric or pattern", "threshold"], [[k, float(v)] for k, v in thresholds.items()], 1)
        + "</details>"
    )
    return "".join(parts) + "</section>"


def capture_section(
    page: Page, name: str, row: Mapping[str, Any] | None, manifest: Mapping[str, Any] | None, folder: Path | None
) -> str:
    """One capture: status, reason, provenance, and a part per stage output found in ``folder``."""
    row, manifest = row or {}, manifest or {}
    stages = {p.name for p in folder.iterdir() if p.is_dir()} if folder else set()
    kind = (
        row.get("kind")
        or manifest.get("kind")
        or next((k for k, names in KIND_STAGES.items() if stages & set(names)), "")
    )
    status = row.get("status", manifest.get("status", "?"))
    parts = [
        f'<section class="capture" id="{anchor(name)}"><h3>{esc(name)} <small>{esc(kind)} · '
        f'<span class="{esc(status)}">{esc(status)}</span></small></h3>'
    ]
    if row.get("reason"):
        parts.append(f"<p><b>reason:</b> {esc(row['reason'])}</p>")
    if manifest:
        parts.append(_provenance(manifest))
    if folder is None:
        return "".join(parts) + '<p class="note">no results folder</p></section>'
    missing = [s for s in KIND_STAGES.get(kind, ()) if s not in stages]
    if missing:
        parts.append(f'<p class="note">no output of: {esc(", ".join(missing))}</p>')
    if "sfm" in stages:
        parts.append(_sfm_part(page, name, folder))
    if stages & {"register_scans", "evaluate_registration"}:
        parts.append(_registration_part(page, name, folder))
    if stages & {"fit_gaussians", "fit_nerf"}:
        parts.append(_nvs_part(page, name, folder, sorted(stages & {"fit_gaussians", "fit_nerf"})))
    if "fit_bodies" in stages:
        overlays = sorted((folder / "fit_bodies" / "overlays").glob("*.png"))
        thumbs = "".join(page.thumbnail(p, p.stem) for p in overlays[:MAX_OVERLAYS])
        more = len(overlays) - MAX_OVERLAYS
        metrics = {
            **(figs.read_json(folder / "fit_bodies" / "metrics.json") or {}),
            **(figs.read_json(folder / "evaluate_bodies" / "metrics.json") or {}),
        }
        parts.append(
            '<div class="overlays"><h4>Body fit overlays</h4>'
            + (thumbs or '<p class="note">no overlays</p>')
            + (f'<p class="note">{more} more not shown</p>' if more > 0 else "")
            + metrics_grid(figs.numeric_metrics(metrics))
            + "</div>"
        )
    curves = [
        c
        for p in figs.find_curves(folder)
        if (c := page.figure(figs.curve_figure(p, title=esc(f"{name}: {p.relative_to(folder)}"))))
    ]
    if curves:
        parts.append('<div class="curves"><h4>Loss curves</h4>' + "".join(curves) + "</div>")
    return "".join(parts) + "</section>"


def _sfm_part(page: Page, name: str, folder: Path) -> str:
    metrics = {
        **(figs.read_json(folder / "sfm" / "metrics.json") or {}),
        **(figs.read_json(folder / "evaluate_sfm" / "metrics.json") or {}),
    }
    fig = page.figure(figs.sfm_figure(folder / "sfm", title=f"SfM cameras and sparse points: {esc(name)}"))
    return (
        '<div class="sfm-view"><h4>SfM cameras and sparse points</h4>'
        + (fig or '<p class="note">no cameras or points readable</p>')
        + metrics_grid(figs.numeric_metrics(metrics))
        + "</div>"
    )


def _registration_part(page: Page, name: str, folder: Path) -> str:
    metrics = figs.read_json(folder / "evaluate_registration" / "metrics.json") or {}
    reg = figs.read_json(folder / "register_scans" / "metrics.json") or {}
    fig = page.figure(figs.registration_figure(metrics, title=f"Registration errors: {esc(name)}"))
    unplaced = {**(reg.get("unplaced") or {}), **(metrics.get("unplaced") or {})}
    return (
        '<div class="registration"><h4>Registration error per scan</h4>'
        + (fig or '<p class="note">no evaluate_registration per-scan errors</p>')
        + metrics_grid(figs.numeric_metrics({**reg, **metrics}))
        + (table(["unplaced scan", "reason"], [[k, v] for k, v in unplaced.items()]) if unplaced else "")
        + "</div>"
    )


def _nvs_part(page: Page, name: str, folder: Path, stages: Sequence[str]) -> str:
    fits = {s: m for s in stages if (m := figs.read_json(folder / s / "metrics.json"))}
    parts = [
        '<div class="nvs"><h4>Held-out PSNR per view</h4>',
        page.figure(figs.psnr_figure(fits, title=f"Held-out PSNR: {esc(name)}"))
        or '<p class="note">no held-out scores</p>',
    ]
    for stage in stages:
        rows = [r for r in (fits.get(stage) or {}).get("per_view") or [] if isinstance(r, dict)]
        by_stem = {Path(str(r.get("view"))).stem: r for r in rows}
        thumbs = []
        for path in sorted((folder / stage / "heldout").glob("*.png")):
            r = by_stem.get(path.stem, {})
            score = f" {r['psnr']:.2f} dB" if figs.is_number(r.get("psnr")) else ""
            thumbs.append(page.thumbnail(path, f"{stage} {r.get('view', path.stem)} (render | photo){score}"))
        parts.append(f"<h5>{esc(stage)}</h5>" + ("".join(thumbs) or '<p class="note">no held-out renders</p>'))
    return "".join(parts) + "</div>"


def _provenance(manifest: Mapping[str, Any]) -> str:
    source, dvc = manifest.get("source") or {}, manifest.get("dvc") or {}
    outputs = ", ".join(
        f"{o.get('path')} ({str(o.get('md5', ''))[:12]})" for o in dvc.get("outputs") or [] if isinstance(o, dict)
    )
    stages = ", ".join(
        f"{s.get('name')} {_fmt(s.get('seconds'))} s{' (reused)' if s.get('reused') else ''}"
        for s in manifest.get("stages") or []
        if isinstance(s, dict)
    )
    return (
        "<details><summary>provenance</summary>"
        + kv_table(
            {
                "code version": manifest.get("code_version"),
                "params hash": (manifest.get("params") or {}).get("hash"),
                "source": source.get("url"),
                "input hash": source.get("input_hash"),
                "files": source.get("files"),
                "bytes": source.get("bytes"),
                "dvc remote": dvc.get("remote"),
                "dvc outputs": outputs,
                "stages": stages,
                "started": manifest.get("started"),
                "finished": manifest.get("finished"),
            }
        )
        + "</details>"
    )
