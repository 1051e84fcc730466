"""dvc.yaml, params.yaml and the stage modules agree; the pipeline runs under DVC and after a flow.

The end-to-end test copies the project into a temporary git + DVC repository with a smaller
synthetic capture, runs `dvc repro` there as a fresh clone would, then the Prefect `demo` flow,
and checks that DVC sees the flow's outputs as up to date, that adding a capture or changing a
section invalidates exactly the dependent stages, and that `dvc exp run -S` works.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from capture3d.catalog import steps
from capture3d.config import load_params
from capture3d.ops.code_deps import import_closure
from capture3d.ops.dvc_yaml import TRAINING_FILE, render

VENV_BIN = Path(sys.executable).parent
FLOW_SECTIONS = {"batch"}  # read by the batch flow, not by a DVC stage


def _dvc_yaml(repo_root: Path) -> dict:
    """The project's stages and the opt-in training stages (rendered: the file is not committed)."""
    default = yaml.safe_load((repo_root / "dvc.yaml").read_text())
    training = yaml.safe_load(render(repo_root, training=True))
    return {"stages": {**default["stages"], **training["stages"]}}


def test_dvc_yaml_is_generated_from_the_catalog(repo_root: Path) -> None:
    # dvc.yaml is written by `python -m capture3d.ops.dvc_yaml --write` from capture3d/catalog.py;
    # a hand edit, a catalog change or a new import without regenerating fails here.
    assert (repo_root / "dvc.yaml").read_text() == render(repo_root), (
        "dvc.yaml differs from the catalog: run python -m capture3d.ops.dvc_yaml --write"
    )
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [s.name for s in steps() if not s.opt_in]
    # Training (45 minutes) and its evaluation are opt-in: `dvc repro` in a fresh clone never starts
    # them; their own file runs in the project folder with the project's params for ${...}.
    training = yaml.safe_load(render(repo_root, training=True))
    assert list(training["stages"]) == [s.name for s in steps() if s.opt_in] == ["train_fcgf", "evaluate_features"]
    assert training["vars"] == ["../params.yaml"] and TRAINING_FILE == "training/dvc.yaml"
    assert training["stages"]["train_fcgf"]["wdir"] == ".."
    assert training["stages"]["evaluate_features"]["do"]["wdir"] == ".."


def test_dvc_yaml_params_and_stage_modules_agree(repo_root: Path) -> None:
    stages = _dvc_yaml(repo_root)["stages"]
    params = load_params(repo_root / "params.yaml")
    used_sections: set[str] = set()
    for name, stage in stages.items():
        body = stage.get("do", stage)
        if "foreach" in stage:
            assert stage["foreach"] in ("${captures}", "${scan_captures}", "${body_captures}"), name
        cmd = body["cmd"]
        assert f"python -m capture3d.stages.{name} " in cmd, f"stage {name} must run capture3d.stages.{name}"
        module = importlib.import_module(f"capture3d.stages.{name}")
        for attr in ("run", "main", "load_config"):
            assert callable(getattr(module, attr, None)), f"capture3d.stages.{name}.{attr} missing"
        assert body["params"][0] == name, f"stage {name} must track its whole section '{name}'"
        assert all(isinstance(p, str) and p in params for p in body["params"]), "only whole sections are tracked"
        module.load_config(params)  # the section loads into the stage's frozen dataclass
        used_sections.add(name)
        for dep in body["deps"]:
            if dep.startswith("capture3d/"):
                assert (repo_root / dep).exists(), dep
        assert f"capture3d/stages/{name}.py" in body["deps"]
        # The code deps are exactly the stage's import closure: a module missing there lets `dvc repro`
        # reuse stale results after it changes (every stage missed some before this test).
        code = sorted(d for d in body["deps"] if d.startswith("capture3d/") and d.endswith(".py"))
        closure = import_closure(f"capture3d.stages.{name}", repo_root)
        assert code == closure, (
            f"stage {name}: missing {sorted(set(closure) - set(code))}, not imported {sorted(set(code) - set(closure))}"
        )
    assert set(params) == used_sections | FLOW_SECTIONS | {"captures", "scan_captures", "body_captures"}
    assert isinstance(params["captures"], list) and "demo" in params["captures"]
    assert isinstance(params["scan_captures"], list) and "demo_scans" in params["scan_captures"]


def _copy_project(repo_root: Path, dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=repo_root, check=True, capture_output=True, text=True
    ).stdout.split()
    for rel in files:
        src = repo_root / rel
        if src.is_file() and not rel.startswith(("results/", "data/")) and rel != "dvc.lock":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _stages_importing(repo: Path, module: str, params: dict) -> set[str]:
    """Stage names of the project's dvc.yaml (``name`` or ``name@item``) whose code deps hold ``module``."""
    names = set()
    for name, stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].items():
        if module not in import_closure(f"capture3d.stages.{name}", repo):
            continue
        if "foreach" in stage:
            names.update(f"{name}@{item}" for item in params[stage["foreach"].strip("${}")])
        else:
            names.add(name)
    return names


@pytest.mark.slow
def test_dvc_repro_flow_then_status_clean(repo_root: Path, tmp_path: Path) -> None:
    repo = tmp_path / "project"
    _copy_project(repo_root, repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["synthesize"].update(num_images=12, width=320, height=240)
    # FCGF: a token training run (the pipeline's wiring is under test, not the model).
    params["train_fcgf"]["data"].update(
        synthetic_seeds=[1],
        validation_seeds=[7],
        num_scans=4,
        width=80,
        height=60,
        auto_target_points=1500,
        max_val_pairs=1,
    )
    params["train_fcgf"].update(iterations=2, val_every=2, device="cpu")
    params["evaluate_features"]["global_method"] = "fgr"
    # Scans: a 5-scan ring (all placed, 10 pairs; registration quality is tested in test_register_scans_stage)
    params["synthesize_scans"]["num_scans"] = 5
    # NVS: token fits (their quality is tested elsewhere); the stages, outputs and records are under test.
    params["fit_gaussians"].update(iterations=20, cpu_compile=False, orbit_frames=2, checkpoint_every=10)
    params["fit_nerf"].update(iterations=20, orbit_frames=2, checkpoint_every=10)
    # Bodies: two bodies in two views, a short schedule (fit quality is tested in test_fit_bodies).
    params["synthesize_bodies"].update(count=2, views=2, width=160, height=120)
    for stage in params["fit_bodies"]["stages"]:
        stage["iterations"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
    }
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run(["git", "init", "-q"], repo, env)
    _run([*git, "add", "-A"], repo, env)
    _run([*git, "commit", "-qm", "project"], repo, env)
    dvc = [sys.executable, "-m", "dvc"]

    # A fresh clone: dvc repro processes the sample capture end to end, without the opt-in training.
    ran = _run([*dvc, "repro"], repo, env)
    assert "train_fcgf" not in ran and not (repo / "models/fcgf").exists()
    metrics = json.loads((repo / "results/demo/evaluate_sfm/metrics.json").read_text())
    assert metrics["registered_fraction"] == 1.0
    assert metrics["rotation_error_deg_median"] < 0.5
    shown = json.loads(_run([*dvc, "metrics", "show", "--json"], repo, env))
    assert "results/demo/evaluate_sfm/metrics.json" in json.dumps(shown)
    plots = _run([*dvc, "plots", "show", "--json"], repo, env)
    assert "results/demo/fit_gaussians/train_log.csv" in plots
    for method in ("fit_gaussians", "fit_nerf"):
        nvs = json.loads((repo / f"results/demo/{method}/metrics.json").read_text())
        assert nvs["iterations"] == 20 and nvs["num_test_views"] == 2 and nvs["psnr"] > 5, nvs
    assert (repo / "results/demo/fit_gaussians/gaussians.ply").is_file()
    bodies = json.loads((repo / "results/demo_bodies/evaluate_bodies/metrics.json").read_text())
    assert bodies["bodies"] == 2 and "median_mpjpe_mm" in bodies, bodies
    assert len(list((repo / "results/demo_bodies/fit_bodies/overlays").glob("*.png"))) == 4

    # The Prefect demo flow runs the same stages and records them: DVC has nothing to do.
    out = _run([str(VENV_BIN / "capture3d"), "demo"], repo, env)
    assert "demo" in out and "ok" in out
    # ... and ends with one report of every sample capture; plotly.js is one file beside the reports
    report = repo / "results/.capture3d/runs/demo.html"
    assert f"report: {report}" in out and report.is_file()
    text = report.read_text()
    assert all(f'id="c-{name}"' in text for name in ("demo", "demo_scans", "demo_bodies")), "a capture is missing"
    assert len(list(report.parent.glob("plotly-*.min.js"))) == 1 and len(text) < 3_000_000
    scans = json.loads((repo / "results/demo_scans/evaluate_registration/metrics.json").read_text())
    assert scans["num_within_tolerance"] >= 3 and scans["placed_beyond_tolerance"] == [], scans
    assert "up to date" in _run([*dvc, "status"], repo, env)
    assert "Running stage" not in _run([*dvc, "repro"], repo, env)

    # Editing a module marks exactly the stages whose import closure holds it as changed.
    for module in ("capture3d/tasks/registration/visibility.py", "capture3d/tasks/cameras.py"):
        path = repo / module
        original = path.read_text()
        path.write_text(original + "\n# edited\n")
        changed = set(json.loads(_run([*dvc, "status", "--json"], repo, env)))
        assert changed == _stages_importing(repo, module, params), (module, changed)
        path.write_text(original)
    assert "up to date" in _run([*dvc, "status"], repo, env)

    # Adding a capture invalidates only that capture's stages.
    shutil.copytree(repo / "data/captures/demo", repo / "data/captures/extra")
    params["captures"] = ["demo", "extra"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(json.loads(_run([*dvc, "status", "--json"], repo, env)))
    assert changed == {"sfm@extra", "evaluate_sfm@extra", "fit_gaussians@extra", "fit_nerf@extra"}, changed

    # Changing the sfm section invalidates SfM and what depends on it, not the synthesis.
    params["captures"] = ["demo"]
    params["sfm"]["max_num_features"] = 4096
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(json.loads(_run([*dvc, "status", "--json"], repo, env)))
    assert changed == {"sfm@demo"}, changed

    params["sfm"]["max_num_features"] = 8192
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(repo / "data/captures/extra")

    # Training opted in (`make train-fcgf`): its own file, run in the project folder; then clean again.
    _run([sys.executable, "-m", "capture3d.ops.dvc_yaml", "--write", "--training", "--root", str(repo)], repo, env)
    ran = _run([*dvc, "repro", TRAINING_FILE], repo, env)
    assert f"{TRAINING_FILE}:train_fcgf'" in ran and f"{TRAINING_FILE}:evaluate_features@demo_scans'" in ran, ran
    features = json.loads((repo / "results/demo_scans/evaluate_features/metrics.json").read_text())["features"]
    assert set(features) == {"fpfh", "fcgf"} and features["fpfh"]["num_pairs"] >= 7
    assert "models/fcgf/train_log.csv" in _run([*dvc, "plots", "show", "--json"], repo, env)
    assert "up to date" in _run([*dvc, "status"], repo, env)
    (repo / TRAINING_FILE).unlink()
    (repo / TRAINING_FILE).with_name("dvc.lock").unlink()

    # Experiments with one override work and produce metrics.
    _run([*git, "add", "-A"], repo, env)
    _run([*git, "commit", "-qm", "lock"], repo, env)
    ran = _run([*dvc, "exp", "run", "-S", "sfm.mapper=global"], repo, env)
    # SfM and what depends on it rerun; the synthesis does not.
    assert "Running stage 'sfm@demo'" in ran and "Running stage 'evaluate_sfm@demo'" in ran, ran
    assert "Running stage 'fit_gaussians@demo'" in ran, ran
    assert "Running stage 'synthesize'" not in ran, ran
    metrics = json.loads((repo / "results/demo/sfm/metrics.json").read_text())
    assert metrics["attempts"][metrics["chosen_attempt"]]["mapper"] == "global"
    assert metrics["registered_fraction"] >= 0.9


def test_import_closure_follows_lazy_and_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "capture3d"
    (pkg / "stages").mkdir(parents=True)
    (pkg / "tasks").mkdir()
    for init in (pkg, pkg / "stages", pkg / "tasks"):
        (init / "__init__.py").write_text("")
    (pkg / "stages" / "a.py").write_text(
        "import numpy\nfrom capture3d.tasks import b\ndef run():\n    from capture3d.tasks.c import f\n"
    )
    (pkg / "tasks" / "b.py").write_text("from .d import g\n")
    (pkg / "tasks" / "c.py").write_text("def f(): pass\n")
    (pkg / "tasks" / "d.py").write_text("g = 1\n")
    (pkg / "tasks" / "unused.py").write_text("")
    assert import_closure("capture3d.stages.a", tmp_path) == [
        "capture3d/__init__.py",
        "capture3d/stages/__init__.py",
        "capture3d/stages/a.py",
        "capture3d/tasks/__init__.py",
        "capture3d/tasks/b.py",
        "capture3d/tasks/c.py",
        "capture3d/tasks/d.py",
    ]
