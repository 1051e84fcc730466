"""``capture3d samples``: the registry, checksummed and resumable downloads, and the fetched capture in a
user project.

A tiny HTTP server on loopback (with Range support, and a switch that cuts a response after N bytes)
serves either a fake mirror built in tmp_path (the logic tests, which need nothing else) or
``../shared/data`` (the real-sample tests, skipped when it is absent).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from capture3d import cli
from capture3d.config import load_params
from capture3d.ops import samples
from capture3d.ops.samples import Sample, SampleError
from tests.http_helpers import SampleServer, serve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[SampleServer]:
    """A fake mirror (sample 'tiny' in ``kind/tiny``: a 200 kB binary and a text file) on loopback."""
    folder = tmp_path / "mirror" / "kind" / "tiny"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    (folder / "sub" / "b.txt").write_text("hello sample\n")
    yield from serve(tmp_path / "mirror")


@pytest.fixture
def shared_server(shared_data: Path) -> Iterator[SampleServer]:
    yield from serve(shared_data)


def _tiny(root: Path) -> Sample:
    folder = root / "kind" / "tiny"
    return Sample(
        "tiny", "kind/tiny", "test", "made here", "none", None, (), tuple(samples.scan_folder(folder))
    )  # fmt: skip


@pytest.fixture
def tiny_registry(mirror: SampleServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sample:
    """The shipped registry replaced by one holding 'tiny' (for the CLI)."""
    sample = _tiny(mirror.root)
    entry = {
        **{k: getattr(sample, k) for k in ("name", "folder", "title", "source", "licence")},
        "upstream": None,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in sample.files],
    }
    path = tmp_path / "registry.json"
    path.write_text(samples.registry_text({"comment": "test", "samples": [entry]}))
    monkeypatch.setattr(samples, "REGISTRY", path)
    monkeypatch.delenv(samples.MIRROR_ENV, raising=False)
    return sample


def _error_lines(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------------------- the shipped registry


def test_registry_is_shipped_and_upstream_urls_follow_the_prefixes() -> None:
    registry = samples.load_registry()
    assert {"fountain_p11", "sacre_coeur", "bunny", "3dmatch_pair", "fern", "coco"} <= set(registry)
    fountain = registry["fountain_p11"]
    cams = [f for f in fountain.files if f.path.startswith("gt_cameras/")]
    images = [f for f in fountain.files if f.path.startswith("images/")]
    assert len(cams) == len(images) == 11
    assert fountain.upstream_url(cams[0]).endswith("/fountain-P11/gt_dense_cameras/0000.jpg.camera")
    assert fountain.upstream_url(images[0]) is None  # downscaled here: mirror only
    assert samples.file_url(fountain, images[0], "http://m/") == "http://m/sfm/fountain_p11/images/0000.jpg"
    for s in registry.values():
        assert all(re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.size > 0 for f in s.files), s.name
    # the wheel carries it: pyproject's package-data covers the file
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["capture3d"]
    assert any(fnmatch.fnmatch(samples.REGISTRY.relative_to(ROOT / "capture3d").as_posix(), p) for p in patterns)


def test_registry_matches_shared_data(shared_data: Path) -> None:
    """Every sample's sizes and sha256 are those of ../shared/data (python -m capture3d.ops.samples --update)."""
    assert samples.main(["--check", str(shared_data)]) == 0


def test_resolve_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(samples.MIRROR_ENV, raising=False)
    assert samples.resolve_mirror(None) is None
    monkeypatch.setenv(samples.MIRROR_ENV, "https://example.org/c3d")
    assert samples.resolve_mirror(None) == "https://example.org/c3d/"
    assert samples.resolve_mirror("http://127.0.0.1:9/x/") == "http://127.0.0.1:9/x/"  # the option wins
    assert samples.resolve_mirror(str(tmp_path)) == tmp_path.resolve().as_uri() + "/"


# ----------------------------------------------------------------------------- downloads (fake mirror)


def test_cut_connection_resumes_with_range(mirror: SampleServer, tmp_path: Path) -> None:
    sample = _tiny(mirror.root)
    mirror.cut["kind/tiny/a.bin"] = 70_000
    result = samples.fetch_sample(sample, tmp_path / "out", mirror.url, backoff_s=0.0)
    got = tmp_path / "out" / "kind" / "tiny"
    assert (got / "a.bin").read_bytes() == (mirror.root / "kind/tiny/a.bin").read_bytes()
    assert (got / "sub" / "b.txt").read_text() == "hello sample\n"
    assert [r for r in mirror.requests if r[0] == "kind/tiny/a.bin"] == [
        ("kind/tiny/a.bin", None),
        ("kind/tiny/a.bin", "bytes=70000-"),
    ]
    assert (result.downloaded, result.bytes_downloaded, result.present) == (2, sample.size, 0)
    assert sorted(p.name for p in got.parent.iterdir()) == ["tiny"]  # no staging folder left


def test_interrupted_run_resumes_next_time(mirror: SampleServer, tmp_path: Path) -> None:
    """A run that ran out of attempts leaves its .part file; the next run continues it with Range,
    and the sample folder appears only then."""
    sample = _tiny(mirror.root)
    mirror.cut["kind/tiny/a.bin"] = 50_000
    with pytest.raises(SampleError, match=r"sample 'tiny': file 'a.bin': failed after 1 attempts"):
        samples.fetch_sample(sample, tmp_path / "out", mirror.url, attempts=1, backoff_s=0.0)
    assert not (tmp_path / "out" / "kind" / "tiny").exists()
    assert (tmp_path / "out" / "kind" / ".tiny.download" / "a.bin.part").stat().st_size == 50_000
    samples.fetch_sample(sample, tmp_path / "out", mirror.url, backoff_s=0.0)
    assert mirror.requests[-2:] == [("kind/tiny/a.bin", "bytes=50000-"), ("kind/tiny/sub/b.txt", None)]
    assert samples.sha256_of(tmp_path / "out/kind/tiny/a.bin") == sample.files[0].sha256


def test_corrupted_file_is_refused_in_one_line(
    tiny_registry: Sample, mirror: SampleServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = mirror.root / "kind" / "tiny" / "sub" / "b.txt"
    bad.write_text("hello sampel\n")  # same size, other bytes
    rc = cli.main(["samples", "fetch", "tiny", "--to", str(tmp_path / "out"), "--mirror", mirror.url])
    assert rc != 0
    lines = _error_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: samples: sample 'tiny': file 'sub/b.txt' failed its checksum (sha256 ")
    assert hashlib.sha256(b"hello sampel\n").hexdigest()[:16] in lines[0]
    assert not (tmp_path / "out" / "kind" / "tiny").exists()  # nothing half-fetched appears


def test_missing_file_and_unknown_sample_and_no_mirror(
    tiny_registry: Sample, mirror: SampleServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (mirror.root / "kind" / "tiny" / "a.bin").unlink()
    out = str(tmp_path / "out")
    assert cli.main(["samples", "fetch", "tiny", "--to", out, "--mirror", mirror.url]) != 0
    (line,) = _error_lines(capsys)
    assert line.startswith("error: samples: sample 'tiny': file 'a.bin': HTTP 404")  # not retried
    assert [r[0] for r in mirror.requests].count("kind/tiny/a.bin") == 1
    assert cli.main(["samples", "fetch", "nope", "--to", out]) != 0
    assert _error_lines(capsys) == ["error: samples: unknown sample 'nope' (known: tiny)"]
    assert cli.main(["samples", "fetch", "tiny", "--to", str(tmp_path / "other")]) != 0  # no mirror, no upstream
    (line,) = _error_lines(capsys)
    assert "sample 'tiny': 2 file(s)" in line and "--mirror" in line
    assert not (tmp_path / "other").exists()  # refused before creating anything


def test_second_fetch_is_a_no_op_and_a_damaged_folder_is_repaired(
    tiny_registry: Sample, mirror: SampleServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["samples", "fetch", "--to", str(tmp_path / "out"), "--mirror", mirror.url]
    assert cli.main(args) == 0
    got = tmp_path / "out" / "kind" / "tiny"
    inode = (got / "a.bin").stat().st_ino
    before = len(mirror.requests)
    assert cli.main(args) == 0
    assert len(mirror.requests) == before  # nothing requested again
    assert "(0 downloaded, 2 already present)" in capsys.readouterr().out
    # a damaged file is fetched again; the verified one and the user's own file stay
    (got / "sub" / "b.txt").write_text("changed\n")
    (got / "notes.txt").write_text("mine\n")
    assert cli.main(args) == 0
    assert mirror.requests[before:] == [("kind/tiny/sub/b.txt", None)]
    assert (got / "sub" / "b.txt").read_text() == "hello sample\n" and (got / "notes.txt").read_text() == "mine\n"
    assert (got / "a.bin").stat().st_ino == inode  # linked, not downloaded
    assert "samples list" not in capsys.readouterr().err
    assert cli.main(["samples", "list"]) == 0
    assert "tiny" in capsys.readouterr().out


# ----------------------------------------------------------------------------- real samples


def test_fetch_fountain_then_add_it_to_a_project(shared_server: SampleServer, tmp_path: Path) -> None:
    """The issue's flow without a wheel: init a project, fetch fountain_p11 from a mirror laid out like
    ../shared/data (with its connection cut once), add it as a photo capture; the project's stages
    take it as they take the original (images, ground-truth cameras)."""
    from capture3d.ops.steps import step_inputs
    from capture3d.tasks.sfm.evaluate import read_ground_truth
    from capture3d.tasks.sfm.image_folder import scan_images

    shared_server.cut["sfm/fountain_p11/images/0005.jpg"] = 40_000
    home, to = tmp_path / "proj", tmp_path / "samples"
    assert cli.main(["init", str(home)]) == 0
    fetch = ["samples", "fetch", "fountain_p11", "--to", str(to), "--mirror", shared_server.url]
    assert cli.main(fetch) == 0
    sample = to / "sfm" / "fountain_p11"
    original = shared_server.root / "sfm" / "fountain_p11"
    files = sorted(p.relative_to(sample) for p in sample.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file())
    assert all((sample / f).read_bytes() == (original / f).read_bytes() for f in files)
    assert ("sfm/fountain_p11/images/0005.jpg", "bytes=40000-") in shared_server.requests
    before = len(shared_server.requests)
    assert cli.main(fetch) == 0 and len(shared_server.requests) == before  # second fetch: no-op

    assert cli.main(["add", "photos", "fountain", str(sample), "--project", str(home)]) == 0
    params = load_params(home / "params.yaml")
    assert params["captures"] == ["fountain"]
    assert "foreach: [fountain]" in (home / "dvc.yaml").read_text()  # evaluate_sfm: it has ground truth
    capture = home / "data" / "captures" / "fountain"
    sfm_inputs, _ = step_inputs("photos", "fountain", capture, home / "results", params, "sfm")
    folder = scan_images(sfm_inputs.image_dir)
    assert len(folder.names) == 11 and not folder.skipped and set(folder.sizes) == {(768, 512)}
    cameras = read_ground_truth(capture / "gt_cameras", "auto")
    assert len(cameras) == 11


def test_stale_part_that_fails_its_checksum_is_fetched_again_from_zero(mirror: SampleServer, tmp_path: Path) -> None:
    """Bytes left by an earlier run (here: of another version of the file) are resumed; the mix fails
    its checksum, so the file is fetched once more from zero instead of being refused or kept."""
    sample = _tiny(mirror.root)
    stale = tmp_path / "out" / "kind" / ".tiny.download" / "a.bin.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 50_000)
    samples.fetch_sample(sample, tmp_path / "out", mirror.url, backoff_s=0.0)
    assert [r for r in mirror.requests if r[0] == "kind/tiny/a.bin"] == [
        ("kind/tiny/a.bin", "bytes=50000-"),
        ("kind/tiny/a.bin", None),
    ]
    assert samples.sha256_of(tmp_path / "out/kind/tiny/a.bin") == sample.files[0].sha256
