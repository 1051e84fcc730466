"""The cross-stage HTML quality report: a realistic work area (real sfm, register_scans,
evaluate_registration, fit_bodies and evaluate_bodies outputs; the NVS fits, too slow here, as
files in the exact format they write), the regression check, escaping, and a headless-Chromium
screenshot that must show rendered plots."""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from capture3d.config import load_params
from capture3d.ops.report import (
    DEFAULT_THRESHOLDS,
    build_report,
    compare_metrics,
    metric_direction,
    threshold_for,
)
from capture3d.stages import (
    evaluate_bodies,
    evaluate_registration,
    evaluate_sfm,
    fit_bodies,
    register_scans,
    sfm,
    synthesize_bodies,
    synthesize_scans,
)
from capture3d.stages.common import write_curve, write_json

EVIL = "<script>alert(1)</script>"
EVIL_NAME = 'x"><img src=x onerror=alert(2)>'


def _photos(repo_root: Path, results: Path) -> tuple[dict[str, float], list[Path]]:
    """sfm + evaluate_sfm: the demo's real output when ``make demo`` made it, else a real SfM of 6
    synthetic views (about 9 s). Returns the evaluate_sfm metrics and photos for the NVS files."""
    demo = repo_root / "results" / "demo"
    if (demo / "sfm" / "sparse" / "0" / "images.bin").is_file() and (demo / "sfm" / "points.ply").is_file():
        shutil.copytree(demo / "sfm", results / "sfm", ignore=shutil.ignore_patterns("undistorted", ".gitignore"))
        shutil.copytree(demo / "evaluate_sfm", results / "evaluate_sfm")
        photos = sorted((demo / "sfm" / "undistorted" / "images").glob("*.png"))
    else:
        from tests.conftest import noise_texture, plane_views

        capture = results.parent.parent / "inbox" / "garden"
        (capture / "images").mkdir(parents=True)
        for i, img in enumerate(plane_views(noise_texture(0), 6, 320, 240, 0)):
            img.save(capture / "images" / f"view_{i:02d}.jpg", quality=95)
        params = load_params(repo_root / "params.yaml")
        sfm.run(sfm.SfmInputs(capture, "garden"), results / "sfm", sfm.load_config(params))
        evaluate_sfm.run(
            evaluate_sfm.EvaluateSfmInputs(results / "sfm", None, None, "garden"),
            results / "evaluate_sfm",
            evaluate_sfm.load_config(params),
        )
        photos = sorted((capture / "images").glob("*.jpg"))
    return json.loads((results / "evaluate_sfm" / "metrics.json").read_text()), photos


def _nvs_fit(out: Path, method: str, photos: list[Path], offset: float) -> dict[str, float]:
    """What fit_gaussians / fit_nerf write, minus the model: held-out render | photo PNGs (the
    render a blurred photo), metrics.json with per-view scores and train_log.csv."""
    (out / "heldout").mkdir(parents=True)
    rows = []
    for i, path in enumerate(photos[::8] or photos[:1]):
        photo = Image.open(path).convert("RGB")
        photo = photo.resize((photo.width // 2, photo.height // 2))
        render = photo.filter(ImageFilter.GaussianBlur(2))
        canvas = Image.new("RGB", (2 * photo.width + 4, photo.height), "white")
        canvas.paste(render, (0, 0))
        canvas.paste(photo, (photo.width + 4, 0))
        canvas.save(out / "heldout" / f"{path.stem}.png")
        rows.append({"view": path.name, "psnr": 24.0 + offset + i, "ssim": 0.8})
    psnr = float(np.mean([r["psnr"] for r in rows]))
    write_json(
        out / "metrics.json",
        {
            "capture": "garden",
            "status": "ok",
            "method": method,
            "psnr": psnr,
            "ssim": 0.8,
            "psnr_init": 12.0,
            "ssim_init": 0.3,
            "per_view": rows,
            "num_test_views": len(rows),
            "iterations": 300,
        },
    )
    curve = [
        {
            "iteration": it,
            "loss": 0.3 * np.exp(-it / 100) + 0.02,
            "psnr": 12 + 14 * (1 - np.exp(-it / 100)),
            **({"num_gaussians": 2000 + 5 * it} if method == "3dgs" else {}),
            "seconds": it * 0.05,
        }
        for it in range(10, 310, 10)
    ]
    write_curve(out / "train_log.csv", curve)
    return {"psnr": psnr, "ssim": 0.8}


def _manifest(name: str, kind: str, results: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "manifest_version": 1,
        "capture": name,
        "kind": kind,
        "status": "ok",
        "work_key": "k" * 32,
        "run_id": "20260102T000000-2",
        "started": "2026-01-02T00:00:00.000+00:00",
        "finished": "2026-01-02T00:01:00.000+00:00",
        "seconds": 60.0,
        "code_version": "0.1.0+gabc.dirty",
        "params": {"hash": "p" * 64, "sections": []},
        "source": {"url": f"s3://inbox/{name}/", "input_hash": "i" * 64, "files": 3, "bytes": 12345},
        "dvc": {
            "remote": "s3://store/dvc",
            "outputs": [{"path": f"results/{name}/{p.name}", "md5": "m" * 32} for p in sorted(results.iterdir())],
        },
        "stages": [{"name": p.name, "seconds": 1.5, "reused": False} for p in sorted(results.iterdir())],
        "metrics": metrics,
    }


def _numeric(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@pytest.fixture(scope="module")
def work_area(tmp_path_factory, repo_root: Path) -> dict[str, Any]:
    import torch

    from capture3d.tasks.body.anny_model import AnnyBody

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # with open3d's OpenMP loaded too, more torch threads make the body fit 5x slower
    timings: dict[str, float] = {}
    work = tmp_path_factory.mktemp("report") / "work"
    params = load_params(repo_root / "params.yaml")
    inbox, results = work / "inbox", work / "results"

    t = time.perf_counter()
    garden = results / "garden"
    sfm_metrics, photos = _photos(repo_root, garden)
    gs = _nvs_fit(garden / "fit_gaussians", "3dgs", photos, 0.0)
    nerf = _nvs_fit(garden / "fit_nerf", "nerf (hash)", photos, -1.0)
    garden_metrics = {
        **sfm_metrics,
        "gaussians_psnr": gs["psnr"],
        "gaussians_ssim": gs["ssim"],
        "nerf_psnr": nerf["psnr"],
        "nerf_ssim": nerf["ssim"],
    }
    timings["photos"] = time.perf_counter() - t

    t = time.perf_counter()
    scans = synthesize_scans.run(
        synthesize_scans.Inputs(), inbox / "shelf", synthesize_scans.SynthesizeScansConfig(5, 0.002, 160, 120, 0)
    )
    reg = register_scans.run(
        register_scans.RegisterScansInputs(scans, "shelf"),
        results / "shelf" / "register_scans",
        register_scans.load_config(params),
    )
    ev = evaluate_registration.run(
        evaluate_registration.EvaluateRegistrationInputs(reg, scans, None, "shelf"),
        results / "shelf" / "evaluate_registration",
        evaluate_registration.load_config(params),
    )
    shelf_metrics = {**json.loads((reg / "metrics.json").read_text()), **json.loads((ev / "metrics.json").read_text())}
    timings["scans"] = time.perf_counter() - t

    t = time.perf_counter()
    section = {
        **params["fit_bodies"],
        "overlays": True,
        "stages": [{**s, "iterations": 5} for s in params["fit_bodies"]["stages"]],
    }
    try:
        anny = AnnyBody()
        bodies = synthesize_bodies.run(
            synthesize_bodies.Inputs(),
            inbox / "people",
            synthesize_bodies.SynthesizeBodiesConfig(
                count=3, views=1, width=160, height=120, fov_deg=55.0, noise_px=2.0, seed=0
            ),
            anny,
        )
        fitted = fit_bodies.run(
            fit_bodies.BodyInputs.from_capture(bodies, "people"),
            results / "people" / "fit_bodies",
            fit_bodies.load_config({"fit_bodies": section}),
            anny,
        )
        evaluate_bodies.run(
            evaluate_bodies.Inputs(fitted, bodies, "people"),
            results / "people" / "evaluate_bodies",
            evaluate_bodies.EvaluateBodiesConfig(0.1),
        )
    finally:
        torch.set_num_threads(threads)
    fit = json.loads((fitted / "metrics.json").read_text())
    people_metrics = {
        "bodies_fitted": fit["people_fitted"],
        "bodies_skipped": fit["people_skipped"],
        "body_error_norm": fit["median_error_norm"],
        "body_mpjpe_mm": fit["median_mpjpe_mm"],
        "body_pa_mpjpe_mm": fit["median_pa_mpjpe_mm"],
    }
    timings["bodies"] = time.perf_counter() - t

    # a failed capture that left odd files: sfm metrics without a model, a torn fit_nerf metrics.json, an
    # empty curve
    partial = results / "partial"
    (partial / "sfm").mkdir(parents=True)
    write_json(partial / "sfm" / "metrics.json", {"capture": "partial", "num_images": 3})
    (partial / "fit_nerf").mkdir()
    (partial / "fit_nerf" / "metrics.json").write_text("{torn")
    (partial / "fit_nerf" / "train_log.csv").write_text("")

    (work / "manifests").mkdir()
    captures = {
        "garden": ("photos", garden_metrics),
        "shelf": ("scans", shelf_metrics),
        "people": ("bodies", people_metrics),
    }
    rows = []
    for name, (kind, metrics) in captures.items():
        write_json(work / "manifests" / f"{name}.json", _manifest(name, kind, results / name, metrics))
        rows.append({"capture": name, "kind": kind, "status": "ok", "seconds": 60.0, "fetched": 3, **_numeric(metrics)})
    previous_rows = [dict(r) for r in rows] + [{"capture": "broken", "kind": "photos", "status": "ok"}]
    rows[1] = {"capture": "shelf", "status": "current"}  # unchanged since: its metrics are the manifest's
    rows += [
        {"capture": "broken", "kind": "photos", "status": "failed", "reason": f"capture 'broken': stage sfm: {EVIL}"},
        {"capture": "partial", "kind": "photos", "status": "failed", "reason": "stage fit_nerf: killed"},
        {"capture": EVIL_NAME, "status": "refused", "reason": f"unsafe name {EVIL}"},
    ]
    previous_rows[0].update(
        gaussians_psnr=garden_metrics["gaussians_psnr"] + 2.0,  # now 2 dB worse: regression
        nerf_psnr=garden_metrics["nerf_psnr"] + 0.1,
    )  # 0.1 dB worse: within tolerance
    previous_rows[1].update(fused_fscore=shelf_metrics["fused_fscore"] + 0.2)  # manifest's is 0.2 worse: regression
    previous_rows[2].update(body_mpjpe_mm=people_metrics["body_mpjpe_mm"] - 50.0)  # now 50 mm worse: regression
    (work / "runs").mkdir()
    write_json(
        work / "runs" / "20260101T000000-1.json",
        {
            "run_id": "20260101T000000-1",
            "code_version": "0.1.0+gold",
            "finished": "2026-01-01T00:05:00.000+00:00",
            "captures": previous_rows,
        },
    )
    write_json(
        work / "runs" / "20260102T000000-2.json",
        {
            "run_id": "20260102T000000-2",
            "code_version": "0.1.0+gnew",
            "finished": "2026-01-02T00:05:00.000+00:00",
            "captures": sorted(rows, key=lambda r: r["capture"]),
        },
    )
    t = time.perf_counter()
    result = build_report(work, work / "report" / "index.html", previous=work / "runs" / "20260101T000000-1.json")
    timings["report"] = time.perf_counter() - t
    print("work area timings (s):", {k: round(v, 2) for k, v in timings.items()})
    return {"work": work, "result": result, "html": result.path.read_text(), "photos": len(photos)}


def test_report_has_every_section(work_area) -> None:
    result, text = work_area["result"], work_area["html"]
    assert result.path.is_file() and result.run_id == "20260102T000000-2"
    assert result.previous_run_id == "20260101T000000-1" and result.num_runs == 2
    assert result.status_counts == {"ok": 2, "current": 1, "failed": 2, "refused": 1}
    assert result.num_captures == 4  # garden, shelf, people, partial (results or manifest)
    for marker in (
        'id="regressions"',
        'id="runs"',
        'class="sfm-view"',
        'class="registration"',
        'class="nvs"',
        'class="overlays"',
        'class="curves"',
        "provenance",
        "Held-out PSNR per view",
        "s3://inbox/garden/",
    ):
        assert marker in text, marker
    # sfm 3D, registration histograms, PSNR bars, 3 loss curves (3DGS, NeRF, body fit)
    assert result.num_figures == 6 and text.count("Plotly.newPlot(") == 6
    held_out = len(list((work_area["work"] / "results" / "garden" / "fit_gaussians" / "heldout").glob("*.png")))
    assert result.num_images == 2 * held_out + 3  # held-out renders of both fits + 3 body overlays
    body = text[text.index("</head>") :]
    assert body.count("data:image/png;base64,") == result.num_images
    assert "no output of: evaluate_sfm, fit_gaussians" in text  # the partial capture shows what exists
    assert "cdn.plot.ly" not in body and 'src="http' not in text  # self-contained
    import plotly

    # plotly.js is one shared file beside the reports, loaded by relative path, not inlined
    asset = f"plotly-{plotly.__version__}.min.js"
    assert f'<script type="text/javascript" src="{asset}"></script>' in text
    assert (result.path.parent / asset).stat().st_size > 1_000_000 and len(text) < 1_000_000
    before = (result.path.parent / asset).stat().st_mtime_ns
    again = build_report(work_area["work"], result.path.parent / "again.html")
    assert (again.path.parent / asset).stat().st_mtime_ns == before  # written once per folder


def test_report_escapes_text_from_files(work_area) -> None:
    text = work_area["html"]
    assert EVIL not in text and "<img src=x" not in text
    assert html.escape(EVIL) in text and html.escape(EVIL_NAME) in text


def test_thumbnails_are_downscaled(work_area) -> None:
    text = work_area["html"]
    start = text.index('src="data:image/png;base64,') + len('src="data:image/png;base64,')
    image = Image.open(io.BytesIO(base64.b64decode(text[start : text.index('"', start)])))
    assert max(image.size) <= 256


def test_report_regressions(work_area) -> None:
    result = work_area["result"]
    found = {(r.capture, r.metric) for r in result.regressions}
    assert found == {("garden", "gaussians_psnr"), ("people", "body_mpjpe_mm"), ("shelf", "fused_fscore")}
    assert result.newly_failed == ["broken"]
    psnr = next(r for r in result.regressions if r.metric == "gaussians_psnr")
    assert psnr.change == pytest.approx(-2.0) and psnr.better == "higher" and psnr.threshold == 0.5
    assert 'id="regressions" class="bad"' in work_area["html"]


def test_empty_or_missing_work_area_still_writes_a_report(tmp_path: Path) -> None:
    result = build_report(tmp_path / "nothing", tmp_path / "r.html", previous=tmp_path / "missing.json")
    assert result.path.is_file() and result.num_captures == 0 and result.regressions == []
    assert result.previous_run_id is None and "nothing compared" in result.path.read_text()


def test_compare_metrics_directions_and_thresholds() -> None:
    thresholds = {"gaussians_psnr": 0.5, "*_mm": 5.0, "*error_deg*": 1.0}
    previous = {"a": {"gaussians_psnr": 25.0, "body_mpjpe_mm": 40.0, "rotation_error_deg_median": 2.0}}
    drop = compare_metrics({"a": {"gaussians_psnr": 24.0}}, previous, thresholds)
    assert [(r.metric, r.change, r.better) for r in drop] == [("gaussians_psnr", -1.0, "higher")]
    assert drop[0].relative_change == pytest.approx(-0.04) and drop[0].old == 25.0 and drop[0].new == 24.0
    assert compare_metrics({"a": {"gaussians_psnr": 24.7}}, previous, thresholds) == []  # small drop
    assert compare_metrics({"a": {"gaussians_psnr": 27.0}}, previous, thresholds) == []  # improvement
    rise = compare_metrics({"a": {"body_mpjpe_mm": 50.0, "rotation_error_deg_median": 3.5}}, previous, thresholds)
    assert sorted(r.metric for r in rise) == ["body_mpjpe_mm", "rotation_error_deg_median"]
    assert all(r.better == "lower" and r.change > 0 for r in rise)
    assert (
        compare_metrics({"a": {"body_mpjpe_mm": 20.0, "rotation_error_deg_median": 0.5}}, previous, thresholds) == []
    )  # errors went down
    assert compare_metrics({"a": {"body_mpjpe_mm": 44.0}}, previous, thresholds) == []  # within 5 mm
    # no threshold, unknown direction, or missing on one side: never a regression
    assert (
        compare_metrics(
            {"a": {"num_points3d": 1.0, "fused_chamfer": 9.0}, "b": {"nerf_psnr": 1.0}},
            {"a": {"num_points3d": 9e9, "fused_chamfer": 0.1}},
            thresholds,
        )
        == []
    )


def test_metric_direction_table() -> None:
    lower = [
        "rotation_error_deg_median",
        "body_mpjpe_mm",
        "fused_chamfer",
        "seconds",
        "wall_s",
        "ape_translation_max",
        "mean_pair_inlier_rmse",
        "bodies_skipped",
        "fused_pred_to_gt",
        "peak_memory_mb",
    ]
    higher = [
        "gaussians_psnr",
        "nerf_ssim",
        "registration_recall",
        "fused_fscore",
        "registered_fraction",
        "auc_rel_pose_5deg",
        "median_pck_0.1",
        "bodies_fitted",
        "num_placed",
        "num_within_tolerance",
    ]
    assert [metric_direction(m) for m in lower] == ["lower"] * len(lower)
    assert [metric_direction(m) for m in higher] == ["higher"] * len(higher)
    assert metric_direction("num_points3d") is None and metric_direction("fetched") is None
    assert all(isinstance(v, float) for v in DEFAULT_THRESHOLDS.values())
    # an exact name wins over patterns, then the first matching pattern; no match: not checked
    assert threshold_for("nerf_psnr", {"*psnr": 0.5, "nerf_psnr": 1.0}) == 1.0
    assert threshold_for("gaussians_psnr", {"*psnr": 0.5, "gaussians_*": 2.0}) == 0.5
    assert threshold_for("num_points3d", DEFAULT_THRESHOLDS) is None


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_headless_chromium(work_area, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (make system-deps installs it)")
    shot = tmp_path / "report.png"
    cmd = [
        browser,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--enable-unsafe-swiftshader",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        f"--user-data-dir={tmp_path / 'profile'}",
        work_area["result"].path.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    background = np.all(pixels >= 250, axis=2)
    assert 1.0 - background.mean() > 0.03, "screenshot is (almost) blank"
    colours = np.unique(pixels.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 200, f"only {len(colours)} distinct colours: plots did not render"
