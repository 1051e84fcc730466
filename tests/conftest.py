"""Shared fixtures: repository paths, the real-data folder, the project's params, synthetic photos.

Also the set-up that lets the suite run on several processes (``pytest -n auto``, pytest-xdist; the
Makefile's ``PYTEST_ARGS``): each process its own Prefect home, one compute thread per core, each
test module on one worker, and the longest modules started first.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from capture3d.config import load_params

REPO_ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- per-process set-up
# Runs when pytest loads this file: before any test module imports torch, open3d or prefect.

XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... in a pytest-xdist worker, else None


def _private_prefect_home() -> str:
    """A fresh PREFECT_HOME for this process (and the subprocesses it starts), removed at exit.

    The flows' embedded Prefect server keeps its SQLite database in PREFECT_HOME; two workers (or two
    test runs on one machine) sharing ~/.prefect/prefect.db would block each other's writes.
    """
    home = tempfile.mkdtemp(prefix=f"capture3d-prefect-{XDIST_WORKER or 'main'}-")
    atexit.register(shutil.rmtree, home, True)
    return home


def _threads_per_worker() -> int | None:
    """Cores / workers under pytest-xdist (at least 1); None in a plain run (libraries' defaults)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if XDIST_WORKER is None or not workers:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(workers))


os.environ["PREFECT_HOME"] = _private_prefect_home()
# a fresh database migrates before the embedded server answers: more than the 20 s default on a busy machine
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
WORKER_THREADS = _threads_per_worker()
if WORKER_THREADS is not None:
    # torch's OpenMP and the BLAS pools of this worker and of the stage subprocesses it starts: N workers x
    # all cores each oversubscribes the machine (torch's spinning threads most). An explicit setting wins.
    # Open3D (TBB) and COLMAP size their pools from the CPU affinity instead; measured: left alone, they
    # fill the cores the other worker leaves idle (pinning each worker to its own core was 15% slower).
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(WORKER_THREADS))


# ----------------------------------------------------------------------------- xdist scheduling
# ``--dist loadscope --no-loadscope-reorder`` (pyproject addopts) hands each worker whole modules, so a
# module-scoped fixture is built once, in the order collected. (``--dist loadgroup`` with xdist_group
# marks would be finer, but pytest-xdist 3.8 cannot group on pytest >= 9.2: pytest-xdist issue #1386.)
# The modules are ordered longest first (the durations of earlier runs, kept in .pytest_cache; else
# EXPECTED_SECONDS; else a guess from the ``slow`` mark): the long ones overlap, the short ones fill the end.

DURATIONS_KEY = "capture3d/durations"
# seconds on a 2-core machine for the longest tests, read from `pytest --durations=60`; order only
# (a fresh clone has no .pytest_cache). A stale or missing entry costs balance, never a test.
EXPECTED_SECONDS = {
    "tests/test_dvc_pipeline.py::test_dvc_repro_flow_then_status_clean": 270.0,
    "tests/test_register_scans_stage.py::test_bunny_from_random_perturbations": 57.0,
    "tests/test_synthesize_capture.py::test_sfm_stage_recovers_ground_truth_poses": 57.0,
    "tests/test_visibility.py::test_poses_repeatable_across_thread_counts": 44.0,
    "tests/test_register_scans_stage.py::test_synthetic_scans_registered": 41.0,
    "tests/test_visibility.py::test_seed_that_main_refused_is_fully_placed": 35.0,
    "tests/test_multiway.py::test_bunny_multiway": 35.0,
    "tests/test_cli.py::test_register_then_evaluate_registration": 34.0,
    "tests/test_cli.py::test_train_fcgf_flow_then_evaluate_features": 27.0,
    "tests/test_package.py::test_init_add_repro_in_a_user_project": 35.0,
    "tests/test_remote_resume.py::test_killed_fit_resumes_from_the_remote_in_a_fresh_work_folder": 30.0,
    "tests/test_registration_scale.py::test_bunny_scalable_matches_all_pairs": 25.0,
    "tests/test_sfm_retrieval.py::test_sfm_stage_with_retrieval_registers_every_view": 15.0,
    "tests/test_workers.py::test_step_in_a_worker_matches_in_process_and_reuses_its_model": 10.0,
}
SLOW_GUESS_S, DEFAULT_GUESS_S = 30.0, 0.5


def _plain_nodeid(nodeid: str) -> str:
    """``nodeid`` without the ``@group`` suffix that ``--dist loadgroup`` appends (pytest < 9.2)."""
    head, sep, tail = nodeid.rpartition("@")
    return head if sep and "]" not in tail and "::" not in tail else nodeid


def _longest_first(items: list[pytest.Item], durations: dict[str, float]) -> list[pytest.Item]:
    """The loadscope units (a module's tests; a test class's), longest first; ties keep collection order."""
    units: dict[str, list[pytest.Item]] = defaultdict(list)
    for item in items:
        units[item.nodeid.rsplit("::", 1)[0]].append(item)

    def seconds(item: pytest.Item) -> float:
        guess = SLOW_GUESS_S if item.get_closest_marker("slow") else DEFAULT_GUESS_S
        return durations.get(item.nodeid, EXPECTED_SECONDS.get(item.nodeid, guess))

    order = sorted(units.values(), key=lambda unit: -sum(seconds(i) for i in unit))
    return [item for unit in order for item in unit]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # every worker gets the same durations, so all collect the same order
        items[:] = _longest_first(items, workerinput.get(DURATIONS_KEY, {}))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """On the xdist controller: hand each worker the durations of earlier runs."""
    cache = getattr(node.config, "cache", None)
    node.workerinput[DURATIONS_KEY] = cache.get(DURATIONS_KEY, {}) if cache is not None else {}


_durations: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if XDIST_WORKER is None:  # the controller (or a plain run) sees every test's setup, call and teardown
        _durations[_plain_nodeid(report.nodeid)] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    cache = getattr(session.config, "cache", None)
    if XDIST_WORKER is None and cache is not None and _durations:
        cache.set(DURATIONS_KEY, {**cache.get(DURATIONS_KEY, {}), **{k: round(v, 2) for k, v in _durations.items()}})


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding ``params.yaml`` and ``capture3d/``)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data(repo_root: Path) -> Path:
    """``<repo>/../shared/data``; tests that use it are skipped when it is absent."""
    path = repo_root.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is absent: real-data test skipped")
    return path


@pytest.fixture
def base_params(repo_root: Path) -> dict[str, Any]:
    """The project's params.yaml as a plain dict (a fresh copy per test)."""
    return load_params(repo_root / "params.yaml")


# ----------------------------------------------------------------------------- synthetic photos

TEXTURE_SIZE = 1024  # pixels of the texture, covering the plane square [-1, 1]^2


def noise_texture(seed: int, size: int = TEXTURE_SIZE) -> np.ndarray:
    """A seeded multi-scale random texture, (size, size, 3) uint8: blobs at several scales for SIFT."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((size, size, 3), dtype=np.float64)
    for cells, weight in ((8, 0.6), (32, 1.0), (128, 1.0), (512, 0.5)):
        small = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        up = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        acc += weight * (np.asarray(up, dtype=np.float64) - 127.5)
    acc = acc / np.abs(acc).max() * 127.0 + 128.0
    return np.clip(acc, 0, 255).astype(np.uint8)


def _rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """cam_from_world rotation of a camera looking along world +z, perturbed by yaw/pitch/roll."""
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    Rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    Rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return Rz @ Rx @ Ry


def plane_views(texture: np.ndarray, n: int, width: int, height: int, seed: int) -> list[Image.Image]:
    """``n`` pinhole views (focal ~0.9 * width) of the textured plane z = 0, cameras on an arc at z < 0.

    Each view is the texture warped by the exact plane-to-image homography ``K [r1 r2 t] A``
    (A: texture pixel -> plane coordinates), so the views are geometrically consistent.
    """
    rng = np.random.default_rng(seed + 1)
    size = texture.shape[0]
    f = 0.9 * width
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    A = np.array([[2.0 / size, 0, -1.0], [0, 2.0 / size, -1.0], [0, 0, 1.0]])  # texture px -> plane
    tex = Image.fromarray(texture)
    views = []
    for x in np.linspace(-0.3, 0.3, n):
        C = np.array([x, 0.08 * rng.normal(), -1.2 + 0.1 * rng.normal()])
        # look back toward the plane's centre: yaw against the x offset, plus small jitter
        yaw = -np.degrees(np.arctan2(x, 1.2)) * 0.8 + 2.0 * rng.normal()
        R = _rotation(yaw, 3.0 * rng.normal(), 4.0 * rng.normal())
        t = -R @ C
        H_img_from_tex = K @ np.column_stack([R[:, 0], R[:, 1], t]) @ A
        H_tex_from_img = np.linalg.inv(H_img_from_tex)
        H_tex_from_img /= H_tex_from_img[2, 2]
        coeffs = tuple(H_tex_from_img.ravel()[:8])
        views.append(tex.transform((width, height), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC))
    return views


@pytest.fixture
def make_textured_images(tmp_path: Path) -> Callable[..., list[Path]]:
    """Factory: ``make(folder=None, n=8, width=320, height=240, seed=0, prefix="view")`` writes
    ``n`` overlapping JPEG views of one seeded random-texture plane and returns their paths.

    Deterministic for a given seed. The default folder is ``tmp_path / "capture" / "images"``.
    """

    def make(
        folder: Path | None = None,
        n: int = 8,
        width: int = 320,
        height: int = 240,
        seed: int = 0,
        prefix: str = "view",
    ) -> list[Path]:
        folder = Path(folder) if folder is not None else tmp_path / "capture" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, img in enumerate(plane_views(noise_texture(seed), n, width, height, seed)):
            path = folder / f"{prefix}_{i:02d}.jpg"
            img.save(path, quality=95)
            paths.append(path)
        return paths

    return make
