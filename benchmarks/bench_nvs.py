"""Benchmark: the tile-based CPU Gaussian rasterizer against the dense reference, and its scaling.

Tables, measured in one run (ratios against the reference measured in the same run):

1. **Tile rasterizer vs dense reference** at 252x189 with 20,000 Gaussians (a random scene in front
   of the camera whose footprints average a few pixels, like a fitted scene): forward and
   forward + backward time (median of ``--repeats``) of our tile rasterizer (eager, and through
   ``torch.compile``) against :func:`capture3d.tasks.nvs.gaussians.dense.rasterize_dense` (every
   Gaussian against every pixel, float32, processed in row blocks so it fits in memory; its
   backward runs block by block), and the largest pixel difference between their images.
2. **Scaling**: forward + backward time per iteration of the tile rasterizer (compiled) against
   image size and Gaussian count, with the number of Gaussian-tile pairs.
3. **Backends** (only with a CUDA GPU): iterations per second of gsplat's CUDA rasterizer and of
   ours (on the CPU) on the same scene.

Usage: python benchmarks/bench_nvs.py [--repeats N] [--threads T] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from capture3d.tasks.nvs.gaussians.dense import rasterize_dense  # noqa: E402
from capture3d.tasks.nvs.gaussians.project import project  # noqa: E402
from capture3d.tasks.nvs.gaussians.rasterize import rasterize, tile_pairs  # noqa: E402
from capture3d.tasks.nvs.gaussians.render import Camera, render, sh_colors  # noqa: E402

logger = logging.getLogger("bench_nvs")


def scene(n: int, width: int, height: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], Camera]:
    """n Gaussians in a slab 3-7 units in front of a 60-degree camera; scales so footprints are ~2-6 px."""
    g = torch.Generator().manual_seed(seed)
    f = 0.5 * width / np.tan(np.radians(30))
    z = torch.rand(n, generator=g) * 4 + 3
    x = (torch.rand(n, generator=g) * 2 - 1) * z * width / (2 * f)
    y = (torch.rand(n, generator=g) * 2 - 1) * z * height / (2 * f)
    px = 2.0 * (width / 252)  # footprint scale in pixels at this resolution
    splats = {
        "means": torch.stack([x, y, z], -1),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.log(z[:, None] * px / f * (0.5 + torch.rand(n, 3, generator=g))),
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g) * 0.5,
        "shN": torch.zeros(n, 15, 3),
    }
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]], dtype=torch.float32)
    return splats, Camera(K, torch.eye(4), width, height)


def _inputs(splats: dict[str, torch.Tensor], grad: bool) -> dict[str, torch.Tensor]:
    return {k: v.clone().requires_grad_(grad) for k, v in splats.items()}


def _project(s: dict[str, torch.Tensor], cam: Camera):
    opac = torch.sigmoid(s["opacities"])
    proj = project(s["means"], s["quats"], torch.exp(s["scales"]), opac, cam.viewmat, cam.K, cam.width, cam.height)
    return proj, sh_colors(s, torch.zeros(3), 0), opac


def tile_step(splats, cam, backward: bool, compiled: bool) -> torch.Tensor:
    s = _inputs(splats, backward)
    proj, colors, opac = _project(s, cam)
    img, _ = rasterize(proj, colors, opac, cam.width, cam.height, torch.zeros(3), 8, compiled)
    if backward:
        img.sum().backward()
    return img.detach()


def dense_step(splats, cam, backward: bool, block_rows: int = 8) -> torch.Tensor:
    s = _inputs(splats, backward)
    rows = []
    for r0 in range(0, cam.height, block_rows):
        r1 = min(r0 + block_rows, cam.height)
        proj, colors, opac = _project(s, cam)
        img, _ = rasterize_dense(proj, colors, opac, cam.width, cam.height, torch.zeros(3), torch.float32, (r0, r1))
        if backward:
            img.sum().backward()
        rows.append(img.detach())
    return torch.cat(rows)


def timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def table_reference(repeats: int) -> None:
    splats, cam = scene(20_000, 252, 189)
    proj, _, _ = _project(splats, cam)
    gid, _, _, _ = tile_pairs(proj, cam.width, cam.height, 8)
    print(
        f"\n## Tile rasterizer vs dense reference: 252x189, 20,000 Gaussians, {len(gid):,} Gaussian-tile pairs "
        f"(tile 8), torch threads {torch.get_num_threads()}\n"
    )
    print(
        "| pass | dense reference s | tile eager s | tile compiled s | speed-up eager | speed-up compiled "
        "| max |diff| |"
    )
    print("|---|---|---|---|---|---|---|")
    for backward in (False, True):
        t_dense, ref = timed(lambda b=backward: dense_step(splats, cam, b), max(1, repeats // 3))
        t_eager, img_e = timed(lambda b=backward: tile_step(splats, cam, b, False), repeats)
        t_comp, img_c = timed(lambda b=backward: tile_step(splats, cam, b, True), repeats)
        diff = max(float((img_e - ref).abs().max()), float((img_c - ref).abs().max()))
        name = "forward + backward" if backward else "forward"
        print(
            f"| {name} | {t_dense:.3f} | {t_eager:.3f} | {t_comp:.3f} | {t_dense / t_eager:.1f}x | "
            f"{t_dense / t_comp:.1f}x | {diff:.2e} |"
        )


def table_scaling(repeats: int, quick: bool) -> None:
    sizes = ((126, 95), (252, 189), (504, 378))
    counts = (5_000, 20_000) if quick else (5_000, 20_000, 80_000)
    print("\n## Scaling: forward + backward per iteration, tile rasterizer (compiled)\n")
    print("| image | Gaussians | pairs | s / iteration | iterations / s |")
    print("|---|---|---|---|---|")
    for w, h in sizes:
        for n in counts:
            splats, cam = scene(n, w, h)
            proj, _, _ = _project(splats, cam)
            pairs = len(tile_pairs(proj, w, h, 8)[0])
            t, _ = timed(lambda s=splats, c=cam: tile_step(s, c, True, True), repeats)
            print(f"| {w}x{h} | {n:,} | {pairs:,} | {t:.3f} | {1 / t:.2f} |")


def table_backends(repeats: int) -> None:
    if not torch.cuda.is_available():
        print("\n(no CUDA GPU: backend comparison skipped)")
        return
    splats, cam = scene(20_000, 252, 189)
    dev = torch.device("cuda")
    s_gpu = {k: v.to(dev) for k, v in splats.items()}
    cam_gpu = Camera(cam.K.to(dev), cam.viewmat.to(dev), cam.width, cam.height)

    def gpu_step():
        s = _inputs(s_gpu, True)
        render(s, cam_gpu, 0, torch.zeros(3, device=dev), "cuda").image.sum().backward()
        torch.cuda.synchronize()

    t_gpu, _ = timed(gpu_step, repeats * 5)
    t_cpu, _ = timed(lambda: tile_step(splats, cam, True, True), repeats)
    print("\n## Backends on the same scene (252x189, 20,000 Gaussians, forward + backward)\n")
    print("| backend | device | iterations / s |")
    print("|---|---|---|")
    print(f"| gsplat CUDA | {torch.cuda.get_device_name()} | {1 / t_gpu:.1f} |")
    print(f"| ours (tile, compiled) | CPU, {torch.get_num_threads()} threads | {1 / t_cpu:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smaller scaling table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    table_reference(args.repeats)
    table_scaling(args.repeats, args.quick)
    table_backends(args.repeats)


if __name__ == "__main__":
    main()
