"""params.yaml strictness (keys, types, overrides), the sfm fallback-ladder check, and atomic_dir."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from capture3d.atomic import atomic_dir
from capture3d.config import (
    apply_overrides,
    load_params,
    parse_override,
    replace_checked,
    section,
)
from capture3d.errors import ParamsError
from capture3d.stages.sfm import load_config
from capture3d.tasks.sfm.reconstruct import LADDER_KEYS, SfmConfig


def write_params(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- the project's params


def test_project_params_load(base_params):
    config = load_config(base_params)
    assert isinstance(config, SfmConfig)
    assert config.mapper in ("incremental", "global")
    assert isinstance(config.max_num_features, int)
    assert isinstance(config.min_registered_fraction, float)
    assert isinstance(config.fallback, tuple) and all(isinstance(r, dict) for r in config.fallback)
    for rung in config.fallback:
        assert set(rung) <= LADDER_KEYS
    # frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mapper = "global"  # type: ignore[misc]


# ----------------------------------------------------------------------------- keys


def test_unknown_key_is_named(base_params, tmp_path):
    base_params["sfm"]["max_num_featurez"] = 100
    params = load_params(write_params(tmp_path, base_params))
    with pytest.raises(ParamsError, match=r"unknown key.*'sfm'.*max_num_featurez"):
        load_config(params)


def test_missing_key_is_named(base_params, tmp_path):
    del base_params["sfm"]["init_min_num_inliers"]
    params = load_params(write_params(tmp_path, base_params))
    with pytest.raises(ParamsError, match=r"missing key.*'sfm'.*init_min_num_inliers"):
        load_config(params)


def test_missing_section(base_params):
    del base_params["sfm"]
    with pytest.raises(ParamsError, match=r"section 'sfm' is missing"):
        load_config(base_params)


def test_section_not_a_mapping(base_params):
    base_params["sfm"] = ["matcher", "mapper"]
    with pytest.raises(ParamsError, match=r"'sfm' must be a mapping"):
        load_config(base_params)


def test_params_file_not_found(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_file_invalid_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("sfm: {matcher: [unclosed\n")
    with pytest.raises(ParamsError, match="invalid YAML"):
        load_params(path)


def test_params_file_not_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping of sections"):
        load_params(path)


# ----------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("max_num_features", "many", r"'sfm.max_num_features' must be an integer.*many"),
        ("max_num_features", 8192.5, r"'sfm.max_num_features' must be an integer"),
        ("max_num_features", True, r"'sfm.max_num_features' must be an integer"),
        ("min_registered_fraction", True, r"'sfm.min_registered_fraction' must be a number.*True"),
        ("min_registered_fraction", "0.9", r"'sfm.min_registered_fraction' must be a number"),
        ("mapper", "fancy", r"'sfm.mapper' must be one of .*'incremental'.*'global'.*fancy"),
        ("device", "tpu", r"'sfm.device' must be one of"),
        ("camera_params", 500, r"'sfm.camera_params' must be a string"),
        ("fallback", {"mapper": "global"}, r"'sfm.fallback' must be a list"),
        ("fallback", ["global"], r"'sfm.fallback\[0\]' must be a mapping"),
    ],
)
def test_wrong_type_fails(base_params, tmp_path, key, value, pattern):
    base_params["sfm"][key] = value
    params = load_params(write_params(tmp_path, base_params))
    with pytest.raises(ParamsError, match=pattern):
        load_config(params)


@pytest.mark.parametrize("where", ["section", "rung"])
def test_non_string_key_is_a_params_error(base_params, where):
    if where == "section":
        base_params["sfm"][1600] = "x"
    else:
        base_params["sfm"]["fallback"] = [{True: 1}]
    with pytest.raises(ParamsError, match="1600|True"):
        load_config(base_params)


def test_int_is_accepted_as_float(base_params):
    base_params["sfm"]["min_registered_fraction"] = 1
    config = load_config(base_params)
    assert config.min_registered_fraction == 1.0
    assert isinstance(config.min_registered_fraction, float)


def test_replace_checked_keeps_the_checks(base_params):
    config = load_config(base_params)
    assert replace_checked(config, {"mapper": "global"}, "sfm").mapper == "global"
    with pytest.raises(ParamsError, match="sfm.max_image_size"):
        replace_checked(config, {"max_image_size": "big"}, "sfm")
    with pytest.raises(ParamsError, match="unknown key.*colour"):
        replace_checked(config, {"colour": "red"}, "sfm")


# ----------------------------------------------------------------------------- overrides


def test_override_parses_yaml_int(repo_root):
    params = load_params(repo_root / "params.yaml", ["sfm.max_num_features=4096"])
    assert params["sfm"]["max_num_features"] == 4096
    assert type(params["sfm"]["max_num_features"]) is int
    assert load_config(params).max_num_features == 4096


def test_override_parses_yaml_list(repo_root):
    params = load_params(repo_root / "params.yaml", ["sfm.fallback=[{mapper: global}]"])
    assert params["sfm"]["fallback"] == [{"mapper": "global"}]
    assert load_config(params).fallback == ({"mapper": "global"},)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sfm.mapper=global", (["sfm", "mapper"], "global")),
        ("sfm.min_registered_fraction=0.8", (["sfm", "min_registered_fraction"], 0.8)),
        ("reconstruct.record_dvc=false", (["reconstruct", "record_dvc"], False)),
        ("sfm.camera_params=1, 2, 3, 4", (["sfm", "camera_params"], "1, 2, 3, 4")),
        ("sfm.camera_params=", (["sfm", "camera_params"], "")),
        (" sfm.seed =3", (["sfm", "seed"], 3)),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["sfm.mapper", "=global", "sfm.fallback=[unclosed"])
def test_malformed_override_fails(text):
    with pytest.raises(ParamsError, match=r"override"):
        parse_override(text)


@pytest.mark.parametrize("text", ["sfm.max_features=10", "nosuchsection.key=1", "sfm.matcher.deep=1", "captures.x=1"])
def test_override_of_unknown_key_fails(base_params, text):
    key = text.split("=")[0]
    with pytest.raises(ParamsError, match=rf"override '{re.escape(text)}': unknown key '{re.escape(key)}'"):
        apply_overrides(base_params, [text])


def test_override_of_whole_section_then_fails_the_section_check(base_params):
    params = apply_overrides(base_params, ["sfm=1x"])
    with pytest.raises(ParamsError, match=r"'sfm' must be a mapping"):
        load_config(params)


def test_override_does_not_mutate_input(base_params):
    before = yaml.safe_dump(base_params)
    after = apply_overrides(base_params, ["sfm.max_num_features=1", "sfm.fallback=[]"])
    assert yaml.safe_dump(base_params) == before
    assert after["sfm"]["max_num_features"] == 1 and after["sfm"]["fallback"] == []


def test_override_wrong_type_fails_in_section(repo_root):
    params = load_params(repo_root / "params.yaml", ["sfm.max_num_features=many"])
    with pytest.raises(ParamsError, match=r"sfm.max_num_features.*integer"):
        section(params, "sfm", SfmConfig)


# ----------------------------------------------------------------------------- the fallback ladder


def test_fallback_rung_with_non_ladder_key_fails(base_params):
    base_params["sfm"]["fallback"] = [{"mapper": "global"}, {"max_num_features": 10}]
    with pytest.raises(ParamsError, match=r"'sfm.fallback\[1\]' may only set .*; got max_num_features"):
        load_config(base_params)


def test_fallback_rung_with_unknown_key_fails(base_params):
    base_params["sfm"]["fallback"] = [{"mapperr": "global"}]
    with pytest.raises(ParamsError, match=r"sfm.fallback\[0\].*mapperr"):
        load_config(base_params)


def test_fallback_rung_with_wrong_type_fails(base_params):
    base_params["sfm"]["fallback"] = [{"mapper": "fancy"}]
    with pytest.raises(ParamsError, match=r"sfm.fallback\[0\].mapper.*must be one of"):
        load_config(base_params)
    base_params["sfm"]["fallback"] = [{"min_num_matches": "few"}]
    with pytest.raises(ParamsError, match=r"sfm.fallback\[0\].min_num_matches.*integer"):
        load_config(base_params)


def test_fallback_ladder_keys_are_config_fields():
    names = {f.name for f in dataclasses.fields(SfmConfig)}
    assert names >= LADDER_KEYS


# ----------------------------------------------------------------------------- atomic_dir


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_atomic_dir_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
        (tmp / "half.txt").write_text("half-written")
        (tmp / "sub").mkdir()
        raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_failure_keeps_previous_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert leftovers(tmp_path, "out") == []


def test_atomic_dir_success_replaces_existing(tmp_path):
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("old")
    (out / "old_sub").mkdir()
    with atomic_dir(out) as tmp:
        assert not (tmp / "old.txt").exists()
        (tmp / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()  # nothing visible before the block ends
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert (out / "new.txt").read_text() == "new"
    assert leftovers(out.parent, "out") == []


def test_atomic_dir_success_creates_parents(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with atomic_dir(out) as tmp:
        (tmp / "x").write_text("1")
    assert (out / "x").read_text() == "1"
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]
