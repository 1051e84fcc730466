"""Helpers shared by the sections of ``bench_scale.py``: one measurement in a child process, and the
growth exponent of a cost against the size.

Inputs: a section script and a JSON-able spec (the script's ``--child SPEC`` mode prints one JSON
line); sizes and costs. Outputs: the child's row (or the spec with ``failed`` and the last error
line), and the least-squares slope of log(cost) against log(size).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np


def run_child(script: str, spec: dict) -> dict:
    """``python SCRIPT --child SPEC`` in a fresh process; its last stdout line, parsed."""
    out = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {**spec, "failed": f"exit {out.returncode}: {tail}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def slope(sizes: list[float], costs: list[float]) -> float:
    """Growth exponent: slope of log(cost) against log(size) (nan with fewer than two sizes)."""
    return float(np.polyfit(np.log(sizes), np.log(costs), 1)[0]) if len(sizes) > 1 else float("nan")
