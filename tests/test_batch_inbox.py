"""`capture3d batch`: an S3 inbox (moto's server on loopback) processed into a work area, artifacts
pushed to a DVC S3 remote on the same server, manifests, no-op reruns, and faults injected:
transient S3 errors, a SIGKILL-ed batch, a corrupt capture, and two batches at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capture3d.cli import main as cli_main
from capture3d.ops.names import UnsafeNameError, check_capture_name, check_relative_key
from tests.s3_helpers import FAULTS, FaultProxy, start_moto

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

SECRET = "capture3d-test-secret-Zq81vX"  # must never appear in any artifact, manifest, report or log
FAST = [
    "fit_bodies.stages=[{iterations: 10, learning_rate: 0.05, body: false, pose_weight: 1.0, shape_weight: 1.0, "
    "bend_weight: 1.0, limit_weight: 100.0}, {iterations: 20, learning_rate: 0.05, body: true, pose_weight: 4.0, "
    "shape_weight: 4.0, bend_weight: 1.0, limit_weight: 100.0}]",
    "fit_bodies.overlays=false",
    "batch.isolate_stages=false",  # a child process per fit costs seconds; test_corrupt_capture_fails_alone isolates
]


@pytest.fixture(scope="module")
def aws_env():
    """Credentials for moto through the standard chain (environment variables), restored after."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing-key-id", AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def moto_url(aws_env):
    server, url = start_moto()
    yield url
    server.stop()


@pytest.fixture(scope="module")
def body_captures(tmp_path_factory) -> Path:
    """Three small synthetic body captures (one body, two views each) in a local folder."""
    pytest.importorskip("anny")
    from capture3d.stages import synthesize_bodies
    from capture3d.tasks.body.anny_model import AnnyBody

    root = tmp_path_factory.mktemp("captures")
    model = AnnyBody()
    for i in range(3):
        config = synthesize_bodies.SynthesizeBodiesConfig(
            count=1, views=2, width=160, height=120, fov_deg=55.0, noise_px=2.0, seed=i
        )
        synthesize_bodies.run(synthesize_bodies.Inputs(), root / f"people{i}", config, model)
    return root


def _client(url: str):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")


def _upload(url: str, bucket: str, prefix: str, folder: Path) -> int:
    client = _client(url)
    client.create_bucket(Bucket=bucket)
    count = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
            count += 1
    return count


def _batch(*args: str) -> int:
    return cli_main(["batch", *args, *[a for s in FAST for a in ("--set", s)]])


def _manifest(work: Path, name: str) -> dict:
    return json.loads((work / "manifests" / f"{name}.json").read_text())


def _runs(work: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((work / "runs").glob("*.json"))]


def _leftovers(work: Path) -> list[str]:
    return [str(p) for p in work.rglob(".*") if (".tmp-" in p.name or ".old-" in p.name) and ".dvc" not in p.parts]


def test_names_from_keys_cannot_escape():
    for good in ("people0", "scan_2024-01.a", "A1"):
        assert check_capture_name(good) == good
    for bad in ("..", ".", ".hidden", "-x", "a/b", "a\\b", "", "x" * 129, "caf\u00e9", "a b", "a\x00b"):
        with pytest.raises(UnsafeNameError):
            check_capture_name(bad)
    assert check_relative_key("keypoints/view 0.json") == "keypoints/view 0.json"
    for bad in ("../x", "a/../b", "/abs", "a//b", "a\\b", "a/./b", "", "a/\nb"):
        with pytest.raises(UnsafeNameError):
            check_relative_key(bad)


def test_checkpoints_load_with_weights_only(repo_root: Path):
    """Every torch.load in the package passes weights_only=True (a checkpoint never runs code)."""
    offenders, calls = [], 0
    for path in (repo_root / "capture3d").rglob("*.py"):
        text = path.read_text()
        start = 0
        while (i := text.find("torch.load(", start)) >= 0:
            call = text[i : text.find(")", i) + 1]
            calls += call.startswith("torch.load(path")
            if "weights_only=True" not in call and call != "torch.load(weights_only=True)":
                offenders.append(f"{path.relative_to(repo_root)}: {call}")
            start = i + 1
    assert calls >= 3, "expected the checkpoint loaders (train_state, fit_nerf, fcgf_checkpoint)"
    assert not offenders, offenders


@pytest.mark.slow
def test_s3_inbox_to_dvc_remote_with_manifests_and_noop_rerun(moto_url, body_captures, tmp_path, capsys, caplog):
    """Two good captures and unsafe keys in an S3 inbox: the good ones are fitted, pushed to the DVC
    S3 remote (pulled back identical) and get manifests; the unsafe names are refused without a
    file written for them; a rerun does nothing; a changed object re-runs its capture alone."""
    _upload(moto_url, "inbox", "incoming", body_captures)
    client = _client(moto_url)
    for key in (
        "incoming/../escape/keypoints/a.json",
        "incoming/we$ird/keypoints/a.json",
        "incoming/people9/../../x/keypoints.json",
    ):
        client.put_object(Bucket="inbox", Key=key, Body=b"{}")
    client.create_bucket(Bucket="store")
    work = tmp_path / "work"
    rc = _batch("s3://inbox/incoming", "--work", str(work), "--endpoint-url", moto_url, "--remote", "s3://store/dvc")
    assert rc == 1, "refused names must make the exit status non-zero"

    names = ["people0", "people1", "people2"]
    for name in names:
        manifest = _manifest(work, name)
        assert manifest["status"] == "ok" and manifest["kind"] == "bodies"
        assert (
            manifest["source"]["url"] == "s3://inbox/incoming"
            and manifest["source"]["fetched"] == manifest["source"]["files"]
        )
        assert len(manifest["source"]["input_hash"]) == 64 and len(manifest["params"]["hash"]) == 64
        assert manifest["code_version"] and manifest["started"] <= manifest["finished"]
        assert [s["name"] for s in manifest["stages"]] == ["fit_bodies", "evaluate_bodies"]
        assert manifest["metrics"]["bodies_fitted"] == 1 and manifest["metrics"]["body_mpjpe_mm"] > 0, manifest[
            "metrics"
        ]
        pushed = {o["path"]: o for o in manifest["dvc"]["outputs"]}
        assert set(pushed) == {f"results/{name}/fit_bodies", f"results/{name}/evaluate_bodies"}
        assert all(o["md5"].endswith(".dir") and o["remote"] == "s3://store/dvc" for o in pushed.values())
    run = _runs(work)[-1]
    refused = {r["capture"]: r for r in run["captures"] if r["status"] == "refused"}
    assert {"..", "we$ird", "people9"} <= set(refused), run["captures"]
    assert (
        not list(tmp_path.rglob("escape"))
        and not list(tmp_path.rglob("x"))
        and not (work / "inbox" / "people9").exists()
    )

    # The remote holds the outputs: drop them and the cache, pull them back, compare.
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="store", Prefix="dvc/").get("Contents", [])]
    assert len(keys) >= 6, keys
    fitted = work / "results" / "people1" / "fit_bodies"
    before = {p.relative_to(fitted): p.read_bytes() for p in fitted.rglob("*") if p.is_file()}
    subprocess.run(["rm", "-rf", str(fitted), str(work / ".dvc" / "cache")], check=True)
    pull = subprocess.run(
        [sys.executable, "-m", "dvc", "pull", "-q", "results/people1/fit_bodies.dvc"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert pull.returncode == 0, pull.stderr
    assert {p.relative_to(fitted): p.read_bytes() for p in fitted.rglob("*") if p.is_file()} == before

    # No-op rerun: nothing pending, no Prefect, well under the 5 s target.
    stamp = (work / "manifests" / "people0.json").read_bytes()
    start, cpu = time.perf_counter(), time.process_time()
    assert (
        _batch("s3://inbox/incoming", "--work", str(work), "--endpoint-url", moto_url, "--remote", "s3://store/dvc")
        == 1
    )
    # a no-op: a listing and a manifest read per capture. CPU time, so the other xdist worker's load
    # cannot fail it; the wall-clock bound only catches a run that did real work.
    assert time.process_time() - cpu < 5.0 and time.perf_counter() - start < 30.0
    assert "nothing to do (3 current, 3 refused)" in capsys.readouterr().out
    assert (work / "manifests" / "people0.json").read_bytes() == stamp

    # One changed object: only its capture runs again, fetching that one file.
    key = next(
        o["Key"] for o in client.list_objects_v2(Bucket="inbox", Prefix="incoming/people2/keypoints/")["Contents"]
    )
    body = json.loads(client.get_object(Bucket="inbox", Key=key)["Body"].read())
    client.put_object(Bucket="inbox", Key=key, Body=json.dumps(body, indent=1).encode())
    assert (
        _batch("s3://inbox/incoming", "--work", str(work), "--endpoint-url", moto_url, "--remote", "s3://store/dvc")
        == 1
    )
    assert (work / "manifests" / "people0.json").read_bytes() == stamp
    again = _manifest(work, "people2")
    assert again["source"]["fetched"] == 1 and again["source"]["reused"] == again["source"]["files"] - 1

    # Credentials never reach an artifact, a manifest, a report or the log.
    assert SECRET not in capsys.readouterr().out + caplog.text
    leaks = [p for p in work.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks


@pytest.mark.slow
def test_transient_s3_faults_are_retried(moto_url, body_captures, tmp_path, capsys):
    """Every object's first GET through the proxy fails (500, SlowDown, dropped connection, body cut
    half-way), listings get SlowDown: the batch still completes with intact inputs."""
    proxy = FaultProxy(moto_url)
    try:
        _upload(moto_url, "faulty", "in", body_captures)
        _client(moto_url).create_bucket(Bucket="faulty-store")
        work = tmp_path / "work"
        rc = _batch(
            "s3://faulty/in",
            "--work",
            str(work),
            "--endpoint-url",
            proxy.url,
            "--remote",
            "s3://faulty-store/dvc",
            "--set",
            "batch.retry_base_s=0.01",
        )
        out = capsys.readouterr().out
    finally:
        proxy.close()
    assert rc == 0, out[-2000:]
    assert all(proxy.injected[f] >= 1 for f in FAULTS), proxy.injected
    for i in range(3):
        manifest = _manifest(work, f"people{i}")
        assert manifest["status"] == "ok" and manifest["source"]["fetched"] == manifest["source"]["files"]
        for item in manifest["inputs"]:  # every mirrored file is whole
            assert (work / "inbox" / f"people{i}" / item["key"]).stat().st_size == item["size"]


def _local_inbox(body_captures: Path, root: Path, corrupt: bool = False) -> Path:
    inbox = root / "inbox"
    subprocess.run(["cp", "-r", str(body_captures), str(inbox)], check=True)
    if corrupt:
        bad = inbox / "people1" / "keypoints"
        for path in bad.glob("*.json"):
            path.write_text("{ this is not json")
    return inbox


@pytest.mark.slow
def test_corrupt_capture_fails_alone(body_captures, tmp_path, capsys):
    """With the heavy stages in child processes (the default): the corrupt capture's one-line error
    comes back from its child; the others finish. A seeded earlier good run with far better body
    errors makes this run flag regressions in its summary, report and state."""
    inbox = _local_inbox(body_captures, tmp_path, corrupt=True)
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    baseline = {
        "run_id": "20000101T000000-1",
        "code_version": "0",
        "finished": "2000-01-01T00:00:00+00:00",
        "captures": [{"capture": f"people{i}", "status": "ok", "body_mpjpe_mm": 1.0} for i in (0, 2)],
    }
    (work / "runs" / "20000101T000000-1.json").write_text(json.dumps(baseline))
    assert _batch(str(inbox), "--work", str(work), "--set", "batch.isolate_stages=true") == 1
    summary = _runs(work)[-1]
    assert summary["baseline"] == "20000101T000000-1"
    assert sorted(r.split(":")[0] for r in summary["regressions"]) == ["people0", "people2"], summary["regressions"]
    html = Path(summary["report"]).read_text()
    assert "Regressions against 20000101T000000-1" in html and "not valid JSON" in html
    assert "2 regression(s) against the last good run" in capsys.readouterr().out
    rows = {r["capture"]: r for r in summary["captures"]}
    assert rows["people0"]["status"] == "ok" and rows["people2"]["status"] == "ok"
    assert rows["people1"]["status"] == "failed"
    reason = rows["people1"]["reason"]
    assert reason.startswith("capture 'people1': stage fit_bodies: keypoints file") and "not valid JSON" in reason, (
        reason
    )
    assert "people1" in next((work / "runs").glob("*.md")).read_text()
    assert not (work / "manifests" / "people1.json").exists()
    assert not (work / "results" / "people1" / "fit_bodies").exists()


def _spawn(inbox: Path, work: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "capture3d.cli",
        "batch",
        str(inbox),
        "--work",
        str(work),
        "--remote",
        str(work.parent / "remote"),
        *[a for s in FAST for a in ("--set", s)],
        *extra,
    ]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )


@pytest.mark.slow
def test_sigkilled_batch_resumes_without_recomputing(body_captures, tmp_path):
    inbox = _local_inbox(body_captures, tmp_path)
    work = tmp_path / "work"
    proc = _spawn(inbox, work, "--set", "batch.max_workers=1")
    deadline = time.monotonic() + 240
    while not list((work / "manifests").glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.stem: p.read_bytes() for p in (work / "manifests").glob("*.json")}
    assert 1 <= len(done) < 3, f"kill came too late or too early: {sorted(done)}"
    # Whatever is visible is whole: every stage folder present has its metrics.
    for stage in (work / "results").glob("*/*"):
        if not stage.name.startswith(".") and stage.suffix != ".dvc":
            assert (stage / "metrics.json").is_file(), f"partial output {stage}"
    stamps = {p: p.stat().st_mtime_ns for name in done for p in (work / "state" / name / "stages").glob("*.json")}

    assert _batch(str(inbox), "--work", str(work), "--remote", str(tmp_path / "remote")) == 0
    for name, data in done.items():
        assert (work / "manifests" / f"{name}.json").read_bytes() == data, f"{name} was recomputed"
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()), "a finished stage ran again"
    assert all(_manifest(work, f"people{i}")["status"] == "ok" for i in range(3))
    assert not _leftovers(work), _leftovers(work)


@pytest.mark.slow
def test_two_batches_at_once(body_captures, tmp_path):
    inbox = _local_inbox(body_captures, tmp_path)
    work = tmp_path / "work"
    procs = [_spawn(inbox, work), _spawn(inbox, work)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-1500:] for o in outputs)
    runs = _runs(work)
    assert len(runs) == 2
    for i in range(3):
        statuses = sorted(next(r["status"] for r in run["captures"] if r["capture"] == f"people{i}") for run in runs)
        assert statuses == ["current", "ok"], f"people{i} processed {statuses}"
        assert _manifest(work, f"people{i}")["status"] == "ok"
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--cloud", "--json"], cwd=work, capture_output=True, text=True
    )
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout + status.stderr
    assert not _leftovers(work)


def test_kind_sections_come_from_the_catalog():
    """The planner's params sections per kind (part of the work key) are the ones the kind's stages
    read, taken from the catalog; capture kinds are recognised from file names alone."""
    from capture3d.catalog import batch_kinds, pipeline
    from capture3d.ops.batch_plan import kind_sections
    from capture3d.ops.inbox import KINDS, detect_kind

    assert set(batch_kinds()) == set(KINDS)
    assert kind_sections("photos") == ("sfm", "evaluate_sfm", "fit_gaussians", "fit_nerf")
    assert kind_sections("scans") == ("register_scans", "evaluate_registration")
    assert kind_sections("bodies") == ("fit_bodies", "evaluate_bodies")
    for kind in batch_kinds():
        assert kind_sections(kind) == tuple(s.name for s in pipeline(kind).capture_steps), kind
    assert kind_sections("") == ()
    assert detect_kind(["keypoints/a.json", "images/a.png"]) == "bodies"
    assert detect_kind(["scans/a.ply", "gt/poses.json"]) == "scans"
    assert detect_kind(["IMG_0001.JPG"]) == "photos"
    assert detect_kind(["notes.txt"]) == ""


@pytest.mark.slow
def test_dask_local_cluster_runs_the_captures(body_captures, tmp_path):
    """The same batch on a Dask LocalCluster (2 worker processes) through prefect-dask."""
    pytest.importorskip("prefect_dask")
    inbox = _local_inbox(body_captures, tmp_path)
    work = tmp_path / "work"
    assert _batch(str(inbox), "--work", str(work), "--names", "people0,people1", "--set", "batch.runner=dask") == 0
    assert [_manifest(work, f"people{i}")["status"] for i in range(2)] == ["ok", "ok"]
    assert not (work / "manifests" / "people2.json").exists()


@pytest.mark.slow
def test_deployment_runs_once_on_a_gpu_pool_worker(body_captures, tmp_path):
    """`capture3d deploy` registers the batch on the GPU and CPU work pools (Prefect's local
    database in a fresh PREFECT_HOME); a worker on the GPU pool runs the due run end to end."""
    inbox = _local_inbox(body_captures, tmp_path)
    work = tmp_path / "work"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    overrides = [a for s in FAST for a in ("--set", s)]
    cli = [sys.executable, "-m", "capture3d.cli"]
    deploy = subprocess.run(
        [*cli, "deploy", str(inbox), "--work", str(work), "--interval", "86400", "--run-now", *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deploy.returncode == 0, deploy.stderr[-2000:]
    assert "deployment batch/batch-gpu" in deploy.stdout and "deployment batch/batch-cpu" in deploy.stdout
    worker = subprocess.run(
        [*cli, "worker", "--pool", "capture3d-gpu", "--run-once"], env=env, capture_output=True, text=True, timeout=600
    )
    assert worker.returncode == 0, worker.stderr[-2000:]
    runs = _runs(work)
    assert len(runs) == 1, "the worker ran the deployment's flow once"
    assert sorted(r["status"] for r in runs[0]["captures"]) == ["ok", "ok", "ok"]
    assert all(_manifest(work, f"people{i}")["kind"] == "bodies" for i in range(3))
