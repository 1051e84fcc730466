"""Warm worker pool (capture3d.ops.workers): a step in a worker gives the in-process summary and
reuses its built model; a worker killed mid-task fails only that task, in one line, and a fresh
worker takes the next; task errors keep the worker; workers are recycled by task count and memory."""

from __future__ import annotations

import math
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from capture3d.config import load_params
from capture3d.ops.steps import run_in_process, run_step, warm_models
from capture3d.ops.workers import WorkerCrashed, WorkerPool, WorkerTaskError, model_keys

FAST = [
    "fit_bodies.stages=[{iterations: 10, learning_rate: 0.05, body: false, pose_weight: 1.0, shape_weight: 1.0, "
    "bend_weight: 1.0, limit_weight: 100.0}, {iterations: 20, learning_rate: 0.05, body: true, pose_weight: 4.0, "
    "shape_weight: 4.0, bend_weight: 1.0, limit_weight: 100.0}]",
    "fit_bodies.overlays=false",
    "fit_bodies.device=cpu",
]


def _wait_busy(pool: WorkerPool, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = pool.busy_pids()
        if busy:
            return busy[0]
        time.sleep(0.02)
    raise AssertionError("no worker became busy")


def test_step_in_a_worker_matches_in_process_and_reuses_its_model(repo_root: Path, tmp_path: Path):
    pytest.importorskip("anny")
    from capture3d.stages import synthesize_bodies

    capture = tmp_path / "people0"
    config = synthesize_bodies.SynthesizeBodiesConfig(
        count=1, views=2, width=160, height=120, fov_deg=55.0, noise_px=2.0, seed=0
    )
    params = load_params(repo_root / "params.yaml", FAST)
    warmup = (warm_models, (["fit_bodies"], params))
    with WorkerPool(
        1, preload=["capture3d.ops.steps", "capture3d.stages.fit_bodies"], prestart=1, warmup=warmup
    ) as pool:
        # the worker starts (imports, builds the model) while this process synthesizes the capture and fits it
        synthesize_bodies.run(synthesize_bodies.Inputs(), capture, config)
        expected = run_in_process("bodies", "fit_bodies", "people0", capture, tmp_path / "inproc", params)
        first = run_step("bodies", "fit_bodies", "people0", capture, tmp_path / "w1", params, isolate=True, pool=pool)
        pid = pool.pids
        second = pool.run_step("bodies", "fit_bodies", "people0", capture, tmp_path / "w2", params)
        keys = pool.call_with_models(model_keys)
        assert pool.pids == pid and pool.started == 1
    assert keys and len(keys) == 1 and keys[0][0] == "capture3d.stages.fit_bodies", keys  # warm-up's model reused
    assert expected and "body_mpjpe_mm" in expected, expected
    assert math.isfinite(expected["body_mpjpe_mm"]) and expected["body_mpjpe_mm"] < 200.0, expected
    for got in (first, second):
        assert set(got) == set(expected)
        for key, value in expected.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, got[key], value)
            else:
                assert got[key] == value, key
    assert (tmp_path / "w2" / "fit_bodies" / "metrics.json").is_file()


def test_killed_worker_fails_only_its_task_and_is_replaced():
    with WorkerPool(1) as pool, ThreadPoolExecutor(1) as threads:
        future = threads.submit(pool.call, time.sleep, 60)
        victim = _wait_busy(pool)
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerCrashed) as info:
            future.result(timeout=30)
        message = str(info.value)
        assert "\n" not in message and str(victim) in message and "SIGKILL" in message, message
        assert pool.call(os.getpid) not in (victim, os.getpid())  # the next task: a fresh worker
        with pytest.raises(WorkerCrashed, match="exited with status 3"):  # a step calling os._exit
            pool.call(os._exit, 3)
        assert pool.crashed == 2 and pool.call(abs, -7) == 7
        idle = pool.pids[0]
        os.kill(idle, signal.SIGKILL)  # an idle worker dies (out-of-memory kill): the next task never started,
        os.waitid(os.P_PID, idle, os.WEXITED | os.WNOWAIT)  # so it runs on a replacement
        assert pool.call(abs, -8) == 8 and pool.crashed == 3 and idle not in pool.pids


def test_task_error_keeps_the_worker_and_threads_share_the_pool(caplog):
    with WorkerPool(2, warmup=(int, ("x",))) as pool, ThreadPoolExecutor(1) as threads:
        pid = pool.call(os.getpid)
        with pytest.raises(WorkerTaskError, match=r"^invalid literal for int\(\) with base 10: 'x'$"):
            pool.call(int, "x")
        assert pool.call(os.getpid) == pid and pool.started == 1
        assert "warm-up failed: 'models' is an invalid keyword argument for int()" in caplog.text  # logged only
        future = threads.submit(pool.call, time.sleep, 1.0)  # one thread holds a worker ...
        held = _wait_busy(pool)
        other = pool.call(os.getpid)  # ... another gets the second one meanwhile
        future.result(timeout=30)
        assert other != held and pool.started == 2


def test_workers_are_recycled_after_max_tasks_and_above_the_memory_cap():
    with WorkerPool(1, max_tasks_per_worker=2) as pool:
        pids = [pool.call(os.getpid) for _ in range(5)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4], pids
        assert pool.recycled == 2
    with WorkerPool(1, max_rss_mb=1.0) as pool:  # any interpreter is above 1 MiB: replaced after each task
        pids = [pool.call(os.getpid) for _ in range(3)]
        assert len(set(pids)) == 3 and pool.recycled == 3, pids
        live = pool.pids
    for pid in live + pids:  # closed: every worker has exited and been reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
