"""Readers and plotly figures for the HTML quality report (:mod:`capture3d.ops.report`).

Inputs: one stage's output folder or file at a time, in the layout the stages write:

* ``sfm/``: ``sparse/0/`` (COLMAP model; ``transforms.json`` when it is missing) and ``points.ply``;
* ``evaluate_registration/metrics.json``: ``per_scan`` ``{scan: {rotation_error_deg, translation_error}}``
  and ``thresholds`` ``{ape_rotation_deg, ape_translation}``;
* ``fit_gaussians/`` / ``fit_nerf/``: ``metrics.json`` ``per_view`` ``[{view, psnr, ssim}]`` and
  ``heldout/<view stem>.png`` (render | photo);
* ``train_log.csv`` / ``fit_log.csv``: a curve with an ``iteration`` column (``stage`` in body fits).

Outputs: ``plotly.graph_objects.Figure`` objects (or None when there is nothing to draw) and
base64 PNG data URIs of downscaled images. Nothing here raises on a missing or unreadable file:
callers get None and the reason is logged.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

logger = logging.getLogger(__name__)

THUMBNAIL_PX = 256  # longest side of an embedded image
MAX_POINTS = 3000  # sparse points drawn per SfM view
_PLY_TYPES = {
    "char": "i1",
    "uchar": "u1",
    "int8": "i1",
    "uint8": "u1",
    "short": "i2",
    "ushort": "u2",
    "int16": "i2",
    "uint16": "u2",
    "int": "i4",
    "uint": "u4",
    "int32": "i4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=40), height=380)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None (logged) when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("report: cannot read %s (%s)", path, exc)
        return None
    return data if isinstance(data, dict) else None


def thumbnail_uri(path: Path, max_px: int = THUMBNAIL_PX) -> str | None:
    """``data:image/png;base64,...`` of the image downscaled to at most ``max_px``, or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((max_px, max_px))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except (OSError, ValueError) as exc:
        logger.warning("report: cannot read image %s (%s)", path, exc)
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def read_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Vertices (N, 3) float64 and colours (N, 3) uint8 or None of an ascii or binary PLY."""
    with open(path, "rb") as fh:
        header = []
        while True:
            line = fh.readline()
            if not line:
                raise ValueError("PLY header has no end_header")
            text = line.decode("ascii", "replace").strip()
            header.append(text)
            if text == "end_header":
                break
        body = fh.read()
    fmt, count, props, in_vertex = "", 0, [], False
    for text in header:
        words = text.split()
        if words[:1] == ["format"]:
            fmt = words[1]
        elif words[:1] == ["element"]:
            in_vertex = words[1] == "vertex"
            if in_vertex:
                count = int(words[2])
        elif words[:1] == ["property"] and in_vertex:
            if words[1] == "list":
                raise ValueError("list properties in the vertex element are not supported")
            props.append((words[2], _PLY_TYPES[words[1]]))
    if fmt == "ascii":
        table = np.loadtxt(io.StringIO(body.decode("ascii")), ndmin=2, max_rows=count)
        columns = {name: table[:, i] for i, (name, _) in enumerate(props)}
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(name, order + code) for name, code in props])
        data = np.frombuffer(body, dtype=dtype, count=count)
        columns = {name: data[name] for name, _ in props}
    xyz = np.stack([columns["x"], columns["y"], columns["z"]], axis=1).astype(np.float64)
    rgb = None
    if all(c in columns for c in ("red", "green", "blue")):
        rgb = np.stack([columns["red"], columns["green"], columns["blue"]], axis=1).astype(np.uint8)
    return xyz, rgb


def _sfm_cameras(sfm: Path) -> list[Any]:
    """Registered cameras (:class:`~capture3d.tasks.cameras.PinholeCamera`) of model 0, else transforms.json."""
    model = sfm / "sparse" / "0"
    try:
        if (model / "cameras.bin").is_file() or (model / "cameras.txt").is_file():
            from capture3d.tasks.cameras import read_colmap_cameras

            return list(read_colmap_cameras(model).values())
        if (sfm / "transforms.json").is_file():
            from capture3d.tasks.cameras import read_transforms_json

            return read_transforms_json(sfm / "transforms.json")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        logger.warning("report: cannot read the cameras of %s (%s)", sfm, exc)
    return []


def sfm_figure(sfm: Path, max_points: int = MAX_POINTS, title: str = "") -> go.Figure | None:
    """3D view of the SfM cameras (frusta) and sparse points (at most ``max_points``, random subset)."""
    cams = _sfm_cameras(sfm)
    xyz, rgb = np.zeros((0, 3)), None
    if (sfm / "points.ply").is_file():
        try:
            xyz, rgb = read_ply_points(sfm / "points.ply")
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("report: cannot read %s (%s)", sfm / "points.ply", exc)
    if not cams and len(xyz) == 0:
        return None
    fig = go.Figure()
    if len(xyz):
        keep = (
            np.sort(np.random.default_rng(0).choice(len(xyz), max_points, replace=False))
            if len(xyz) > max_points
            else np.arange(len(xyz))
        )
        colors = [f"rgb({r},{g},{b})" for r, g, b in rgb[keep]] if rgb is not None else "#555"
        fig.add_trace(
            go.Scatter3d(
                x=xyz[keep, 0],
                y=xyz[keep, 1],
                z=xyz[keep, 2],
                mode="markers",
                marker=dict(size=1.5, color=colors),
                name=f"points ({len(keep)} of {len(xyz)})",
                hoverinfo="skip",
            )
        )
    if cams:
        centres = np.array([c.center for c in cams])  # (C, 3)
        spread = np.linalg.norm(centres - centres.mean(0), axis=1)
        scene = float(np.median(spread)) if len(cams) > 1 and np.median(spread) > 0 else 1.0
        depth = 0.15 * scene
        lines: list[list[float]] = [[], [], []]
        for cam in cams:
            corners = np.array([[0, 0, 1], [cam.width, 0, 1], [cam.width, cam.height, 1], [0, cam.height, 1]], float)
            rays = (np.linalg.inv(cam.K) @ corners.T).T * depth  # (4, 3) camera axes
            world = (cam.R.T @ (rays - cam.t).T).T  # (4, 3)
            c = cam.center
            for a, b in (
                (c, world[0]),
                (c, world[1]),
                (c, world[2]),
                (c, world[3]),
                (world[0], world[1]),
                (world[1], world[2]),
                (world[2], world[3]),
                (world[3], world[0]),
            ):
                for k in range(3):
                    lines[k] += [a[k], b[k], None]
        fig.add_trace(
            go.Scatter3d(
                x=lines[0],
                y=lines[1],
                z=lines[2],
                mode="lines",
                line=dict(color="#d62728", width=2),
                name=f"cameras ({len(cams)})",
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter3d(
                x=centres[:, 0],
                y=centres[:, 1],
                z=centres[:, 2],
                mode="markers",
                marker=dict(size=3, color="#d62728"),
                text=[c.name for c in cams],
                hoverinfo="text",
                showlegend=False,
            )
        )
    fig.update_layout(
        **{**_LAYOUT, "height": 520},
        title=title,
        scene=dict(aspectmode="data", xaxis_title="x", yaxis_title="y", zaxis_title="z"),
        legend=dict(x=0, y=1),
    )
    return fig


def registration_figure(metrics: Mapping[str, Any], title: str = "") -> go.Figure | None:
    """Histograms of the per-scan rotation (deg) and translation errors, with the tolerance lines."""
    per_scan = metrics.get("per_scan")
    errors = [e for e in per_scan.values() if isinstance(e, dict)] if isinstance(per_scan, dict) else []
    rot = [float(e["rotation_error_deg"]) for e in errors if is_number(e.get("rotation_error_deg"))]
    trans = [float(e["translation_error"]) for e in errors if is_number(e.get("translation_error"))]
    if not rot and not trans:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("rotation error per scan (deg)", "translation error per scan"))
    fig.add_trace(go.Histogram(x=rot, nbinsx=20, name="rotation", marker_color="#1f77b4"), row=1, col=1)
    fig.add_trace(go.Histogram(x=trans, nbinsx=20, name="translation", marker_color="#ff7f0e"), row=1, col=2)
    limits = metrics.get("thresholds") if isinstance(metrics.get("thresholds"), dict) else {}
    for col, key in ((1, "ape_rotation_deg"), (2, "ape_translation")):
        if is_number(limits.get(key)):
            fig.add_vline(
                x=float(limits[key]),
                line_dash="dash",
                line_color="#d62728",
                row=1,
                col=col,
                annotation_text="tolerance",
            )
    fig.update_layout(**_LAYOUT, title=title, showlegend=False, bargap=0.05)
    fig.update_yaxes(dtick=1)
    fig.update_yaxes(title_text="scans", row=1, col=1)
    return fig


def psnr_figure(fits: Mapping[str, Mapping[str, Any]], title: str = "") -> go.Figure | None:
    """Grouped bars of held-out PSNR per view, one group per fit (``{stage name: metrics.json}``)."""
    fig = go.Figure()
    for stage, metrics in fits.items():
        rows = [r for r in metrics.get("per_view") or [] if isinstance(r, dict) and is_number(r.get("psnr"))]
        if rows:
            fig.add_trace(
                go.Bar(
                    x=[str(r.get("view", i)) for i, r in enumerate(rows)],
                    y=[float(r["psnr"]) for r in rows],
                    name=stage,
                    text=[f"{float(r['psnr']):.2f}" for r in rows],
                    textposition="outside",
                )
            )
    if not fig.data:
        return None
    fig.update_layout(
        **_LAYOUT,
        title=title,
        barmode="group",
        yaxis_title="PSNR (dB)",
        xaxis_title="held-out view",
        xaxis_type="category",
    )
    return fig


def read_curve(path: Path) -> dict[str, list[float]]:
    """The numeric columns of a curve CSV (``write_curve``'s format); empty when unreadable."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        logger.warning("report: cannot read %s (%s)", path, exc)
        return {}
    columns: dict[str, list[float]] = {}
    for name in rows[0].keys() if rows else ():
        try:
            columns[name] = [float(r[name]) for r in rows]
        except (TypeError, ValueError):
            continue
    return columns


def curve_figure(path: Path, title: str = "") -> go.Figure | None:
    """Line chart of a loss curve: loss terms (log scale), PSNR on a second axis, stage boundaries."""
    columns = read_curve(path)
    x = columns.get("iteration")
    if not x or "loss" not in columns:
        return None
    skip = {"iteration", "stage", "seconds", "psnr"}
    terms = [c for c in columns if c not in skip and not c.startswith("num_")]
    terms.sort(key=lambda c: c != "loss")
    fig = make_subplots(specs=[[{"secondary_y": "psnr" in columns}]])
    positive = all(v > 0 for c in terms for v in columns[c])
    for name in terms:
        fig.add_trace(go.Scatter(x=x, y=columns[name], mode="lines", name=name), secondary_y=False)
    if "psnr" in columns:
        fig.add_trace(
            go.Scatter(x=x, y=columns["psnr"], mode="lines", name="training PSNR (dB)", line=dict(dash="dot")),
            secondary_y=True,
        )
    stages = columns.get("stage")
    if stages:
        for i in range(1, len(stages)):
            if stages[i] != stages[i - 1]:
                fig.add_vline(x=x[i], line_dash="dot", line_color="#999")
    fig.update_layout(**_LAYOUT, title=title, xaxis_title="iteration")
    fig.update_yaxes(title_text="loss", type="log" if positive else "linear", secondary_y=False)
    return fig


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among ``values``' top-level entries (nested lists and dicts left out)."""
    return {str(k): float(v) for k, v in values.items() if is_number(v)} if isinstance(values, Mapping) else {}


def find_curves(folder: Path, names: Sequence[str] = ("train_log.csv", "fit_log.csv")) -> list[Path]:
    """Every curve CSV under ``folder`` (sorted; unfinished ``*.tmp-*`` folders skipped)."""
    found = [p for name in names for p in Path(folder).rglob(name)]
    return sorted(p for p in found if not any(".tmp-" in part for part in p.relative_to(folder).parts))
