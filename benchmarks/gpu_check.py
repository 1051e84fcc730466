"""GPU check: every CUDA-only test and the GPU rows of the benchmarks, summarised in one table.

On a machine where ``torch.cuda.is_available()``, runs in order, each in its own process group with
its own timeout, and all of them inside a total budget (``--budget``, default 450 s, so the whole
check stays under 8 minutes):

1. **gsplat extension**: loads gsplat's CUDA rasterizer (JIT-compiled on first use, then cached in
   ``~/.cache/torch_extensions``), so a slow first build is seen as such, not as a slow test.
2. **pytest -m cuda**: every test marked ``cuda`` (``--continue-on-collection-errors``, so a broken
   unrelated test file does not hide them; the collection error still fails the check). Any skipped
   CUDA test fails the check too: on a GPU machine each of them must run.
3. **bench_fcgf --device cuda --cuda-only --repeats 1**: the sparse convolution against dense
   ``conv3d`` and FCGF extraction, on the GPU.
4. **bench_bodies on cuda**: ``bench_bodies.py`` has no device option, so this fits its ``--quick``
   schedule to 16 synthetic frames (its ``observations`` helper) once on the CPU and once on the GPU
   and compares the median PA-MPJPE (must agree within ``BODY_TOLERANCE_MM``).
5. **bench_nvs backends**: ``bench_nvs.table_backends`` (its table 3, the only GPU one): gsplat CUDA
   against our compiled CPU tile rasterizer on the same scene.

Then prints one table (check, device, result, seconds, pass/fail), the output tail of each failed
check, and exits 1 if any check failed. Without CUDA it prints that CUDA is unavailable and exits 0.

Usage: python benchmarks/gpu_check.py [--budget SECONDS] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
TOTAL_BUDGET_S = 450.0  # all checks together; the script itself adds a few seconds
MIN_TIMEOUT_S = 10.0  # a check with less time left is not started (and fails)
BODY_FRAMES = 16
BODY_TOLERANCE_MM = 5.0  # |median PA-MPJPE cuda - cpu|
RESULT_TAG = "GPU_CHECK_RESULT "
UNAVAILABLE = "CUDA is unavailable (torch.cuda.is_available() is False): gpu-check skipped, nothing to check"


@dataclass
class Check:
    name: str
    device: str
    cmd: list[str]
    cap_s: float
    parse: Callable[[str, int], tuple[bool, str]]  # (output, exit code) -> (passed, result text)


@dataclass
class Outcome:
    name: str
    device: str
    result: str
    seconds: float
    passed: bool
    output: str = ""


# ----------------------------------------------------------------------------- parsing


def tagged_result(output: str) -> dict | None:
    """The JSON after the last ``GPU_CHECK_RESULT`` line of a ``--run`` child, or None."""
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_TAG):
            try:
                return json.loads(line[len(RESULT_TAG) :])
            except json.JSONDecodeError:
                return None
    return None


def pytest_counts(output: str) -> dict[str, int]:
    """Counts of pytest's final summary line ("3 passed, 1 skipped, 350 deselected in 9.1s")."""
    counts: dict[str, int] = {}
    for line in reversed(output.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed|warnings?)\b", line)
        if found and (" in " in line or line.startswith("=")):
            for n, word in found:
                key = {"error": "errors", "warning": "warnings"}.get(word, word)
                counts[key] = counts.get(key, 0) + int(n)
            break
    return counts


def parse_pytest(output: str, rc: int) -> tuple[bool, str]:
    counts = pytest_counts(output)
    if not counts:
        return False, f"no pytest summary (exit {rc})"
    shown = [
        f"{counts[k]} {k}" for k in ("passed", "failed", "errors", "skipped", "xfailed", "xpassed") if counts.get(k)
    ]
    text = ", ".join(shown) or "no tests ran"
    passed = rc == 0 and counts.get("passed", 0) > 0 and not any(counts.get(k) for k in ("failed", "errors", "skipped"))
    if counts.get("skipped"):
        text += " (a skipped CUDA test fails the check)"
    return passed, text


def parse_fcgf(output: str, rc: int) -> tuple[bool, str]:
    rows = [line for line in output.splitlines() if line.startswith("| ")]
    failed = [r for r in rows if "failed" in r]
    conv = [r for r in rows if re.match(r"\| \d+ -> \d+ \| sparse \|", r)]
    fcgf = [r for r in rows if r.startswith("| FCGF (cuda)")]
    if rc != 0 or failed or not conv or not fcgf:
        why = f"exit {rc}" if rc else ("a measurement failed (out of memory?)" if failed else "tables missing")
        return False, why
    cells = [c.strip() for c in conv[-1].strip("|").split("|")]  # C_in -> C_out, variant, voxels, fwd, fwd+bwd, ...
    extract = [c.strip() for c in fcgf[-1].strip("|").split("|")]
    return True, f"sparse conv {cells[0]} fwd+bwd {cells[4]} s ({cells[6]} x dense); FCGF {extract[1]} s/fragment"


def parse_tagged(kind: str) -> Callable[[str, int], tuple[bool, str]]:
    def parse(output: str, rc: int) -> tuple[bool, str]:
        result = tagged_result(output)
        if result is None:
            return False, f"no result (exit {rc})"
        return rc == 0 and bool(result.get("passed")), str(result.get("text", kind))

    return parse


# ----------------------------------------------------------------------------- checks (child processes)


def run_gsplat() -> int:
    """Load (and on first use JIT-compile) gsplat's CUDA extension."""
    from gsplat.cuda._backend import _C

    ok = _C is not None
    text = "CUDA extension loaded" if ok else "CUDA extension not available (no CUDA toolkit / nvcc to build it?)"
    print(RESULT_TAG + json.dumps({"passed": ok, "text": text}), flush=True)
    return 0 if ok else 1


def run_bodies() -> int:
    """bench_bodies' --quick schedule on BODY_FRAMES synthetic frames, on the CPU and on the GPU."""
    import dataclasses

    import numpy as np
    import torch

    sys.path.insert(0, str(BENCH))
    import bench_bodies as bb  # its imports put the repository on sys.path

    torch.set_flush_denormal(True)
    config = bb.BodyFitConfig(stages=(bb.FitStage(10, 0.05, body=False), bb.FitStage(30, 0.03, pose_weight=4.0)))
    warm = bb.BodyFitConfig(stages=(bb.FitStage(2, 0.05),))
    cpu_model = bb.AnnyBody()
    syn = bb.synthesize_bodies(cpu_model, count=BODY_FRAMES, views=1, names=bb.COCO17 + bb.FEET, seed=0, noise_px=2.0)

    def moved(obs, device: str):
        return dataclasses.replace(
            obs, **{f.name: getattr(obs, f.name).to(device) for f in dataclasses.fields(obs) if f.name != "names"}
        )

    stats = {}
    for device in ("cpu", "cuda"):
        model = cpu_model if device == "cpu" else bb.AnnyBody(device="cuda")
        bb.fit_bodies(model, moved(bb.observations(syn, slice(0, 1)), device), warm)
        obs = moved(bb.observations(syn, slice(0, BODY_FRAMES)), device)
        torch.manual_seed(0)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = bb.fit_bodies(model, obs, config)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        with torch.no_grad():
            pred = bb.world_keypoints(model, result.pose, result.scale, syn.names).double().cpu().numpy()
        err = bb.pa_mpjpe(pred, syn.points[:BODY_FRAMES]) * 1000
        stats[device] = {"seconds": seconds, "median_mm": float(np.median(err))}
    gap = abs(stats["cuda"]["median_mm"] - stats["cpu"]["median_mm"])
    ok = all(math.isfinite(s["median_mm"]) for s in stats.values()) and gap <= BODY_TOLERANCE_MM
    text = (
        f"{BODY_FRAMES} frames: cuda {BODY_FRAMES / stats['cuda']['seconds']:.1f} frames/s, "
        f"cpu {BODY_FRAMES / stats['cpu']['seconds']:.1f} frames/s; median PA-MPJPE cuda "
        f"{stats['cuda']['median_mm']:.1f} mm vs cpu {stats['cpu']['median_mm']:.1f} mm"
    )
    print(RESULT_TAG + json.dumps({"passed": ok, "text": text, **stats}), flush=True)
    return 0 if ok else 1


def run_nvs() -> int:
    """bench_nvs' GPU table (gsplat CUDA against our compiled CPU rasterizer), one repeat."""
    import io
    from contextlib import redirect_stdout

    import torch

    sys.path.insert(0, str(BENCH))
    import bench_nvs

    torch.set_flush_denormal(True)
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        bench_nvs.table_backends(1)
    table = buffer.getvalue()
    print(table, flush=True)
    rates = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in ("gsplat CUDA", "ours (tile, compiled)"):
            rates[cells[0]] = float(cells[2])
    ok = len(rates) == 2 and all(math.isfinite(r) and r > 0 for r in rates.values())
    text = (
        f"gsplat CUDA {rates['gsplat CUDA']:.1f} it/s vs CPU tile {rates['ours (tile, compiled)']:.2f} it/s "
        "(252x189, 20k Gaussians, fwd+bwd)"
        if ok
        else "backend table missing"
    )
    print(RESULT_TAG + json.dumps({"passed": ok, "text": text, "rates": rates}), flush=True)
    return 0 if ok else 1


CHILDREN = {"gsplat": run_gsplat, "bodies": run_bodies, "nvs": run_nvs}


def checks(gpu: str) -> list[Check]:
    me = [sys.executable, str(Path(__file__).resolve()), "--run"]
    pytest_cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider"]
    pytest_cmd.append("--continue-on-collection-errors")
    fcgf_cmd = [sys.executable, str(BENCH / "bench_fcgf.py"), "--device", "cuda", "--cuda-only", "--repeats", "1"]
    return [
        Check("gsplat extension", gpu, [*me, "gsplat"], 240, parse_tagged("gsplat")),
        Check("pytest -m cuda", gpu, pytest_cmd, 180, parse_pytest),
        Check("bench_fcgf (cuda)", gpu, fcgf_cmd, 120, parse_fcgf),
        Check("bench_bodies (cuda vs cpu)", f"{gpu} / cpu", [*me, "bodies"], 120, parse_tagged("bodies")),
        Check("bench_nvs backends", f"{gpu} / cpu", [*me, "nvs"], 150, parse_tagged("nvs")),
    ]


# ----------------------------------------------------------------------------- driver


def run_check(check: Check, deadline: float) -> Outcome:
    """Run one check in its own process group; kill the group at its timeout."""
    timeout = min(check.cap_s, deadline - time.monotonic())
    if timeout < MIN_TIMEOUT_S:
        return Outcome(check.name, check.device, "not run: the time budget is spent", 0.0, False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))  # gsplat's JIT build
    print(f"[gpu-check] {check.name}: {' '.join(check.cmd[1:])} (timeout {timeout:.0f} s)", file=sys.stderr, flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(
        check.cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and whatever it started
        output, _ = proc.communicate()
        seconds = time.monotonic() - start
        return Outcome(check.name, check.device, f"timed out after {timeout:.0f} s", seconds, False, output)
    seconds = time.monotonic() - start
    try:
        passed, result = check.parse(output, proc.returncode)
    except (ValueError, IndexError, KeyError) as exc:
        passed, result = False, f"unreadable output ({type(exc).__name__}: {exc}; exit {proc.returncode})"
    return Outcome(check.name, check.device, result, seconds, passed, output)


def table(outcomes: list[Outcome]) -> str:
    head = ("check", "device", "result", "seconds", "pass/fail")
    rows = [(o.name, o.device, o.result, f"{o.seconds:.1f}", "PASS" if o.passed else "FAIL") for o in outcomes]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="seconds for all checks together")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="checks whose name contains one of these words")
    parser.add_argument("--run", choices=sorted(CHILDREN), help=argparse.SUPPRESS)  # a check's child process
    args = parser.parse_args(argv)
    if args.run:
        return CHILDREN[args.run]()

    import torch

    if not torch.cuda.is_available():
        print(UNAVAILABLE)
        return 0
    gpu = f"cuda ({torch.cuda.get_device_name(0)})"
    selected = [c for c in checks(gpu) if not args.only or any(word in c.name for word in args.only)]
    deadline = time.monotonic() + args.budget
    start = time.monotonic()
    outcomes = [run_check(check, deadline) for check in selected]
    failed = [o for o in outcomes if not o.passed]
    for o in failed:
        if o.output:
            tail = "\n".join(o.output.rstrip().splitlines()[-25:])
            print(f"\n--- {o.name}: last lines of its output ---\n{tail}")
    print(f"\nGPU check on {gpu}, torch {torch.__version__}, {time.monotonic() - start:.0f} s in all\n")
    print(table(outcomes))
    print(f"\n{len(outcomes) - len(failed)} of {len(outcomes)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
