"""Command lines generated from the stages' dataclasses: `python -m capture3d.stages.X` and `capture3d <cmd>`
have the same flags, every params field is a documented flag, legacy flags still reach the config, and the
README's params reference is current. Nothing here runs a stage."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from capture3d import catalog, cli, stage_cli
from capture3d.config import load_params

COMMAND_ONLY = {"train_fcgf": {"--captures", "--results", "--names"}}  # the Prefect flow of `train fcgf`


def _subparser(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> argparse.ArgumentParser:
    for word in words:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def _parse(argv: list[str]) -> tuple[Any, stage_cli.Invocation, Any]:
    """(stage module, invocation, args) of a `capture3d` stage command line."""
    args = cli.build_parser(argv).parse_args(argv)
    step = catalog.step(args.stage)
    module = importlib.import_module(step.module)
    return module, stage_cli.invocation(module, step, args), args


def _config(argv: list[str], repo_root: Path) -> Any:
    module, call, _ = _parse(argv)
    return module.load_config(load_params(repo_root / "params.yaml", call.overrides))


def test_stage_module_and_subcommand_have_the_same_flags() -> None:
    full = cli.build_parser()
    for step in catalog.steps():
        module = importlib.import_module(step.module)
        stage = stage_cli.build_parser(module)
        command = _subparser(full, step.command)
        assert _flags(command) - _flags(stage) == COMMAND_ONLY.get(step.name, set()), step.name
        assert _flags(stage) <= _flags(command), step.name
        leaves = stage_cli.config_leaves(stage_cli.config_class(module))
        assert {leaf.flag for leaf in leaves} <= _flags(stage), step.name
        inputs = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(module.Inputs)}
        assert inputs | {"--out", "--name", "--params", "--set"} <= _flags(stage), step.name
        out = {a.dest: a for a in stage._actions}["out"]
        assert out.required and not {a.dest: a for a in command._actions}["out"].required, step.name
        # the lazy parser (only the named command built) gives the same flags as the full one
        assert _flags(_subparser(cli.build_parser(list(step.command)), step.command)) == _flags(command)


def test_every_params_field_and_input_has_a_docstring() -> None:
    for step in catalog.steps():
        module = importlib.import_module(step.module)
        for leaf in stage_cli.config_leaves(stage_cli.config_class(module)):
            assert leaf.doc.strip(), f"{step.name}: {leaf.key} has no attribute docstring"
        docs = stage_cli.field_docs(module.Inputs)
        for f in dataclasses.fields(module.Inputs):
            assert docs.get(f.name, "").strip(), f"{step.name}: Inputs.{f.name} has no attribute docstring"
    # a subclass's docstring of a field wins over its base's
    from capture3d.stages import sfm
    from capture3d.stages.common import CaptureInputs

    assert stage_cli.field_docs(sfm.Inputs)["capture"] != stage_cli.field_docs(CaptureInputs)["capture"]


def test_legacy_and_dotted_flags_reach_the_config(repo_root: Path, tmp_path: Path) -> None:
    config = _config(
        [
            "register",
            "--scans",
            str(tmp_path),
            "--voxel",
            "0.05",
            "--pair.global-method",
            "ransac",
            "--icp",
            "generalized",
            "--pairs",
            "sequential",
            "--features",
            "fpfh",
        ],
        repo_root,
    )
    assert config.preprocess.voxel_size == 0.05 and config.pair.global_method == "ransac"
    assert config.pair.icp_method == "generalized" and config.multiway.pairs == "sequential"
    _, call, _ = _parse(
        [
            "register",
            "--scans",
            str(tmp_path),
            "--set",
            "register_scans.preprocess.voxel_size=0.1",
            "--preprocess.voxel-size",
            "auto",
        ]
    )
    assert call.inputs.capture == tmp_path and call.out == Path("results") / tmp_path.name / "register_scans"
    assert call.overrides[-1] == "register_scans.preprocess.voxel_size=auto", "flags come after --set"

    known = _config(
        ["sfm", "--images", str(tmp_path), "--camera-model", "PINHOLE", "--camera-params", "1,2,3,4"], repo_root
    )
    assert (known.camera_model, known.camera_params, known.intrinsics) == ("PINHOLE", "1,2,3,4", "known")
    assert _config(["sfm", "--images", str(tmp_path), "--self-calibrate"], repo_root).intrinsics == "self_calibrate"
    features = _config(["evaluate", "features", "--scans", str(tmp_path), "--features", "fpfh,fcgf"], repo_root)
    assert features[0].features == ("fpfh", "fcgf")
    trained = _config(
        [
            "train",
            "fcgf",
            "--extra-capture",
            "a",
            "--extra-capture",
            "b",
            "--iterations",
            "3",
            "--device",
            "cpu",
            "--seed",
            "7",
        ],
        repo_root,
    )
    assert trained.data.extra_captures == ("a", "b") and (trained.iterations, trained.device, trained.seed) == (
        3,
        "cpu",
        7,
    )
    nerf = _config(
        ["fit", "nerf", "--capture", str(tmp_path), "--ndc", "on", "--resolution-scale", "0.25", "--max-seconds", "5"],
        repo_root,
    )
    assert nerf.ndc == "on" and nerf.data.resolution_scale == 0.25 and nerf.max_seconds == 5
    gaussians = _config(
        ["fit", "gaussians", "--capture", str(tmp_path), "--backend", "cpu", "--iterations", "9"], repo_root
    )
    assert gaussians.backend == "cpu" and gaussians.iterations == 9
    bodies = _config(
        [
            "fit",
            "bodies",
            "--keypoints",
            str(tmp_path),
            "--model",
            "smpl",
            "--model-file",
            "m.npz",
            "--sequence",
            "true",
        ],
        repo_root,
    )
    assert (bodies.model, bodies.model_file, bodies.sequence) == ("smpl", "m.npz", True)
    assert (
        _config(["evaluate", "sfm", "--model", str(tmp_path), "--gt-format", "strecha"], repo_root).gt_format
        == "strecha"
    )


def test_inputs_and_default_output_folders(tmp_path: Path) -> None:
    model = tmp_path / "garden" / "sfm"
    _, call, _ = _parse(["evaluate", "sfm", "--model", str(model), "--gt", "gt_cameras", "--num-images", "7"])
    assert call.out == tmp_path / "garden" / "evaluate_sfm"
    assert (call.inputs.gt, call.inputs.num_images, call.label) == (Path("gt_cameras"), 7, "garden")
    _, call, _ = _parse(
        [
            "evaluate",
            "registration",
            "--result",
            str(tmp_path / "r" / "register_scans"),
            "--scans",
            str(tmp_path / "shelf"),
        ]
    )
    assert call.out == tmp_path / "r" / "evaluate_registration" and call.inputs.capture == tmp_path / "shelf"
    _, call, _ = _parse(["fit", "gaussians", "--capture", str(tmp_path / "fern"), "--name", "leaf"])
    assert call.out == Path("results/leaf/fit_gaussians")
    _, call, _ = _parse(["evaluate", "features", "--scans", str(tmp_path / "ring"), "--checkpoint", "m.pt"])
    assert call.out == Path("results/ring/evaluate_features") and call.inputs.checkpoint == Path("m.pt")
    _, call, _ = _parse(
        [
            "fit",
            "bodies",
            "--images",
            str(tmp_path),
            "--keypoints",
            str(tmp_path / "kp.json"),
            "--cameras",
            "cams.json",
            "--gt",
            "gt",
        ]
    )
    assert call.out == Path("results") / tmp_path.name / "fit_bodies" and call.inputs.cameras == Path("cams.json")
    _, call, _ = _parse(["fit", "bodies", "--capture", str(tmp_path / "people")])
    assert call.out == Path("results/people/fit_bodies")
    _, call, _ = _parse(["evaluate", "bodies", "--result", str(tmp_path / "p" / "fit_bodies"), "--capture", "c"])
    assert call.out == tmp_path / "p" / "evaluate_bodies"
    _, call, args = _parse(["train", "fcgf", "--captures", str(tmp_path), "--results", "res", "--names", "a,b"])
    assert call.out == Path("models/fcgf") and args.captures == tmp_path and args.names == "a,b"
    _, call, _ = _parse(["synthesize"])
    assert call.out == Path("data/captures/demo")
    with pytest.raises(SystemExit):  # python -m capture3d.stages.X needs --out
        stage_cli.build_parser(importlib.import_module("capture3d.stages.sfm")).parse_args(["--capture", "x"])


def test_stage_main_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    importlib.import_module("capture3d.stages.fit_bodies")
    code = stage_cli.stage_main("capture3d.stages.fit_bodies", ["--out", str(tmp_path / "o"), "--name", "cap"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code != 0 and err == ["error: capture 'cap': fit_bodies: give --capture or --keypoints"]


def test_python_m_stage_help_shows_docstrings(repo_root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "capture3d.stages.sfm", "--help"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--capture CAPTURE, --images CAPTURE" in proc.stdout
    assert "--matcher {exhaustive,sequential,retrieval,auto}" in proc.stdout
    assert "neighbours matched per image by the sequential matcher" in " ".join(proc.stdout.split())


def test_readme_params_reference_is_current(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    assert readme == stage_cli.readme_with_reference(readme, stage_cli.params_reference()), (
        "README params reference is stale: run python -m capture3d.stage_cli --write-readme"
    )
