"""DVC stage ``sfm``: one capture's photos -> COLMAP model, points, transforms.json, undistorted images.

Inputs: a capture folder (``images/`` inside it, or the photos directly; optional
``intrinsics.json`` = ``{"camera_model": ..., "params": [...]}``) and the ``sfm`` section of
params.yaml. Output folder (written atomically): ``sparse/0/``, ``points.ply``, ``transforms.json``,
``undistorted/``, ``metrics.json`` (health, the matcher and mapper used and the image pairs
matched, every ladder attempt with its reason, skipped files, timings). A capture that fails the
health gate after the whole ladder raises :class:`CaptureError`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture3d import stage_cli
from capture3d.atomic import atomic_dir
from capture3d.config import from_mapping, section
from capture3d.errors import CaptureError, ParamsError
from capture3d.stage_cli import Flag
from capture3d.stages.common import CaptureInputs, write_json
from capture3d.tasks.sfm.evaluate import reconstruction_stats
from capture3d.tasks.sfm.export import export_result
from capture3d.tasks.sfm.image_folder import scan_images
from capture3d.tasks.sfm.reconstruct import (
    LADDER_KEYS,
    KnownIntrinsics,
    SfmConfig,
    run_sfm,
)

logger = logging.getLogger(__name__)

MIN_IMAGES = 3


@dataclass(frozen=True)
class SfmInputs(CaptureInputs):
    """A photo capture: its images are in ``images/`` or directly in the folder."""

    capture: Path
    """capture folder: photos in ``images/`` or directly inside (optional ``intrinsics.json``)"""

    @property
    def image_dir(self) -> Path:
        return self.data_dir("images")


Inputs = SfmInputs
INPUT_ALIASES = {"images": "capture"}
"""legacy flag: ``capture3d sfm --images`` is ``--capture``"""
CLI_ALIASES = {
    "camera-params": Flag("camera_params", also=("intrinsics=known",)),
    "self-calibrate": Flag(
        "intrinsics",
        const="self_calibrate",
        help="ignore intrinsics.json and estimate the intrinsics (intrinsics: self_calibrate)",
    ),
}
"""legacy flags: ``--camera-params`` also sets ``intrinsics: known``; ``--self-calibrate``"""


def load_config(params: Mapping[str, Any]) -> SfmConfig:
    """The ``sfm`` section as :class:`SfmConfig`, with each fallback rung checked too."""
    config = section(params, "sfm", SfmConfig)
    for i, rung in enumerate(config.fallback):
        bad = sorted(str(k) for k in set(rung) - LADDER_KEYS)
        if bad:
            raise ParamsError(
                f"params: 'sfm.fallback[{i}]' may only set {', '.join(sorted(LADDER_KEYS))}; "
                f"got {', '.join(map(str, bad))}"
            )
        from_mapping(SfmConfig, {**dataclasses.asdict(config), **rung}, f"sfm.fallback[{i}]")
    return config


def resolve_intrinsics(inputs: SfmInputs, config: SfmConfig) -> KnownIntrinsics | None:
    """Known intrinsics from params (``camera_params``) or the capture's ``intrinsics.json``."""
    if config.intrinsics == "self_calibrate":
        return None
    if config.camera_params.strip():
        try:
            values = tuple(float(v) for v in config.camera_params.replace(",", " ").split())
        except ValueError:
            raise ParamsError(f"params: 'sfm.camera_params' must be numbers, got {config.camera_params!r}") from None
        return KnownIntrinsics(config.camera_model, values)
    path = inputs.capture / "intrinsics.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            return KnownIntrinsics(str(data["camera_model"]), tuple(float(v) for v in data["params"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CaptureError(inputs.label, f"intrinsics.json is invalid ({type(exc).__name__}: {exc})") from None
    if config.intrinsics == "known":
        raise CaptureError(
            inputs.label, "sfm.intrinsics is 'known' but neither sfm.camera_params nor intrinsics.json is given"
        )
    return None


def run(inputs: SfmInputs, out: Path, config: SfmConfig) -> Path:
    """Reconstruct one capture into ``out``; returns ``out``. Raises CaptureError on bad input or failure."""
    start = time.perf_counter()
    if not inputs.capture.is_dir():
        raise CaptureError(inputs.label, f"capture folder '{inputs.capture}' does not exist")
    folder = scan_images(inputs.image_dir)
    if not folder.names and not folder.skipped:
        raise CaptureError(inputs.label, f"no images in '{inputs.image_dir}' (empty folder)")
    if len(folder.names) < MIN_IMAGES:
        raise CaptureError(
            inputs.label,
            f"only {len(folder.names)} readable image(s) in '{inputs.image_dir}', need at least {MIN_IMAGES}"
            + (f" ({len(folder.skipped)} skipped)" if folder.skipped else ""),
        )
    known = resolve_intrinsics(inputs, config)
    sizes = folder.distinct_sizes
    if config.camera_mode == "auto":
        config = dataclasses.replace(config, camera_mode="single" if len(sizes) == 1 else "per_image")
    if len(sizes) > 1 and (config.camera_mode == "single" or known is not None):
        shown = ", ".join(f"{w}x{h}" for w, h in sizes[:3]) + (" ..." if len(sizes) > 3 else "")
        what = "known intrinsics" if known is not None else "sfm.camera_mode 'single'"
        raise CaptureError(
            inputs.label,
            f"{what} needs images of one size, found {len(sizes)} sizes ({shown}); "
            "use sfm.camera_mode auto or per_image",
        )
    with atomic_dir(out) as tmp:
        work = tmp / "_work"
        result = run_sfm(folder.root, list(folder.names), work, config, known)
        attempts = [dataclasses.asdict(a) for a in result.attempts]
        if not result.healthy:
            best = result.attempts[result.best]
            raise CaptureError(
                inputs.label,
                f"SfM failed after {len(attempts)} attempt(s); best: {best.reason} "
                f"(attempt {best.index}, {best.matcher} matching, {best.mapper} mapper)",
            )
        t_export = time.perf_counter()
        exported = export_result(result.models, folder.root, tmp, config.num_threads)
        shutil.rmtree(work)
        metrics: dict[str, Any] = {
            "capture": inputs.label,
            "status": "ok",
            **reconstruction_stats(result.models, result.num_images),
            **exported,
            "intrinsics": "known" if known else "self-calibrated",
            "camera_mode": config.camera_mode,
            "matcher": result.attempts[result.best].matcher,
            "mapper": result.attempts[result.best].mapper,
            "num_pairs_matched": result.attempts[result.best].pairs_matched,
            "chosen_attempt": result.best,
            "attempts": attempts,
            "skipped_files": [{"file": f, "reason": r} for f, r in folder.skipped],
            "num_skipped_files": len(folder.skipped),
            "not_imported_by_colmap": result.dropped,
            "timings": {
                **result.timings,
                "export_s": time.perf_counter() - t_export,
                "total_s": time.perf_counter() - start,
            },
        }
        write_json(tmp / "metrics.json", metrics)
    logger.info(
        "capture '%s': %d/%d images registered -> %s", inputs.label, metrics["num_registered"], result.num_images, out
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return stage_cli.stage_main(__name__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
