"""Per-kind stage sequences for the inbox batch: the same Prefect task functions the batch flows
submit, called in order for one capture (``Task.fn``: no nested task runs).

Inputs: a capture name, its folder, its output folder, the params and the metrics of the steps
before. Output: each step's summary metrics. ``sections`` names the params sections a kind's
stages read (their hash is part of the work key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture3d.flows import fit_bodies as bodies
from capture3d.flows import reconstruct as photos
from capture3d.flows import register_scans as scans

logger = logging.getLogger(__name__)

StepFn = Callable[[str, Path, Path, dict[str, Any], dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Step:
    """One stage of a capture kind: writes ``<capture out>/<name>`` (when it writes anything)."""

    name: str
    run: StepFn
    section: str


def _sfm(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    photos.sfm_task.fn(name, capture, out / "sfm", params)
    return {}


def _evaluate_sfm(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    return photos.evaluate_task.fn(name, out / "sfm", capture, out / "evaluate_sfm", params)


def _fit_gaussians(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    return photos.fit_gaussians_task.fn(name, out / "sfm", out / "fit_gaussians", params)


def _fit_nerf(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    return photos.fit_nerf_task.fn(name, out / "sfm", out / "fit_nerf", params)


def _register(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    return scans.register_task.fn(name, capture, out / "register_scans", params)


def _evaluate_registration(name: str, capture: Path, out: Path, params: dict[str, Any],
                           previous: dict[str, Any]) -> dict[str, Any]:
    return scans.evaluate_task.fn(name, previous, out / "register_scans", capture, out / "evaluate_registration", params)


def _fit_bodies(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    return bodies.fit_task.fn(name, capture, out / "fit_bodies", params)


def _evaluate_bodies(name: str, capture: Path, out: Path, params: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    return bodies.evaluate_task.fn(name, previous, out / "fit_bodies", capture, out / "evaluate_bodies", params)


PIPELINES: dict[str, tuple[Step, ...]] = {
    "photos": (Step("sfm", _sfm, "sfm"), Step("evaluate_sfm", _evaluate_sfm, "evaluate_sfm"),
               Step("fit_gaussians", _fit_gaussians, "fit_gaussians"), Step("fit_nerf", _fit_nerf, "fit_nerf")),
    "scans": (Step("register_scans", _register, "register_scans"),
              Step("evaluate_registration", _evaluate_registration, "evaluate_registration")),
    "bodies": (Step("fit_bodies", _fit_bodies, "fit_bodies"), Step("evaluate_bodies", _evaluate_bodies, "evaluate_bodies")),
}


def sections(kind: str) -> tuple[str, ...]:
    """The params sections a capture kind's stages read."""
    return tuple(step.section for step in PIPELINES.get(kind, ()))
