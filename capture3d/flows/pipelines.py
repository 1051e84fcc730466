"""Per-kind stage sequences for the inbox batch: the same Prefect task functions the batch flows
submit, called in order for one capture (``Task.fn``: no nested task runs).

Inputs: a capture name, its folder, its output folder, the params and the metrics of the steps
before. Output: each step's summary metrics. ``sections`` names the params sections a kind's
stages read (their hash is part of the work key). Each step declares its device (``gpu``: uses
CUDA when the machine has it) and whether it is heavy; :func:`run_step` runs a heavy step in a
child process (``python -m capture3d.flows.pipelines``) so its memory is returned to the system
before the next capture. Each step imports its flow module on use, so such a child loads only the
stages of its own kind.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

StepFn = Callable[[str, Path, Path, dict[str, Any], dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Step:
    """One stage of a capture kind: writes ``<capture out>/<name>`` (when it writes anything)."""

    name: str
    run: StepFn
    section: str
    device: str = "cpu"      # "gpu": runs on CUDA when present (its work pool is the GPU one)
    heavy: bool = False      # large memory: run in a child process when isolating


def _sfm(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    from capture3d.flows import reconstruct as photos

    photos.sfm_task.fn(name, capture, out / "sfm", params)
    return {}


def _evaluate_sfm(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    from capture3d.flows import reconstruct as photos

    return photos.evaluate_task.fn(name, out / "sfm", capture, out / "evaluate_sfm", params)


def _fit_gaussians(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    from capture3d.flows import reconstruct as photos

    return photos.fit_gaussians_task.fn(name, out / "sfm", out / "fit_gaussians", params)


def _fit_nerf(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    from capture3d.flows import reconstruct as photos

    return photos.fit_nerf_task.fn(name, out / "sfm", out / "fit_nerf", params)


def _register(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    from capture3d.flows import register_scans as scans

    return scans.register_task.fn(name, capture, out / "register_scans", params)


def _evaluate_registration(name: str, capture: Path, out: Path, params: dict[str, Any],
                           previous: dict[str, Any]) -> dict[str, Any]:
    from capture3d.flows import register_scans as scans

    return scans.evaluate_task.fn(name, previous, out / "register_scans", capture, out / "evaluate_registration", params)


def _fit_bodies(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    from capture3d.flows import fit_bodies as bodies

    return bodies.fit_task.fn(name, capture, out / "fit_bodies", params)


def _evaluate_bodies(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    from capture3d.flows import fit_bodies as bodies

    return bodies.evaluate_task.fn(name, previous, out / "fit_bodies", capture, out / "evaluate_bodies", params)


PIPELINES: dict[str, tuple[Step, ...]] = {
    "photos": (Step("sfm", _sfm, "sfm", heavy=True), Step("evaluate_sfm", _evaluate_sfm, "evaluate_sfm"),
               Step("fit_gaussians", _fit_gaussians, "fit_gaussians", "gpu", True),
               Step("fit_nerf", _fit_nerf, "fit_nerf", "gpu", True)),
    "scans": (Step("register_scans", _register, "register_scans", heavy=True),
              Step("evaluate_registration", _evaluate_registration, "evaluate_registration")),
    "bodies": (Step("fit_bodies", _fit_bodies, "fit_bodies", "gpu", True),
               Step("evaluate_bodies", _evaluate_bodies, "evaluate_bodies")),
}


def sections(kind: str) -> tuple[str, ...]:
    """The params sections a capture kind's stages read."""
    return tuple(step.section for step in PIPELINES.get(kind, ()))


def device_of(kind: str) -> str:
    """``gpu`` when any stage of the kind uses the GPU, else ``cpu``: the work pool it belongs to."""
    return "gpu" if any(step.device == "gpu" for step in PIPELINES.get(kind, ())) else "cpu"


def run_step(kind: str, step: Step, name: str, capture: Path, out: Path, params: dict[str, Any],
             previous: dict[str, Any], isolate: bool) -> dict[str, Any]:
    """Run ``step``; a heavy one in a child Python process when ``isolate`` (its exit frees all
    the memory it took). The child's one-line error becomes this process's ``RuntimeError``."""
    if not (isolate and step.heavy):
        return step.run(name, capture, out, params, previous)
    with tempfile.TemporaryDirectory(prefix="capture3d-step-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"kind": kind, "step": step.name, "name": name, "capture": str(capture),
                                       "out": str(out), "params": params, "previous": previous}, default=str))
        proc = subprocess.run([sys.executable, "-m", "capture3d.flows.pipelines", str(request), str(result)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            raise RuntimeError(lines[-1].removeprefix("error: ") if lines else f"exit status {proc.returncode}")
        return json.loads(result.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    """Child-process entry of :func:`run_step`: ``python -m capture3d.flows.pipelines REQUEST RESULT``."""
    request_path, result_path = (argv if argv is not None else sys.argv[1:])[:2]
    request = json.loads(Path(request_path).read_text())
    step = next(s for s in PIPELINES[request["kind"]] if s.name == request["step"])
    try:
        metrics = step.run(request["name"], Path(request["capture"]), Path(request["out"]), request["params"],
                           request["previous"])
    except Exception as exc:  # noqa: BLE001 - one line to the parent
        sys.stderr.write(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        return 1
    Path(result_path).write_text(json.dumps(metrics, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
