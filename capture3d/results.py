"""Every metric of a batch work area or a project, as one tidy pandas DataFrame.

Inputs: a path, one of

- a batch work area (``capture3d batch --work W``: ``runs/*.json``, ``manifests/``, ``results/``);
- a folder run's results root (``capture3d reconstruct --out OUT``: its work area is ``OUT/.capture3d``);
- a project (``params.yaml`` and ``results/<capture>/<step>/metrics.json``, written by ``dvc repro``
  or the flows; a folder run's work area ``results/.capture3d`` adds its run history).

Output: a DataFrame with one row per (capture, stage, metric, run) and the columns of
:data:`COLUMNS`. Runs contribute their summary metrics (the catalog's summary keys, under their
summary names, e.g. ``gaussians_psnr``; the step that produces a key is its ``stage``). The
latest results of each capture (a work area's manifest run, or ``run == "workspace"`` for the files
in a project's ``results/``) contribute every other finite number of the steps' ``metrics.json``,
nested mappings dotted (``features.fpfh.inlier_ratio``); lists, strings and booleans are left out.
``status`` is the capture's status in that run (ok, partial; ``workspace`` rows: the status the
step wrote, else ok). Nothing is written; unreadable files are skipped with a warning.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from capture3d.atomic import atomic_file, atomic_write_text
from capture3d.catalog import Step, batch_kinds, pipeline
from capture3d.config import load_params
from capture3d.errors import Capture3dError
from capture3d.ops.manifest import FINISHED, code_version, params_hash

logger = logging.getLogger(__name__)

COLUMNS = ("capture", "kind", "stage", "metric", "value", "run", "finished", "status", "params_hash", "code_version")
"""The DataFrame's columns, in order."""
WORKSPACE = "workspace"
"""The ``run`` of a project's results (what ``dvc metrics show`` calls the workspace)."""
FORMATS = ("table", "csv", "parquet")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("results: %s unreadable (%s); left out", path, exc)
        return None
    return data if isinstance(data, dict) else None


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """The finite numbers of ``metrics``, nested mappings as dotted keys."""
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            yield from flatten(value, f"{prefix}{key}.")
        elif _is_number(value):
            yield f"{prefix}{key}", float(value)


def summary_stage(kind: str, key: str) -> str:
    """The step of ``kind`` whose summary key ``key`` is (the last one, as the flows merge the steps'
    summaries in order), or "" (``seconds``, ``fetched``: the capture as a whole)."""
    if kind not in batch_kinds() and kind != "fcgf":
        return ""
    found = ""
    for step in pipeline(kind).capture_steps:
        if any(fnmatch.fnmatchcase(key, name) for name in step.summary.values()):
            found = step.name
    return found


def _summarize(step: Step, metrics: Mapping[str, Any]) -> dict[str, Any]:
    from capture3d.ops.steps import summarize

    return summarize(step, metrics)


def step_rows(step: Step, metrics: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(metric, value) of one step's ``metrics.json``: its summary keys under their summary names,
    then every other number under its own (dotted) name."""
    summary = [(k, float(v)) for k, v in _summarize(step, metrics).items() if _is_number(v)]
    rest = [(k, v) for k, v in flatten(metrics) if not any(fnmatch.fnmatchcase(k, s) for s in step.summary)]
    return summary + rest


def _row(capture: str, kind: str, stage: str, metric: str, value: float, **meta: Any) -> dict[str, Any]:
    return {
        "capture": capture,
        "kind": kind,
        "stage": stage,
        "metric": metric,
        "value": value,
        "run": meta.get("run", ""),
        "finished": meta.get("finished", ""),
        "status": meta.get("status", ""),
        "params_hash": meta.get("params_hash", ""),
        "code_version": meta.get("code_version", ""),
    }


def frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """A DataFrame with :data:`COLUMNS` from row dicts (typed even when empty)."""
    df = pd.DataFrame(list(rows), columns=list(COLUMNS))
    df["value"] = df["value"].astype(float)
    return df


def run_rows(run: Mapping[str, Any], manifests: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict]:
    """The rows of one ``runs/<run id>.json`` summary: the finished captures' numbers."""
    manifests = manifests or {}
    out = []
    for row in run.get("captures", []):
        if not isinstance(row, Mapping) or row.get("status") not in FINISHED:
            continue
        name = str(row.get("capture"))
        manifest = manifests.get(name) or {}
        kind = str(row.get("kind") or manifest.get("kind") or "")
        digest = (run.get("params_hashes") or {}).get(name) or (
            (manifest.get("params") or {}).get("hash", "") if manifest.get("run_id") == run.get("run_id") else ""
        )
        meta = {
            "run": str(run.get("run_id", "")),
            "finished": str(run.get("finished", "")),
            "status": str(row.get("status")),
            "params_hash": str(digest),
            "code_version": str(run.get("code_version", "")),
        }
        for key, value in row.items():
            if _is_number(value):
                out.append(_row(name, kind, summary_stage(kind, key), key, float(value), **meta))
    return out


def _results_rows(capture: str, kind: str, folder: Path, meta: Mapping[str, Any]) -> list[dict]:
    """Rows from ``folder/<step>/metrics.json`` of each step of ``kind``."""
    out = []
    for step in pipeline(kind).capture_steps:
        metrics = _read(folder / step.name / step.metrics) if step.metrics else None
        if metrics is None:
            continue
        written = datetime.fromtimestamp((folder / step.name / step.metrics).stat().st_mtime, UTC)
        meta = {**meta, "finished": meta.get("finished") or written.isoformat(timespec="milliseconds")}
        for metric, value in step_rows(step, metrics):
            status = meta.get("status") or ("partial" if metrics.get("partial") else "ok")
            out.append(_row(capture, kind, step.name, metric, value, **{**meta, "status": status}))
    return out


def load_work_area(work: Path, results_root: Path | None = None) -> pd.DataFrame:
    """Every run of the work area ``work`` (see the module docstring); ``results_root``: where the
    captures' results are when not in ``work/results`` (a folder run)."""
    work = Path(work)
    results_root = Path(results_root) if results_root is not None else work / "results"
    manifests = {p.stem: m for p in sorted((work / "manifests").glob("*.json")) if (m := _read(p)) is not None}
    rows: list[dict] = []
    for path in sorted((work / "runs").glob("*.json")):
        run = _read(path)
        if run is not None and isinstance(run.get("captures"), list):
            run.setdefault("run_id", path.stem)
            rows += run_rows(run, manifests)
    for name, manifest in manifests.items():
        kind = str(manifest.get("kind", ""))
        if kind not in batch_kinds() or manifest.get("status") not in FINISHED:
            continue
        meta = {
            "run": str(manifest.get("run_id", "")),
            "finished": str(manifest.get("finished", "")),
            "status": str(manifest.get("status")),
            "params_hash": str((manifest.get("params") or {}).get("hash", "")),
            "code_version": str(manifest.get("code_version", "")),
        }
        seen = {(r["capture"], r["run"], r["metric"]) for r in rows}  # the run's row holds the summary
        rows += [
            r for r in _results_rows(name, kind, results_root / name, meta) if (name, r["run"], r["metric"]) not in seen
        ]
    return frame(rows)


def load_project(root: Path) -> pd.DataFrame:
    """A project's ``results/`` (run ``workspace``, params hash from its ``params.yaml``, the
    installed code's version) and the run history of a folder-run work area in ``results/.capture3d``."""
    root = Path(root)
    results = root / "results"
    params = load_params(root / "params.yaml") if (root / "params.yaml").is_file() else {}
    code = code_version()
    rows: list[dict] = []
    for folder in sorted(p for p in results.glob("*") if p.is_dir() and not p.name.startswith(".")):
        for kind in batch_kinds():
            spec = pipeline(kind)
            if not any((folder / s.name).is_dir() for s in spec.capture_steps):
                continue
            meta = {"run": WORKSPACE, "params_hash": params_hash(params, spec.sections), "code_version": code}
            rows += _results_rows(folder.name, kind, folder, meta)
    history = results / ".capture3d"
    df = frame(rows)
    if (history / "runs").is_dir():
        past = load_work_area(history, results)
        df = pd.concat([past[past["run"] != ""], df], ignore_index=True) if len(past) else df
    return df


def load(path: Path | str) -> pd.DataFrame:
    """The tidy DataFrame of a work area, a folder run's results root or a project (module
    docstring); :class:`Capture3dError` when ``path`` is none of them."""
    path = Path(path)
    if (path / "runs").is_dir() or (path / "manifests").is_dir():
        return load_work_area(path)
    if (path / ".capture3d" / "runs").is_dir():
        return load_work_area(path / ".capture3d", path)
    if (path / "results").is_dir() or (path / "params.yaml").is_file():
        return load_project(path)
    raise Capture3dError(
        f"results: '{path}' is not a work area (runs/), a folder run's results (.capture3d/) nor a project (results/)"
    )


def by_capture(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """capture -> {metric: value} (the last row of each pair wins): the shape the regression check compares."""
    out: dict[str, dict[str, float]] = {}
    for capture, metric, value in df[["capture", "metric", "value"]].itertuples(index=False):
        out.setdefault(str(capture), {})[str(metric)] = float(value)
    return out


def write(df: pd.DataFrame, fmt: str, out: Path | None) -> str:
    """``csv`` or ``parquet`` to ``out`` (csv: the text returned when ``out`` is None), or ``table``:
    the text of an aligned table. Parquet needs pyarrow (``pip install pyarrow``)."""
    if fmt not in FORMATS:
        raise Capture3dError(f"results: unknown format {fmt!r} (expected {' | '.join(FORMATS)})")
    if fmt == "parquet":
        if out is None:
            raise Capture3dError("results: --format parquet needs --out FILE")
        try:
            import pyarrow as pa  # noqa: F401
        except ImportError:
            raise Capture3dError("results: parquet needs pyarrow (pip install pyarrow); use --format csv") from None
        with atomic_file(Path(out)) as tmp:
            df.to_parquet(tmp, index=False)
        return ""
    if fmt == "csv":
        text = df.to_csv(index=False)
    else:
        shown = df.drop(columns=["params_hash", "code_version", "finished"])
        text = shown.to_string(index=False, float_format=lambda v: f"{v:.6g}") + "\n" if len(df) else "no results\n"
    if out is not None:
        atomic_write_text(Path(out), text)
        return ""
    return text
