"""Fits that survive a lost worker: a batch step's resume state kept on the remote.

A 3DGS fit run through the batch's stage task with an S3 remote (moto's server on loopback) is
SIGKILL-ed once its state is on the remote; a rerun in a fresh, empty work folder fetches it,
resumes, and ends on the same loss curve as an unbroken run; the remote state is then deleted.
The folder remote, the key's identity and the failure path are checked on their own.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from capture3d.catalog import step
from capture3d.config import load_params
from capture3d.flows.stage_tasks import resume_key, run_resumable_step, step_paths
from capture3d.ops.remote_state import PREFIX, RemoteStore, synced
from capture3d.stages.common import state_path_for
from capture3d.tasks.cameras import PinholeCamera, write_transforms_json
from capture3d.tasks.nvs.gaussians.render import render
from tests.gaussian_helpers import camera, random_splats, ring_cameras
from tests.s3_helpers import start_moto

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

W, H = 32, 24
NAME = "blobs"
FIT = [  # ~30 ms per iteration on one CPU thread: the fit lasts ~7 s, checkpoints every 5
    "fit_gaussians.iterations=240",
    "fit_gaussians.checkpoint_every=5",
    "fit_gaussians.log_every=1",
    "fit_gaussians.max_seconds=0",
    "fit_gaussians.cpu_compile=false",
    "fit_gaussians.device=cpu",
    "fit_gaussians.orbit_frames=0",
    "fit_gaussians.sh_degree=0",
    "fit_gaussians.data.resolution_scale=1.0",
    "fit_gaussians.densify.refine_start=100000",
    "batch.checkpoint_every_s=0.1",
]
CHILD = """
import sys
from pathlib import Path
import torch
from capture3d.config import load_params
from capture3d.flows.stage_tasks import stage_task
torch.set_num_threads(1)
repo, work, *overrides = sys.argv[1:]
params = load_params(Path(repo) / "params.yaml", overrides)
results = Path(work) / "results" / "blobs"
stage_task("fit_gaussians").fn("photos", "fit_gaussians", "blobs", Path(work) / "inbox" / "blobs", results, params)
"""


@pytest.fixture(scope="module")
def posed(tmp_path_factory) -> Path:
    """9 views (32x24) of 100 coloured Gaussians: PNGs + transforms.json + a jittered points.ply."""
    root = tmp_path_factory.mktemp("posed") / "sfm"
    (root / "images").mkdir(parents=True)
    gt = {k: v.float() for k, v in random_splats(100, 0, 11, torch.float32, spread=0.8, size=0.2).items()}
    gt["opacities"] = gt["opacities"].abs() + 1.0
    cams = []
    for i, (K, pose) in enumerate(ring_cameras(9, W, H, radius=3.5, height_z=1.2)):
        img = render(gt, camera(K, pose, W, H, torch.float32), 0, torch.zeros(3), "cpu").image.clamp(0, 1)
        Image.fromarray((img.numpy() * 255 + 0.5).astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
        cams.append(PinholeCamera(f"{i:03d}.png", W, H, K, pose[:3, :3], pose[:3, 3]))
    pts = gt["means"].numpy() + np.random.default_rng(0).normal(0, 0.05, (100, 3))
    header = (
        "ply\nformat ascii 1.0\nelement vertex 100\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    (root / "points.ply").write_text(header + "".join(f"{x} {y} {z} 128 128 128\n" for x, y, z in pts))
    write_transforms_json(
        root / "transforms.json", cams, file_prefix="images/", ply_file_path="points.ply", nerfstudio_world=False
    )
    return root


@pytest.fixture
def aws_env(monkeypatch):
    """moto's credentials through the standard chain (environment variables)."""
    for key, value in (
        ("AWS_ACCESS_KEY_ID", "testing-key-id"),
        ("AWS_SECRET_ACCESS_KEY", "testing-secret"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(key, value)


def _work(root: Path, posed: Path) -> Path:
    """A fresh work folder whose capture has its SfM output (the fit's input) in place."""
    shutil.copytree(posed, root / "results" / NAME / "sfm")
    return root


def _fit_here(repo: Path, work: Path, overrides: list[str]) -> dict:
    """The fit through the stage task in this process, on one thread (as the child); its metrics."""
    params = load_params(repo / "params.yaml", overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_resumable_step("photos", "fit_gaussians", NAME, work / "inbox" / NAME, work / "results" / NAME, params)
    finally:
        torch.set_num_threads(threads)
    return json.loads((work / "results" / NAME / "fit_gaussians" / "metrics.json").read_text())


def _curve(work: Path) -> np.ndarray:
    """The loss curve (iteration, loss, psnr, num_gaussians) the fit wrote."""
    with (work / "results" / NAME / "fit_gaussians" / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return np.array([[float(r[k]) for k in ("iteration", "loss", "psnr", "num_gaussians")] for r in rows])


def _objects(client, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_killed_fit_resumes_from_the_remote_in_a_fresh_work_folder(posed, tmp_path, repo_root, aws_env):
    server, url = start_moto()
    try:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket="store")
        remote = [*FIT, "batch.remote=s3://store/dvc", f"batch.endpoint_url={url}"]

        # 1. a worker fits and is SIGKILL-ed once its resume state is on the remote
        lost = _work(tmp_path / "lost", posed)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(repo_root), str(lost), *remote],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        state_prefix = f"dvc/{PREFIX}/{NAME}/fit_gaussians/"
        # wait for the resume state itself (a CI run once saw the outputs' DVC push first: on busy
        # cores the state's upload thread and this poll lost the race against a 3.6 s fit)
        while (
            not any(k.startswith(state_prefix) for k in _objects(client, "store"))
            and proc.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        finished = proc.poll() is not None
        if not finished:
            os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        assert not finished, f"the fit ended before its state reached the remote: {stderr.decode()[-2000:]}"
        keys = _objects(client, "store")
        assert len(keys) == 1 and keys[0].startswith(state_prefix), keys
        assert not (lost / "results" / NAME / "fit_gaussians").exists(), "the kill came after the fit ended"

        # 2. another worker, in a fresh empty work folder, runs the step again: it resumes
        fresh = _work(tmp_path / "fresh", posed)
        metrics = _fit_here(repo_root, fresh, remote)
        assert 0 < metrics["resumed_from"] < 240 and metrics["resumed_from"] % 5 == 0, metrics["resumed_from"]
        assert metrics["iterations"] == 240
        assert _objects(client, "store") == [], "the finished step's remote state was not deleted"
        assert not state_path_for(fresh / "results" / NAME / "fit_gaussians", "fit_gaussians").exists()
    finally:
        server.stop()

    # 3. the same fit unbroken (no remote): the resumed run's curve is its curve
    whole = _work(tmp_path / "whole", posed)
    reference = _fit_here(repo_root, whole, FIT)
    assert reference["resumed_from"] == 0
    resumed, unbroken = _curve(fresh), _curve(whole)
    assert resumed.shape == unbroken.shape == (240, 4)
    np.testing.assert_allclose(resumed, unbroken, rtol=1e-5, atol=1e-6)
    assert abs(metrics["psnr"] - reference["psnr"]) < 1e-3, (metrics["psnr"], reference["psnr"])
    # the fit did something: the loss fell (a flat curve would match trivially)
    assert unbroken[-10:, 1].mean() < 0.8 * unbroken[:10, 1].mean()


def _write_state(path: Path, payload: bytes) -> None:
    """What a fit's checkpoint does: a temporary sibling renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def test_folder_remote_pull_upload_delete_and_failure(tmp_path):
    store = RemoteStore(str(tmp_path / "remote"))
    key = "cap/fit_nerf/abc.pt"
    local = tmp_path / "w1" / "results" / ".fit_nerf.fit_nerf-state.pt"
    local.parent.mkdir(parents=True)
    with pytest.raises(RuntimeError, match="worker lost"), synced(store, key, local, every_s=0.02) as report:
        _write_state(local, b"state at 5")
        deadline = time.monotonic() + 10
        while not store.exists(key) and time.monotonic() < deadline:
            time.sleep(0.01)
        _write_state(local, b"state at 10")  # uploaded by the final sync when the block fails
        raise RuntimeError("worker lost")
    assert not report.pulled and report.uploads >= 1 and not report.deleted
    remote_file = tmp_path / "remote" / PREFIX / key
    assert remote_file.read_bytes() == b"state at 10"

    # a fresh worker fetches it, and on success the remote copy goes
    fresh = tmp_path / "w2" / ".fit_nerf.fit_nerf-state.pt"
    with synced(store, key, fresh, every_s=0.02) as report:
        assert fresh.read_bytes() == b"state at 10"
        fresh.unlink()  # the stage deletes its state when it succeeds
    assert report.pulled and report.uploads == 0 and report.deleted
    assert not remote_file.exists()

    # a worker with a state of its own keeps it (nothing fetched)
    _write_state(remote_file, b"remote")
    own = tmp_path / "w3" / "state.pt"
    own.parent.mkdir()
    _write_state(own, b"own")
    with synced(store, key, own, every_s=10.0) as report:
        pass
    assert not report.pulled and own.read_bytes() == b"own"


def test_key_changes_with_params_code_inputs_and_capture(posed, tmp_path, repo_root):
    spec = step("fit_gaussians")
    work = _work(tmp_path / "w", posed)
    results = work / "results" / NAME
    params = load_params(repo_root / "params.yaml", FIT)
    out, data = step_paths(spec, NAME, work / "inbox" / NAME, results, params, None)
    assert out == results / "fit_gaussians" and data == [results / "sfm"]  # no sparse/undistorted: the inputs
    key = resume_key(spec, NAME, params, data)
    assert key.startswith(f"{NAME}/fit_gaussians/") and key.endswith(".pt")
    assert resume_key(spec, NAME, load_params(repo_root / "params.yaml", FIT), data) == key  # stable
    other_params = load_params(repo_root / "params.yaml", [*FIT, "fit_gaussians.seed=1"])
    assert resume_key(spec, NAME, other_params, data) != key
    # a batch setting is not part of the fit's identity
    assert resume_key(spec, NAME, load_params(repo_root / "params.yaml", [*FIT, "batch.max_workers=5"]), data) == key
    assert resume_key(spec, "other", params, data) != key
    image = results / "sfm" / "images" / "000.png"
    image.write_bytes(image.read_bytes() + b"\0")
    assert resume_key(spec, NAME, params, data) != key


def test_resume_state_names_match_the_stages():
    """The state file the sync watches is the one each fitting stage writes."""
    from capture3d.stages import fit_gaussians, fit_nerf, train_fcgf

    out = Path("/r/cap/x")
    assert train_fcgf.state_path_for(out) == state_path_for(out, step("train_fcgf").resume_state)
    for module in (fit_gaussians, fit_nerf):
        name = module.__name__.rsplit(".", 1)[1]
        assert f'state_path_for(out, "{step(name).resume_state}")' in inspect.getsource(module.run)
