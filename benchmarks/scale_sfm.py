"""The "sfm" section of ``bench_scale.py``: SfM cost against the number of views, by matcher.

For each N of ``--views`` a synthetic capture is rendered once (``render_capture``, 320x240 by
default, seed 0; ``loops = max(1, N // 50)``: one orbit up to 99 views, then a video-like spiral of
several orbits, so the step between frames stays 7.2 degrees from 50 views on and a larger capture
is a longer video, as in practice). Each row runs the SfM task (``run_sfm``, params.yaml's ``sfm``
section with known intrinsics, a small image size and feature count, no fallback ladder so the
attempt itself is measured) in a fresh child process, which reports its wall times (extraction,
retrieval, matching, mapping), the image pairs matched, the registered fraction, the rotation error
against ground truth after a similarity alignment (``capture3d.tasks.sfm.evaluate.evaluate_sfm``)
and its peak resident memory (``ru_maxrss``).

Rows: ``exhaustive`` (the reference), ``retrieval`` (forced at every N; ``matcher: auto`` picks it
above ``retrieval_min_images``, exhaustive at or below) and, from ``--sfm-hierarchical-from`` views
on, ``retrieval`` + the hierarchical mapper with ``--sfm-leaf`` images per cluster. Growth exponents
are least-squares slopes of log(matching time) against log(N).

Run as a child: ``python benchmarks/scale_sfm.py --child JSON``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scale_common import run_child, slope  # noqa: E402 (benchmarks/ is the script's folder)


def _sfm_child(spec: dict) -> dict:
    import dataclasses

    from capture3d.config import load_params
    from capture3d.stages import sfm as stage
    from capture3d.tasks.sfm.evaluate import evaluate_sfm, read_ground_truth
    from capture3d.tasks.sfm.reconstruct import KnownIntrinsics, run_sfm

    capture = Path(spec["capture"])
    section = {**load_params(REPO / "params.yaml")["sfm"], **spec["sfm"], "fallback": []}
    config = dataclasses.replace(stage.load_config({"sfm": section}), camera_mode="single")
    intrinsics = json.loads((capture / "intrinsics.json").read_text())
    known = KnownIntrinsics(intrinsics["camera_model"], tuple(intrinsics["params"]))
    names = sorted(p.name for p in (capture / "images").iterdir())
    start = time.perf_counter()
    result = run_sfm(capture / "images", names, Path(spec["work"]), config, known)
    wall = time.perf_counter() - start
    attempt = result.attempts[result.best]
    ev = evaluate_sfm(result.models, len(names), read_ground_truth(capture / "gt" / "transforms.json"))
    return {
        **spec,
        "views": len(names),
        "wall_s": wall,
        **{k: result.timings.get(k, 0.0) for k in ("extract_s", "retrieval_s", "match_s", "map_s")},
        "pairs": attempt.pairs_matched,
        "matcher": attempt.matcher,
        "mapper": attempt.mapper,
        "healthy": attempt.healthy,
        "reason": attempt.reason,
        "registered_fraction": float(ev["registered_fraction"]),
        "rot_med_deg": float(ev.get("rotation_error_deg_median", float("nan"))),
        "rot_max_deg": float(ev.get("rotation_error_deg_max", float("nan"))),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def sfm_section(args: argparse.Namespace) -> None:
    """Exhaustive against retrieval matching (and the hierarchical mapper) over ``args.views``."""
    from capture3d.tasks.synthesis.photos import render_capture, write_capture

    width, height = args.sfm_size
    base = {"max_image_size": max(width, height), "max_num_features": args.sfm_features}
    base["num_threads"] = args.sfm_threads
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-sfm-") as tmp:
        for n in args.views:
            capture = Path(tmp) / f"views_{n}"
            loops = max(1, n // 50)
            write_capture(render_capture(num_images=n, width=width, height=height, seed=0, loops=loops), capture)
            runs = [("exhaustive", {"matcher": "exhaustive"}), ("retrieval", {"matcher": "retrieval"})]
            if n >= args.sfm_hierarchical_from:
                leaf = {"mapper": "hierarchical", "hierarchical_leaf_images": args.sfm_leaf}
                runs.append((f"retrieval + hierarchical ({args.sfm_leaf})", {"matcher": "retrieval", **leaf}))
            for label, changes in runs:
                spec = {"capture": str(capture), "work": str(Path(tmp) / "work"), "sfm": {**base, **changes}}
                row = {**run_child(__file__, spec), "label": label, "n": n, "loops": loops}
                rows.append(row)
                print(f"  sfm {label} N={n}: " + (row.get("failed") or f"{row['wall_s']:.1f} s"), flush=True)
    _print_sfm(args, rows)


def _print_sfm(args: argparse.Namespace, rows: list[dict]) -> None:
    ok = [r for r in rows if "failed" not in r]
    reference = {r["n"]: r for r in ok if r["label"] == "exhaustive"}
    print(
        f"\nSfM: synthetic views ({args.sfm_size[0]}x{args.sfm_size[1]}, {args.sfm_features} SIFT features, "
        f"known intrinsics, {args.sfm_threads} COLMAP threads), each run in a child process; "
        "ratios against exhaustive at the same N"
    )
    print(
        "| N | loops | matcher | mapper | extract s | retrieval s | match s | map s | total s | total / exh. "
        "| pairs | pairs / N | registered | rot. err. median / max deg | rot. median / exh. | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['n']} | {r['loops']} | {r['label']} | failed: {r['failed']} |")
            continue
        ref = reference.get(r["n"])
        total_ratio = r["wall_s"] / ref["wall_s"] if ref else float("nan")
        rot_ratio = r["rot_med_deg"] / ref["rot_med_deg"] if ref else float("nan")
        flag = "" if r["healthy"] else f" (unhealthy: {r['reason']})"
        print(
            f"| {r['n']} | {r['loops']} | {r['label']} | {r['mapper']} | {r['extract_s']:.1f} | "
            f"{r['retrieval_s']:.2f} | {r['match_s']:.1f} | {r['map_s']:.1f} | {r['wall_s']:.1f} | "
            f"{total_ratio:.2f} | {r['pairs']} | {r['pairs'] / r['n']:.1f} | {r['registered_fraction']:.1%}{flag} | "
            f"{r['rot_med_deg']:.3f} / {r['rot_max_deg']:.3f} | {rot_ratio:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    for label in ("exhaustive", "retrieval"):
        series = [r for r in ok if r["label"] == label]
        sizes = [r["n"] for r in series]
        print(
            f"{label}: growth exponent of matching time (log match s / log N): "
            f"{slope(sizes, [r['match_s'] for r in series]):.2f}; of pairs: "
            f"{slope(sizes, [r['pairs'] for r in series]):.2f}; of total time: "
            f"{slope(sizes, [r['wall_s'] for r in series]):.2f}"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this section on ``bench_scale.py``'s command line."""
    parser.add_argument("--views", type=int, nargs="*", default=[25, 50, 100, 200], help="sfm: views per capture")
    parser.add_argument("--sfm-size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"))
    parser.add_argument("--sfm-features", type=int, default=1024, help="sfm: SIFT features per image at most")
    parser.add_argument("--sfm-threads", type=int, default=-1, help="sfm: COLMAP threads (-1: all cores)")
    parser.add_argument("--sfm-hierarchical-from", type=int, default=100, help="sfm: hierarchical rows from N views")
    parser.add_argument("--sfm-leaf", type=int, default=50, help="sfm: images per cluster of the hierarchical rows")


def _child_main() -> None:
    spec = json.loads(sys.argv[sys.argv.index("--child") + 1])
    print(json.dumps(_sfm_child(spec)))


if __name__ == "__main__":
    _child_main()
