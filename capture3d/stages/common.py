"""What every stage module shares: capture inputs, ``--params`` / ``--set``, logging set-up, the
one-line error exit, and writing JSON and curves.

A stage module exports ``Inputs`` (a frozen dataclass of its input paths, each field documented by
an attribute docstring), ``load_config(params)``, ``run(inputs, out, config) -> out`` and a
one-line ``main(argv)`` calling :func:`capture3d.stage_cli.stage_main`, which generates its command
line (``--params FILE``, repeated ``--set SECTION.KEY=VALUE`` as in ``dvc exp run -S``, one flag
per input and per params field) and turns a :class:`Capture3dError` into one line on stderr and a
non-zero exit code.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture3d.errors import Capture3dError, CaptureError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptureInputs:
    """A capture folder and the name used in messages (default: the folder name)."""

    capture: Path
    """capture folder"""
    name: str = ""
    """capture name for messages (default: the folder name)"""

    @property
    def label(self) -> str:
        return self.name or self.capture.name

    def data_dir(self, sub: str) -> Path:
        """``<capture>/<sub>`` when it exists, else the capture folder itself."""
        inner = self.capture / sub
        return inner if inner.is_dir() else self.capture


@dataclass(frozen=True)
class NoInputs:
    """A stage that reads no input files: everything comes from its params section."""


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--params`` and ``--set`` to a stage's argument parser."""
    parser.add_argument("--params", type=Path, default=None, help="params file (default: ./params.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting for this run (repeatable), as in `dvc exp run -S`",
    )


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr at INFO (DEBUG with ``verbose``), once per process."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import pycolmap  # COLMAP's glog lines: warnings and errors only unless verbose

    pycolmap.logging.minloglevel = 0 if verbose else 1


def error_line(exc: Capture3dError, capture: str = "") -> str:
    """The one-line message of ``exc``, naming ``capture`` when the error itself does not."""
    if capture and not isinstance(exc, CaptureError):
        return f"capture '{capture}': {exc}"
    return str(exc)


def state_path_for(out: Path, kind: str) -> Path:
    """Where an interrupted run of a stage writing ``out`` keeps its resume state: beside ``out``
    (``<parent>/.<out name>.<kind>-state.pt``), so ``out`` itself only appears once, atomically."""
    return Path(out).parent / f".{Path(out).name}.{kind}-state.pt"


def write_curve(path: Path, rows: Sequence[dict[str, float]]) -> None:
    """CSV of a training curve for ``dvc plots``: one row per dict, ``iteration`` as an integer."""
    with Path(path).open("w", newline="") as fh:
        if not rows:
            return
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (int(v) if k == "iteration" else f"{v:.6g}") for k, v in row.items()})


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Pretty JSON with a trailing newline (numpy scalars converted)."""
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
