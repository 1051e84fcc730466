"""Warm worker processes for the heavy steps of a batch: memory returned and crashes contained,
without a new interpreter per step.

Input: picklable top-level functions and their arguments (:meth:`WorkerPool.call`), or a catalog
step of one capture (:meth:`WorkerPool.run_step`, :func:`capture3d.ops.steps.run_in_process` in a
worker). Output: the function's return value, or a one-line ``RuntimeError``:
:class:`WorkerTaskError` (the task raised; the worker goes on) or :class:`WorkerCrashed` (the
worker process died: segfault, SIGKILL, out-of-memory kill, ``os._exit``; only that task fails,
and a fresh worker takes its place).

Workers are started with the ``spawn`` method (a fresh interpreter: no fork of a process holding
torch and threads) and keep their imports, and in a dict local to each worker's loop the models
built by its steps (see :mod:`capture3d.ops.steps`), across tasks. After each task a worker
collects garbage, returns freed heap to the system (``malloc_trim``) and reports its resident
memory; the pool retires it (and starts a replacement at once) after ``max_tasks_per_worker``
tasks or when that memory exceeds ``max_rss_mb``. A worker exits by itself when the process that
started it dies. A worker runs its tasks in its main thread, with torch's intra-op threads set to
``threads_per_worker`` (default: the usable cores divided by ``size``, so a full pool does not
oversubscribe the machine). Measured on 2 cores, a 150-step NeRF fit: 28 s in a worker's main
thread, 45 s (one core busy) in a second thread after the main thread's first parallel region --
the layout used before, which had been chosen because small body fits on busy cores spent ~10x the
CPU time in the main thread. Any number of threads may use one pool at once; at most ``size`` workers run.
No Prefect here: the batch flow opens one pool per run (:mod:`capture3d.flows.batch`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

_STOP = b"stop"
_SIGNALS = {
    signal.SIGKILL: "was killed (SIGKILL: out of memory, or killed from outside)",
    signal.SIGSEGV: "crashed (SIGSEGV: segmentation fault)",
    signal.SIGBUS: "crashed (SIGBUS: bus error)",
    signal.SIGABRT: "aborted (SIGABRT)",
    signal.SIGTERM: "was terminated (SIGTERM)",
}


class WorkerTaskError(RuntimeError):
    """The task raised in the worker: its one-line message (the worker stays)."""


class WorkerCrashed(RuntimeError):
    """The worker process died while running the task (one line; the pool replaces the worker)."""


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    tasks: int = 0
    warming: bool = False  # the warm-up request's reply is still to be read


def exit_reason(exitcode: int | None) -> str:
    """How a worker process ended, in words, from its exit code (negative: the signal)."""
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
        except ValueError:
            return f"was killed by signal {-exitcode}"
        return _SIGNALS.get(sig, f"was killed by {sig.name}")
    return f"exited with status {exitcode}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _rss_mb() -> float:
    """This process's resident memory now, in MiB (Linux ``/proc``; elsewhere its peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _release_memory() -> None:
    """Garbage collection, CUDA's cached blocks, and freed heap back to the system (glibc)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _warm_torch_threads() -> None:
    """One small parallel torch op in the main thread, when a preloaded module imported torch.
    Measured on 2 busy cores: when the first parallel region ran in the task thread instead, every
    later small fit there took ~13x the CPU time (2.8 s instead of 0.21 s for the bodies fit of
    benchmarks/bench_batch.py)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    x = torch.rand(300, 300)  # 300x300 (float32): big enough for torch's intra-op parallel loops
    float((torch.linalg.solve(x + 300 * torch.eye(300), x) @ x).sum())


def _watch_parent() -> None:
    """Exit at once when the process that started this worker dies (its pipe alone would only be
    noticed after the current task)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)


def usable_cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _worker_main(
    conn: multiprocessing.connection.Connection, preload: Sequence[str], log_level: int, threads: int
) -> None:
    """A worker's loop: import ``preload``, then run requests until told to stop or the pipe closes.
    Request: pickled ``(fn, args, kwargs, with_models)``; reply: pickled ``(ok, value or one-line
    error, resident MiB after the task)``. ``models`` (local: lives as long as this process) is
    passed to a request that asks for it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it closes the pool)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s worker %(process)d %(name)s: %(message)s")
    threading.Thread(target=_watch_parent, name="watch-parent", daemon=True).start()
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the task importing it reports the error
            logger.warning("worker: preloading %s failed: %s", name, _one_line(exc))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    _warm_torch_threads()
    models: dict[Hashable, Any] = {}
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if data == _STOP:
            return
        try:
            fn, args, kwargs, with_models = pickle.loads(data)
            extra = {"models": models} if with_models else {}
            reply = (True, fn(*args, **kwargs, **extra))
        except Exception as exc:  # noqa: BLE001 - one line to the parent
            reply = (False, _one_line(exc))
        del data
        _release_memory()
        try:
            payload = pickle.dumps((*reply, _rss_mb()))
        except Exception as exc:  # noqa: BLE001
            payload = pickle.dumps((False, f"result not picklable: {_one_line(exc)}", _rss_mb()))
        del reply
        conn.send_bytes(payload)


def model_keys(models: Mapping[Hashable, Any]) -> list[Hashable]:
    """The keys of the models a worker has built (for :meth:`WorkerPool.call_with_models`)."""
    return list(models)


class WorkerPool:
    """At most ``size`` warm worker processes shared by the calling threads (a context manager:
    :meth:`close` at exit). ``max_tasks_per_worker`` (0: no limit) and ``max_rss_mb`` (0: no
    cap) retire a worker after a task; ``preload``: modules every worker imports when it starts;
    ``prestart``: workers started at once (their start overlaps the caller's own work);
    ``warmup``: ``fn(*args, models=...)`` sent to every new worker as soon as it starts (e.g. build
    the models its steps will use), its failure only logged; ``threads_per_worker``: torch's
    intra-op threads in each worker (0: usable cores // ``size``)."""

    def __init__(
        self,
        size: int,
        max_tasks_per_worker: int = 0,
        max_rss_mb: float = 0.0,
        preload: Sequence[str] = (),
        prestart: int = 0,
        warmup: tuple[Callable[..., Any], tuple[Any, ...]] | None = None,
        threads_per_worker: int = 0,
    ) -> None:
        if size < 1:
            raise ValueError(f"worker pool size must be at least 1, got {size}")
        self.size = size
        self.threads_per_worker = threads_per_worker if threads_per_worker > 0 else max(1, usable_cores() // size)
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_rss_mb = max_rss_mb
        self.preload = tuple(preload)
        self._warmup = pickle.dumps((warmup[0], warmup[1], {}, True)) if warmup is not None else None
        self._context = multiprocessing.get_context("spawn")
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._busy: list[_Worker] = []
        self._retired: list[_Worker] = []
        self._closed = False
        self.started = self.recycled = self.crashed = 0
        with self._cond:
            for _ in range(min(prestart, size)):
                self._idle.append(self._spawn())

    # -- public API ---------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in a worker; its value. Raises :class:`WorkerTaskError` or
        :class:`WorkerCrashed` (one line each)."""
        return self._run(fn, args, kwargs, with_models=False, what=getattr(fn, "__name__", "task"))

    def call_with_models(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """:meth:`call`, with the worker's model cache given to ``fn`` as ``models=``."""
        return self._run(fn, args, kwargs, with_models=True, what=getattr(fn, "__name__", "task"))

    def run_step(
        self,
        kind: str,
        step_name: str,
        name: str,
        capture: Path,
        results: Path,
        params: dict[str, Any],
        out: Path | None = None,
    ) -> dict[str, Any]:
        """:func:`capture3d.ops.steps.run_in_process` in a worker, with the worker's model cache;
        the step's summary metrics."""
        from capture3d.ops.steps import run_in_process

        return self._run(
            run_in_process,
            (kind, step_name, name, Path(capture), Path(results), params, out),
            {},
            with_models=True,
            what=f"{step_name} of capture '{name}'",
        )

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (idle and busy)."""
        with self._cond:
            return [w.process.pid for w in self._idle + self._busy if w.process.pid is not None]

    def busy_pids(self) -> list[int]:
        """Process ids of the workers running a task now."""
        with self._cond:
            return [w.process.pid for w in self._busy if w.process.pid is not None]

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop every worker (idle ones are asked to, busy ones are killed), wait for them."""
        with self._cond:
            self._closed = True
            workers, self._idle = self._idle, []
            busy = list(self._busy)
            retired, self._retired = self._retired, []
            self._cond.notify_all()
        for worker in workers:
            self._stop(worker)
        for worker in busy:
            worker.process.kill()
        for worker in workers + busy + retired:
            worker.process.join(timeout_s)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout_s)
            worker.conn.close()
        logger.info(
            "worker pool closed: %d started, %d recycled, %d crashed", self.started, self.recycled, self.crashed
        )

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        """A new worker (called with the lock held; the start does not wait for its imports)."""
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main,
            args=(child_end, self.preload, logging.getLogger().getEffectiveLevel(), self.threads_per_worker),
            name="capture3d-worker",
            daemon=True,
        )
        process.start()
        child_end.close()
        self.started += 1
        logger.debug("worker %d started", process.pid)
        worker = _Worker(process, parent_end)
        if self._warmup is not None:
            with contextlib.suppress(OSError):
                parent_end.send_bytes(self._warmup)
                worker.warming = True
        return worker

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("worker pool is closed")
                if self._idle:
                    worker = self._idle.pop()  # the last used: its models are built
                elif len(self._busy) < self.size:
                    worker = self._spawn()
                else:
                    self._cond.wait()
                    continue
                self._busy.append(worker)
                return worker

    def _run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], with_models: bool, what: str
    ) -> Any:
        request = pickle.dumps((fn, args, kwargs, with_models))  # a pickling error leaves no worker touched
        worker = self._handed(request)
        try:
            reply = self._reply(worker)
        except BaseException:
            self._discard(worker, crashed=False)
            raise
        if reply is None:
            worker.process.join(5.0)
            self._discard(worker, crashed=True)
            reason = exit_reason(worker.process.exitcode)
            raise WorkerCrashed(f"worker process {worker.process.pid} {reason} while running {what}")
        ok, value, rss_mb = reply
        worker.tasks += 1
        self._release(worker, rss_mb)
        if not ok:
            raise WorkerTaskError(value)
        return value

    def _handed(self, request: bytes) -> _Worker:
        """A worker that has received ``request`` (after its warm-up); one that died while idle
        (killed, out of memory) is replaced and the request goes to the next (it never started)."""
        while True:
            worker = self._acquire()
            try:
                if (self._warmed(worker) if worker.warming else True) and worker.process.is_alive():
                    worker.conn.send_bytes(request)
                    return worker
            except OSError:
                pass
            except BaseException:
                self._discard(worker, crashed=False)
                raise
            worker.process.join(5.0)
            self._discard(worker, crashed=True)

    def _reply(self, worker: _Worker) -> tuple[Any, ...] | None:
        """The worker's next reply; None when it died first."""
        ready = multiprocessing.connection.wait([worker.conn, worker.process.sentinel])
        if worker.conn in ready:
            try:
                return pickle.loads(worker.conn.recv_bytes())
            except (EOFError, OSError):
                return None
        return None

    def _warmed(self, worker: _Worker) -> bool:
        """Wait for the worker's warm-up (a failure is logged: the task itself will say what is
        wrong); False when the worker died meanwhile."""
        reply = self._reply(worker)
        worker.warming = False
        if reply is not None and not reply[0]:
            logger.warning("worker %d: warm-up failed: %s", worker.process.pid, reply[1])
        return reply is not None

    def _release(self, worker: _Worker, rss_mb: float) -> None:
        """Back to the idle workers, or retired (and replaced at once) past its task or memory limit."""
        over_tasks = self.max_tasks_per_worker > 0 and worker.tasks >= self.max_tasks_per_worker
        over_memory = self.max_rss_mb > 0 and rss_mb > self.max_rss_mb
        with self._cond:
            self._busy.remove(worker)
            self._reap()
            if self._closed:
                self._retired.append(worker)
                self._stop(worker)
            elif over_tasks or over_memory:
                logger.info(
                    "worker %d recycled after %d task(s), %.0f MiB resident%s",
                    worker.process.pid,
                    worker.tasks,
                    rss_mb,
                    f" (cap {self.max_rss_mb:.0f} MiB)" if over_memory else "",
                )
                self._stop(worker)
                self._retired.append(worker)
                self.recycled += 1
                self._idle.append(self._spawn())
            else:
                self._idle.append(worker)
            self._cond.notify()

    def _discard(self, worker: _Worker, crashed: bool) -> None:
        """Drop a worker that died (or whose caller was interrupted: it is killed) and start another."""
        if worker.process.is_alive():
            worker.process.kill()
        with self._cond:
            self._busy.remove(worker)
            self._retired.append(worker)
            if crashed:
                self.crashed += 1
                logger.warning("worker %d %s; replaced", worker.process.pid, exit_reason(worker.process.exitcode))
            if not self._closed:
                self._idle.append(self._spawn())
            self._cond.notify()

    def _reap(self) -> None:
        """Forget retired workers that have exited (called with the lock held)."""
        for worker in [w for w in self._retired if not w.process.is_alive()]:
            worker.process.join(0)
            worker.conn.close()
            self._retired.remove(worker)

    @staticmethod
    def _stop(worker: _Worker) -> None:
        with contextlib.suppress(OSError):
            worker.conn.send_bytes(_STOP)
