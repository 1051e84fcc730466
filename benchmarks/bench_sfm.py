"""Benchmark: the ``sfm`` stage against calling pycolmap directly on the same images, same run.

The reference does the same COLMAP work the stage does with the same options (SIFT extraction,
exhaustive matching, incremental mapping, writing the binary model, exporting the PLY,
undistortion); the stage adds image validation, the health gate, transforms.json, metrics and the
atomic write. Runs alternate (reference, stage, reference, ...) and the median of each is compared.
Target: stage overhead at most 5 %.

Usage: python benchmarks/bench_sfm.py [--images DIR] [--repeats N]
(default images: ../shared/data/sfm/fountain_p11/images, else a synthetic capture).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pycolmap

from capture3d.config import load_params
from capture3d.stages import sfm as sfm_stage
from capture3d.tasks.sfm.reconstruct import (
    SfmConfig,
    extract_features,
    map_images,
    match_features,
)

REPO = Path(__file__).resolve().parents[1]


def reference(image_dir: Path, names: list[str], work: Path, config: SfmConfig) -> float:
    """Plain pycolmap calls with the stage's options; returns seconds."""
    start = time.perf_counter()
    database = work / "database.db"
    pycolmap.set_random_seed(config.seed)
    extract_features(database, image_dir, names, config, None)
    match_features(database, config)
    models = map_images(database, image_dir, work / "sparse", config, None)
    models[0].export_PLY(str(work / "points.ply"))
    pycolmap.undistort_images(work / "undistorted", work / "sparse" / "0", image_dir)
    return time.perf_counter() - start


def stage(capture: Path, out: Path, config: SfmConfig) -> tuple[float, float]:
    """Runs the stage; returns (seconds, seconds spent outside the COLMAP phases per its metrics)."""
    start = time.perf_counter()
    sfm_stage.run(sfm_stage.SfmInputs(capture), out, config)
    seconds = time.perf_counter() - start
    timings = json.loads((out / "metrics.json").read_text())["timings"]
    colmap = sum(timings[k] for k in ("extract_s", "match_s", "map_s", "export_s"))
    return seconds, seconds - colmap


def default_images(tmp: Path) -> Path:
    real = REPO.parent / "shared" / "data" / "sfm" / "fountain_p11" / "images"
    if real.is_dir():
        return real
    from capture3d.tasks.synthesis.photos import render_capture, write_capture

    write_capture(render_capture(num_images=24, seed=0), tmp / "synthetic")
    return tmp / "synthetic" / "images"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = sfm_stage.load_config(load_params(REPO / "params.yaml", ["sfm.intrinsics=self_calibrate"]))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = args.images or default_images(tmp)
        names = sorted(p.name for p in images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        ref_times, stage_times, own_times = [], [], []
        for i in range(args.repeats):
            work = tmp / f"ref{i}"
            work.mkdir()
            ref_times.append(reference(images, names, work, config))
            seconds, own = stage(images, tmp / f"stage{i}", config)
            stage_times.append(seconds)
            own_times.append(own)
    ref, st = statistics.median(ref_times), statistics.median(stage_times)
    rows = [
        ("images", str(images)),
        ("num_images", str(len(names))),
        ("repeats", str(args.repeats)),
        ("pycolmap direct, median s", f"{ref:.2f}  ({', '.join(f'{t:.2f}' for t in ref_times)})"),
        ("sfm stage, median s", f"{st:.2f}  ({', '.join(f'{t:.2f}' for t in stage_times)})"),
        ("ratio stage / direct (medians)", f"{st / ref:.3f}"),
        ("ratio stage / direct (minima)", f"{min(stage_times) / min(ref_times):.3f}"),
        (
            "stage time outside COLMAP, median s",
            f"{statistics.median(own_times):.3f}  ({statistics.median(own_times) / ref * 100:.1f} % of direct)",
        ),
        ("overhead", f"{(st / ref - 1) * 100:+.1f} %  (target <= +5 %)"),
    ]
    width = max(len(k) for k, _ in rows)
    sys.stdout.write("\n".join(f"{k:<{width}}  {v}" for k, v in rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
