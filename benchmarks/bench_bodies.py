"""Benchmark: batched body fitting against fitting frames one at a time (as SMPLify-X does).

Tables, measured in one run on synthetic Anny frames (one view, COCO-17 + feet, 2 px noise, the
default SMPLify schedule of params.yaml's fit_bodies, 360 iterations):

The fit settings and the model come from params.yaml's ``fit_bodies`` (the shipped learned pose
prior with its pose hypotheses by default); ``--set`` overrides them, e.g. ``--set
pose_prior='"none"' pose_hypotheses=0 select_after_stage=1`` for the fit without the prior.

1. **Batched vs loop**: ``--frames`` frames fitted in one :func:`fit_bodies` call, against the
   first ``--loop-frames`` of them fitted one call per frame in a Python loop; wall time, frames
   per second and the ratio; median PA-MPJPE of both on the frames both fitted (Adam is
   elementwise, so the two agree up to float rounding).
2. **Scaling**: time per iteration against batch size (every frame carries its start hypotheses,
   pose modes x turns x leans, through the first stages, so the optimised batch is that many times
   the frame count until selection).

Usage: python benchmarks/bench_bodies.py [--frames N] [--loop-frames M] [--threads T] [--quick]
       [--set KEY=JSON ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from capture3d.config import load_params  # noqa: E402
from capture3d.stages import fit_bodies as fit_stage  # noqa: E402
from capture3d.tasks.body.fit import (  # noqa: E402
    BodyFitConfig,
    FitStage,
    fit_bodies,
    world_keypoints,
)
from capture3d.tasks.body.metrics import pa_mpjpe  # noqa: E402
from capture3d.tasks.body.model import COCO17, FEET  # noqa: E402
from capture3d.tasks.synthesis.bodies import observations, synthesize_bodies  # noqa: E402


def errors(model, result, syn, rows: slice) -> np.ndarray:
    with torch.no_grad():
        pred = world_keypoints(model, result.pose, result.scale, syn.names).double().numpy()
    return pa_mpjpe(pred, syn.points[rows]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--loop-frames", type=int, default=16, help="frames fitted one by one (fps extrapolates)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="8 frames, 4 in the loop, a 40-iteration schedule")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="fit_bodies overrides (JSON values)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    section = {**load_params(REPO / "params.yaml")["fit_bodies"], "device": "cpu"}
    for item in args.set:
        key, _, value = item.partition("=")
        section[key] = json.loads(value)
    stage_config = fit_stage.load_config({"fit_bodies": section})
    config = BodyFitConfig(**{f: getattr(stage_config, f) for f in BodyFitConfig.__dataclass_fields__})
    if args.quick:
        args.frames, args.loop_frames = 8, 4
        quick = (FitStage(10, 0.05, body=False), FitStage(30, 0.03, pose_weight=4.0))
        config = BodyFitConfig(**{**config.__dict__, "stages": quick, "select_after_stage": 1})
    model = fit_stage.build_model(stage_config, torch.device("cpu"))
    print(f"pose prior {stage_config.pose_prior}, {config.pose_hypotheses} pose hypotheses, overrides {args.set}")
    syn = synthesize_bodies(model, count=args.frames, views=1, names=COCO17 + FEET, seed=0, noise_px=2.0)
    fit_bodies(model, observations(syn, rows=slice(0, 1)), BodyFitConfig(stages=(FitStage(2, 0.05),)))  # warm-up

    start = time.perf_counter()
    batched = fit_bodies(model, observations(syn, rows=slice(0, args.frames)), config)
    t_batch = time.perf_counter() - start
    loop_err = []
    start = time.perf_counter()
    for i in range(args.loop_frames):
        one = fit_bodies(model, observations(syn, rows=slice(i, i + 1)), config)
        loop_err.append(errors(model, one, syn, slice(i, i + 1))[0])
    t_loop = time.perf_counter() - start
    batch_err = errors(model, batched, syn, slice(0, args.frames))
    fps_batch, fps_loop = args.frames / t_batch, args.loop_frames / t_loop
    iters = batched.iterations
    print(f"\nBatched vs loop ({iters} iterations per fit, {args.threads} threads)")
    print(f"{'mode':<10}{'frames':>8}{'wall s':>10}{'frames/s':>10}{'median PA-MPJPE mm':>21}")
    print(f"{'batched':<10}{args.frames:>8}{t_batch:>10.2f}{fps_batch:>10.2f}{np.median(batch_err):>21.1f}")
    print(f"{'loop':<10}{args.loop_frames:>8}{t_loop:>10.2f}{fps_loop:>10.2f}{np.median(loop_err):>21.1f}")
    same = np.abs(batch_err[: args.loop_frames] - np.array(loop_err))
    print(
        f"speed-up (frames/s batched / loop): {fps_batch / fps_loop:.1f}x   "
        f"max |PA-MPJPE batched - loop| on the shared frames: {same.max():.2f} mm"
    )

    starts = (1 + config.pose_hypotheses) * len(config.yaw_hypotheses_deg) * len(config.lean_hypotheses_deg)
    print(f"\nScaling: seconds per iteration against batch size (frames; x{starts} rows while hypotheses last)")
    print(f"{'frames':>8}{'s / iteration':>15}{'ms / frame / iteration':>25}")
    short = BodyFitConfig(stages=(FitStage(5, 0.05, body=False), FitStage(15, 0.03)))
    for size in (1, 4, 16, 64, 256):
        syn_s = (
            syn
            if size <= args.frames
            else synthesize_bodies(model, count=size, views=1, names=COCO17 + FEET, seed=1, noise_px=2.0)
        )
        if args.quick and size > 16:
            break
        start = time.perf_counter()
        fit_bodies(model, observations(syn_s, rows=slice(0, size)), short)
        per_iter = (time.perf_counter() - start) / 20
        print(f"{size:>8}{per_iter:>15.4f}{1000 * per_iter / size:>25.2f}")


if __name__ == "__main__":
    main()
