"""Benchmark: ``capture3d batch`` (the Prefect inbox flow) on a local inbox of small body captures.

One synthetic body capture (``synthesize_bodies``: 1 body, 2 calibrated views, 160x120, 2 px
noise) is copied N times into a local inbox folder (each copy is a capture of its own name), and
the inbox is processed with no DVC remote, each measurement into a fresh work folder. The stages
are those of ``PIPELINES["bodies"]`` (fit_bodies, evaluate_bodies) with the short fit schedule of
``tests/test_batch_inbox.py`` (10 + 20 iterations, no overlays). Tables, measured in one run:

1. **Throughput against N** (``--sizes``): wall seconds and captures/s of ``run_batch_flow`` with
   the flow's thread pool at ``batch.max_workers`` = 1 and 2, and with ``batch.runner=dask`` (a
   Dask LocalCluster of as many single-thread worker processes, through prefect-dask) (``--set batch.max_workers=K``, as
   ``capture3d batch`` passes it), everything else as in params.yaml (where the checkout has
   ``batch.isolate_stages``, its value is in the title: true runs each heavy stage, here
   fit_bodies, in a child Python process), and the speed-up of 2 workers over 1.
2. **Direct vs orchestrated**: the same N captures run by calling the stage steps in a plain Python
   loop (``for step in PIPELINES["bodies"]: step.run(...)``, reading the inbox folder in place,
   into a fresh folder; also the same loop in one worker thread, as the flow's thread pool runs a
   capture) against the flow with max_workers=1 (the flow's number is the one of
   table 1; the runs of a size are measured back to back). Orchestration overhead per capture =
   (flow - direct) / N: Prefect task runs, locks, the inbox mirror (a file copy), stage stamps,
   manifests, the run summary and report and, with stage isolation, a child process per heavy
   stage. Where the checkout has ``batch.isolate_stages``, the flow is also run with it false, to
   separate the cost of the child processes from the rest. The loop in the main thread was 2-3x
   slower than the same loop in a worker thread on 2 busy cores (more CPU time too: torch's
   intra-op threads in the main thread, on tensors this small), hence both direct rows; the
   overhead is printed against each. The direct loops and that in-process flow are cheap and
   noisy, so each is run ``--best-of`` times (default 2, interleaved) and the fastest is kept;
   every run's time is printed in the progress lines.
2b. **Isolation overhead** (where the checkout has ``batch.worker_pool``): the flow with
   max_workers=1 and ``isolate_stages`` true, once with a new child Python process per heavy step
   (``worker_pool=false``) and once with the run's pool of warm workers (``worker_pool=true``:
   imports and the built body model kept across captures; :mod:`capture3d.ops.workers`), against
   the same flow with the stages in-process. Overhead per capture = (run - in-process run) / N;
   the pool's one worker start (interpreter, imports, first model build) is paid once per run, so
   it is amortised over N; the marginal overhead of one more capture,
   ((run(N) - run(N0)) - (in-process(N) - in-process(N0))) / (N - N0) between the smallest and the
   largest size, leaves that start out. It can be negative: the in-process flow builds the body
   model for every capture, a worker once (its warm-up builds it while the first capture is
   prepared). Target for the pool: at most 1 s per capture. The isolated runs are made once per
   size (not best-of).
3. **No-op rerun** (``--noop-captures``, default 100): that many copies are processed once through
   the flow with the cheapest settings (one 1-iteration stage, no overlays, stages in-process
   when the checkout can isolate them: ``batch.isolate_stages`` is not part of the work key; its
   time and captures/s are printed), then the same command is timed again, with nothing to do,
   as a subprocess (``python -m capture3d.cli batch INBOX --work WORK --set ...``: interpreter
   start, imports, listing, one manifest read per capture; Prefect is not started) and
   in-process via :func:`capture3d.ops.batch_plan.plan` (params load + listing + manifests).
   Target: < 5 s (``--repeats`` times each; median and worst are printed, the target is checked
   on the worst).

The first flow run in a process pays Prefect's embedded (ephemeral) server start (seconds), and
the first in-process fit pays lazy imports and model set-up, so a one-capture warm-up of both
(flow and direct loop) is made first and is not counted. The params file is copied at start and
the copy is used throughout (the checkout's file may be edited while the benchmark runs). Default
sizes are 1, 2, 4 (not 8): with ``batch.isolate_stages`` true and a child process per heavy step a
capture costs ~20 s in the flow on 2 shared cores, which would take the default run past ten
minutes. Prefect runs with ``PREFECT_HOME`` in the benchmark's temporary folder (a fresh database,
not shared with other Prefect users of the machine), analytics off, logging at WARNING, and 180 s
allowed for the embedded server to start (Prefect's default of 20 s was exceeded on 2 busy cores).
Torch keeps its default thread count, so with 2 workers two fits share the cores. Timings are
wall-clock on a shared machine: other work running at the same time perturbs them (compare rows of
one run, not across runs).

Loading ``AnnyBody`` points file descriptor 1 at /dev/null for a moment; two loads at once in the
flow's worker threads can leave it there for good (every later print of the process lost), so the
script checks fd 1 after each run, puts it back and says so when that happened.

The work key includes the code version (``git`` commit, plus ``.dirty`` when ``capture3d/`` has
uncommitted changes): if that changes between the first pass and the rerun of table 3 (someone
commits or edits the checkout meanwhile), the rerun is not a no-op; the script checks this and
says so instead of timing a full reprocessing.

Usage: python benchmarks/bench_batch.py [--sizes 1,2,4] [--workers 1,2] [--best-of 2]
                                        [--noop-captures 100] [--repeats 3] [--no-dask]
                                        [--params FILE] [--quick] [--keep] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PARAMS = REPO / "params.yaml"  # replaced by a copy taken at start (see main)

# The short fit schedule of tests/test_batch_inbox.py.
FAST = [
    "fit_bodies.stages=[{iterations: 10, learning_rate: 0.05, body: false, pose_weight: 1.0, shape_weight: 1.0, "
    "bend_weight: 1.0, limit_weight: 100.0}, {iterations: 20, learning_rate: 0.05, body: true, pose_weight: 4.0, "
    "shape_weight: 4.0, bend_weight: 1.0, limit_weight: 100.0}]",
    "fit_bodies.overlays=false",
]
# The cheapest schedule: one stage of one iteration.
CHEAP = [
    "fit_bodies.stages=[{iterations: 1, learning_rate: 0.05, body: true, pose_weight: 4.0, shape_weight: 4.0, "
    "bend_weight: 1.0, limit_weight: 100.0}]",
    "fit_bodies.overlays=false",
]
NOOP_TARGET_S = 5.0
POOL_TARGET_S = 1.0  # isolation overhead per capture with the worker pool


class StdoutGuard:
    """Puts file descriptor 1 back when a run left it elsewhere. ``AnnyBody()`` sends fd 1 to
    /dev/null while it loads (``_stdout_silenced``: dup, dup2, dup2 back); two loads at once in
    the flow's worker threads can restore each other's /dev/null, and every later print of the
    process is lost. The guard notices (by device and inode) and says so."""

    def __init__(self) -> None:
        self.saved = os.dup(1)
        self.identity = self._identity(1)
        self.restored = 0

    @staticmethod
    def _identity(fd: int) -> tuple[int, int]:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino

    def check(self, what: str) -> None:
        if self._identity(1) == self.identity:
            return
        os.dup2(self.saved, 1)
        self.restored += 1
        print(
            f"  [fd 1 (stdout) was left redirected after a {what} (AnnyBody's stdout silencing raced "
            f"between worker threads); restored]",
            flush=True,
        )


STDOUT: StdoutGuard  # set in main


def make_inbox(template: Path, folder: Path, count: int) -> Path:
    """``count`` copies of the capture ``template`` as ``folder/capNNN``."""
    folder.mkdir(parents=True)
    for i in range(count):
        shutil.copytree(template, folder / f"cap{i:03d}")
    return folder


def fresh(root: Path, label: str) -> Path:
    """A new, not yet existing folder under ``root``."""
    return Path(tempfile.mkdtemp(prefix=f"{label}-", dir=root)) / "work"


def flow_run(inbox: Path, work: Path, overrides: list[str]) -> tuple[float, list[dict]]:
    """``capture3d batch INBOX --work WORK --set ...`` in-process, as cmd_batch runs the flow."""
    from capture3d.config import load_params
    from capture3d.flows.batch import run_batch_flow
    from capture3d.ops.batch_plan import load_batch_config

    start = time.perf_counter()
    config = load_batch_config(load_params(PARAMS, overrides))
    extra = [config.max_workers] if "max_workers" in inspect.signature(run_batch_flow).parameters else []
    result = run_batch_flow(str(inbox), work, PARAMS, overrides, None, None, None, *extra)
    seconds = time.perf_counter() - start
    STDOUT.check("batch flow")
    rows = result[0] if isinstance(result, tuple) else result  # (rows, regression message) in newer checkouts
    bad = [r for r in rows if r.get("status") != "ok"]
    if bad:
        raise SystemExit(f"batch flow: {len(bad)} capture(s) not ok, e.g. {bad[0]}")
    return seconds, rows


def direct_run(inbox: Path, out_root: Path, overrides: list[str]) -> float:
    """Every capture of ``inbox`` through the catalog's bodies steps in a plain loop, no Prefect."""
    from capture3d.catalog import pipeline
    from capture3d.config import load_params
    from capture3d.ops.steps import run_step

    start = time.perf_counter()
    params = load_params(PARAMS, overrides)
    for capture in sorted(p for p in inbox.iterdir() if p.is_dir()):
        out = out_root / capture.name
        metrics: dict = {}
        for step in pipeline("bodies").capture_steps:
            metrics.update(run_step("bodies", step.name, capture.name, capture, out, params))
    seconds = time.perf_counter() - start
    STDOUT.check("direct run")
    return seconds


def plan_run(inbox: Path, work: Path, overrides: list[str]) -> tuple[float, int, int]:
    """What ``capture3d batch`` does before deciding there is nothing to do; (s, pending, current)."""
    from capture3d.config import load_params
    from capture3d.ops.batch_plan import load_batch_config, plan
    from capture3d.ops.inbox import open_inbox

    start = time.perf_counter()
    params = load_params(PARAMS, overrides)
    todo = plan(open_inbox(str(inbox), load_batch_config(params).s3()), work, params)
    return time.perf_counter() - start, len(todo.pending), len(todo.current)


def cli_run(inbox: Path, work: Path, overrides: list[str], timeout: float) -> tuple[float, int, str]:
    """``python -m capture3d.cli batch`` as a subprocess; (s, exit code, first stdout line)."""
    cmd = [sys.executable, "-m", "capture3d.cli", "batch", str(inbox), "--work", str(work), "--params", str(PARAMS)]
    cmd += [a for s in overrides for a in ("--set", s)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return seconds, proc.returncode, lines[0] if lines else ""


def main() -> None:
    global PARAMS, STDOUT
    STDOUT = StdoutGuard()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4", help="comma-separated capture counts for tables 1 and 2")
    parser.add_argument("--workers", default="1,2", help="batch.max_workers values for table 1")
    parser.add_argument("--noop-captures", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed no-op reruns of each kind")
    parser.add_argument(
        "--best-of",
        type=int,
        default=2,
        help="runs of the direct loop (and in-process-stage flow) per size; the fastest is kept",
    )
    parser.add_argument("--params", type=Path, default=PARAMS, help="params file (copied at start)")
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (inboxes, work areas)")
    parser.add_argument("--quick", action="store_true", help="sizes 1,2 and 20 no-op captures")
    parser.add_argument(
        "--no-dask",
        dest="dask",
        action="store_false",
        help="skip the Dask rows of table 1 (batch.runner=dask, a LocalCluster)",
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.noop_captures = "1,2", 20
    sizes = [int(s) for s in args.sizes.split(",") if s]
    workers = [int(k) for k in args.workers.split(",") if k]
    if 1 not in workers:
        workers = [1, *workers]

    root = Path(tempfile.mkdtemp(prefix="bench_batch-", dir=args.tmp))
    PARAMS = root / "params.yaml"  # a snapshot: edits to the checkout's file during the run do not reach it
    shutil.copyfile(args.params, PARAMS)
    os.environ.setdefault("PREFECT_HOME", str(root / "prefect"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Prefect's default (20 s) is not always enough for the embedded server on 2 busy cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    t_total = time.perf_counter()
    try:
        run(args, root, sizes, workers)
    finally:
        if args.keep:
            print(f"\nkept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    STDOUT.check("cleanup")
    print(f"\ntotal benchmark time {time.perf_counter() - t_total:.0f} s")


def run(args: argparse.Namespace, root: Path, sizes: list[int], workers: list[int]) -> None:
    from capture3d.ops.manifest import code_version
    from capture3d.stages import synthesize_bodies
    from capture3d.tasks.body.anny_model import AnnyBody

    template = root / "template" / "people"
    config = synthesize_bodies.SynthesizeBodiesConfig(
        count=1, views=2, width=160, height=120, fov_deg=55.0, noise_px=2.0, seed=0
    )
    synthesize_bodies.run(synthesize_bodies.Inputs(), template, config, AnnyBody())
    nfiles = sum(1 for p in template.rglob("*") if p.is_file())
    nbytes = sum(p.stat().st_size for p in template.rglob("*") if p.is_file())
    code = code_version()
    print(f"capture: 1 body, 2 views, 160x120, {nfiles} files, {nbytes / 1024:.0f} KiB; code version {code}")
    print(
        f"Prefect home {os.environ['PREFECT_HOME']}; {os.cpu_count()} CPUs; timings are wall-clock on a "
        "shared machine (other work may perturb them)"
    )

    # Warm-up: Prefect's embedded server start, imports, first model build.
    start = time.perf_counter()
    warm = make_inbox(template, root / "inbox-warmup", 1)
    flow_run(warm, fresh(root, "warmup"), FAST + ["batch.max_workers=1"])
    middle = time.perf_counter()
    direct_run(warm, fresh(root, "warmup-direct"), FAST)
    print(
        f"warm-up, not counted: flow run of 1 capture (embedded server start) {middle - start:.1f} s, "
        f"direct run of 1 capture (first in-process fit) {time.perf_counter() - middle:.1f} s"
    )

    # Tables 1 and 2, measured back to back per size.
    isolation = has_isolation()
    flow_s: dict[tuple[int, int], float] = {}
    direct_s: dict[int, float] = {}
    inproc_s: dict[int, float] = {}
    thread_s: dict[int, float] = {}
    dask_s: dict[int, float] = {}
    pooled = has_pool()
    child_s: dict[int, float] = {}
    pool_s: dict[int, float] = {}
    for n in sizes:
        inbox = make_inbox(template, root / f"inbox-{n}", n)
        directs, threaded, inprocs = [], [], []
        for r in range(max(1, args.best_of)):  # the cheap in-process runs: best of a few, interleaved
            directs.append(direct_run(inbox, fresh(root, f"direct-{n}-{r}"), FAST))
            with ThreadPoolExecutor(1) as pool:  # the same loop in a worker thread, as the flow runs it
                threaded.append(pool.submit(direct_run, inbox, fresh(root, f"direct-{n}-t{r}"), FAST).result())
            if isolation:
                inprocs.append(
                    flow_run(
                        inbox,
                        fresh(root, f"flow-{n}-inproc-{r}"),
                        FAST + ["batch.max_workers=1", "batch.isolate_stages=false"],
                    )[0]
                )
        direct_s[n] = min(directs)
        thread_s[n] = min(threaded)
        if isolation:
            inproc_s[n] = min(inprocs)
        for k in workers:
            flow_s[n, k], _ = flow_run(inbox, fresh(root, f"flow-{n}-{k}"), FAST + [f"batch.max_workers={k}"])
        if pooled:  # isolation with a child process per heavy step, and with the warm worker pool
            isolated = FAST + ["batch.max_workers=1", "batch.isolate_stages=true"]
            child_s[n], _ = flow_run(inbox, fresh(root, f"flow-{n}-child"), isolated + ["batch.worker_pool=false"])
            pool_s[n], _ = flow_run(inbox, fresh(root, f"flow-{n}-pool"), isolated + ["batch.worker_pool=true"])
        if args.dask:  # the same with prefect-dask: a LocalCluster of max(workers) single-thread processes
            dask_s[n], _ = flow_run(
                inbox, fresh(root, f"flow-{n}-dask"), FAST + [f"batch.max_workers={max(workers)}", "batch.runner=dask"]
            )
        print(
            f"  N={n}: direct {'/'.join(f'{t:.1f}' for t in directs)} s, "
            f"direct in a thread {'/'.join(f'{t:.1f}' for t in threaded)} s, "
            + ", ".join(f"flow K={k} {flow_s[n, k]:.1f} s" for k in workers)
            + (f", flow K=1 in-process stages {'/'.join(f'{t:.1f}' for t in inprocs)} s" if isolation else "")
            + (
                f", flow K=1 child per step {child_s[n]:.1f} s, flow K=1 worker pool {pool_s[n]:.1f} s"
                if pooled
                else ""
            ),
            flush=True,
        )

    setting = f", batch.isolate_stages={_batch_config(FAST).isolate_stages}" if isolation else ""
    if pooled and _batch_config(FAST).isolate_stages:
        setting += f" worker_pool={_batch_config(FAST).worker_pool}"
    print(f"\nThroughput against N (batch flow, local inbox, no DVC remote, fresh work folder each{setting})")
    header = f"{'N':>4}{'runner':>9}{'workers':>9}{'wall s':>9}{'captures/s':>12}{'s/capture':>11}{'vs 1 worker':>13}"
    print(header)
    print("-" * len(header))
    for n in sizes:
        rows = [("threads", k, flow_s[n, k]) for k in workers] + (
            [("dask", max(workers), dask_s[n])] if n in dask_s else []
        )
        for runner, k, t in rows:
            print(f"{n:>4}{runner:>9}{k:>9}{t:>9.2f}{n / t:>12.3f}{t / n:>11.2f}{flow_s[n, 1] / t:>12.2f}x")

    print(
        "\nDirect vs orchestrated (stage steps in a Python loop vs the batch flow, max_workers=1); "
        "overhead per capture = (run - direct loop) / N, against the loop in the main thread and in a thread"
    )
    header = (
        f"{'N':>4}  {'mode':<33}{'wall s':>8}{'captures/s':>12}{'overhead s/capture':>20}{'%':>8}"
        f"{'vs thread s/capture':>21}{'%':>8}"
    )
    print(header)
    print("-" * len(header))
    for n in sizes:
        d, dt = direct_s[n], thread_s[n]
        modes = [
            ("direct loop (main thread)", d),
            ("direct loop (one worker thread)", dt),
            (f"batch flow{setting.replace(', batch.', ' ')}", flow_s[n, 1]),
        ]
        if isolation:
            modes.append(("batch flow isolate_stages=False", inproc_s[n]))
        for index, (label, t) in enumerate(modes):
            over = "" if index == 0 else f"{(t - d) / n:>20.3f}{100 * (t - d) / d:>7.1f}%"
            over += "" if index < 2 else f"{(t - dt) / n:>21.3f}{100 * (t - dt) / dt:>7.1f}%"
            print(f"{n:>4}  {label:<33}{t:>8.2f}{n / t:>12.3f}{over}")

    if pooled:
        isolation_table(sizes, inproc_s, child_s, pool_s)

    # Table 3: the no-op rerun.
    m = args.noop_captures
    inbox = make_inbox(template, root / f"inbox-noop-{m}", m)
    work = fresh(root, "noop")
    if has_isolation():  # the cheapest way through: no child process per capture (not part of the work key)
        cheap = CHEAP + ["batch.isolate_stages=false"]
    else:
        cheap = CHEAP
    code_before = code_version()
    t_first, _ = flow_run(inbox, work, cheap)
    code_after = code_version()
    plans = [plan_run(inbox, work, cheap) for _ in range(args.repeats)]
    print(
        f"\nNo-op rerun over {m} captures (cheapest schedule: one 1-iteration stage, no overlays; "
        f"{_describe(_batch_config(cheap))})"
    )
    print(
        f"first pass through the flow: {t_first:.1f} s, {m / t_first:.2f} captures/s, {t_first / m:.2f} s per capture"
    )
    if code_after != code_before or any(p[1] for p in plans):
        print(
            f"SKIPPED: the rerun is not a no-op ({plans[0][1]} pending; code version {code_before} -> "
            f"{code_after}): the checkout changed during the benchmark"
        )
        return
    clis = [cli_run(inbox, work, cheap, timeout=120) for _ in range(args.repeats)]
    header = f"{'how':<44}{'median s':>10}{'worst s':>9}{'per capture ms':>16}{'< 5 s':>7}"
    print(header)
    print("-" * len(header))
    for label, times in (
        (f"subprocess: python -m capture3d.cli batch (x{args.repeats})", [c[0] for c in clis]),
        (f"in-process: load_params + plan() (x{args.repeats})", [p[0] for p in plans]),
    ):
        med, worst = statistics.median(times), max(times)
        print(
            f"{label:<44}{med:>10.3f}{worst:>9.3f}{1000 * med / m:>16.2f}{'yes' if worst < NOOP_TARGET_S else 'NO':>7}"
        )
    for _seconds, rc, line in clis:
        if rc != 0 or "nothing to do" not in line:
            print(f"WARNING: the subprocess rerun did not report a no-op (exit {rc}): {line}")
    print(f"subprocess said: {clis[0][2]}")


def _batch_config(overrides: list[str]):
    from capture3d.config import load_params
    from capture3d.ops.batch_plan import load_batch_config

    return load_batch_config(load_params(PARAMS, overrides))


def _describe(config) -> str:
    text = f"batch.max_workers={config.max_workers}"
    return text + (f", isolate_stages={config.isolate_stages}" if hasattr(config, "isolate_stages") else "")


def isolation_table(
    sizes: list[int], inproc_s: dict[int, float], child_s: dict[int, float], pool_s: dict[int, float]
) -> None:
    """Table 2b: isolation overhead per capture of a child process per heavy step and of the
    worker pool, against the in-process flow of the same size (max_workers=1)."""
    print(
        "\nIsolation overhead (batch flow, max_workers=1, isolate_stages=true vs false); overhead per capture = "
        f"(run - in-process run) / N; target for the pool <= {POOL_TARGET_S:.0f} s per capture"
    )
    header = (
        f"{'N':>4}  {'heavy steps run':<34}{'wall s':>8}{'s/capture':>11}{'overhead s/capture':>20}"
        f"{'vs in-process':>15}{'<= 1 s':>8}"
    )
    print(header)
    print("-" * len(header))
    for n in sizes:
        base = inproc_s[n]
        for label, t in (
            ("in-process (isolate_stages=false)", base),
            ("child process per step", child_s[n]),
            ("warm worker pool", pool_s[n]),
        ):
            over = (t - base) / n
            mark = "" if t == base else ("yes" if over <= POOL_TARGET_S else "NO")
            print(f"{n:>4}  {label:<34}{t:>8.2f}{t / n:>11.2f}{over:>20.3f}{t / base:>14.2f}x{mark:>8}")
    lo, hi = min(sizes), max(sizes)
    if hi == lo:
        print("(one size only: no marginal figure)")
        return
    print(f"marginal overhead of one more capture (N={lo} -> N={hi}, the pool's worker start left out):")
    steady = inproc_s[hi] - inproc_s[lo]
    for label, runs in (("child process per step", child_s), ("warm worker pool", pool_s)):
        print(f"  {label:<32}{((runs[hi] - runs[lo]) - steady) / (hi - lo):>8.3f} s/capture")


def has_pool() -> bool:
    """Whether this checkout's batch section has ``worker_pool`` (warm workers for the heavy steps)."""
    from capture3d.ops.batch_plan import BatchConfig

    return "worker_pool" in {f.name for f in dataclasses.fields(BatchConfig)}


def has_isolation() -> bool:
    """Whether this checkout's batch section has ``isolate_stages`` (heavy stages in a child process)."""
    from capture3d.ops.batch_plan import BatchConfig

    return "isolate_stages" in {f.name for f in dataclasses.fields(BatchConfig)}


if __name__ == "__main__":
    main()
