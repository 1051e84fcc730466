"""FCGF checkpoints: capture3d's format round-trips; an official MinkowskiEngine-layout file (built
here, with an EasyDict config) loads through the documented mapping and gives the same
descriptors; wrong shapes, newer versions and pickles carrying code are refused in one line."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from capture3d.tasks.fcgf.checkpoint import (
    FcgfModelConfig,
    build_model,
    infer_model_config,
    load_checkpoint,
    save_checkpoint,
)
from capture3d.tasks.fcgf.model import extract_features


def _config(**kw: object) -> FcgfModelConfig:
    base = dict(
        arch="ResUNetBN2C",
        in_channels=1,
        out_channels=32,
        conv1_kernel_size=5,
        bn_momentum=0.05,
        normalize_feature=True,
    )
    base.update(kw)
    return FcgfModelConfig(**base)  # type: ignore[arg-type]


def _cloud(seed: int = 0, n: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, size=(n, 3))  # (N, 3) in a 1 m cube


def _trained_like(config: FcgfModelConfig, seed: int = 0) -> torch.nn.Module:
    """A model with non-trivial batch-norm statistics (so the buffers matter)."""
    torch.manual_seed(seed)
    model = build_model(config)
    for p in model.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_own_format_round_trip(tmp_path: Path) -> None:
    config = _config()
    model = _trained_like(config)
    save_checkpoint(tmp_path / "m.pt", model, config, voxel_rule={"voxel_size": "auto"})
    loaded, cfg, extras = load_checkpoint(tmp_path / "m.pt")
    assert cfg == config and extras["voxel_rule"] == {"voxel_size": "auto"}
    pts = _cloud()
    np.testing.assert_array_equal(extract_features(model, pts, 0.05), extract_features(loaded, pts, 0.05))


def _me_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights the way MinkowskiEngine 0.5 FCGF stores them (written out rule by rule)."""
    me = {}
    for key, value in model.state_dict().items():
        if ".bn." in key:  # normX.bn.* and blockX.normY.bn.* keep their names
            me[key] = value.clone()
        elif key.endswith(".weight"):  # conv weight (K, C_in, C_out) -> ME "kernel"
            me[key[: -len("weight")] + "kernel"] = value[0].clone() if value.shape[0] == 1 else value.clone()
        elif key == "final.bias":
            me[key] = value.reshape(1, -1).clone()
        else:
            raise AssertionError(f"unexpected key {key}")
    return me


class _EasyDict(dict):
    """Mimics easydict.EasyDict: items that are also attributes."""

    def __init__(self, d: dict) -> None:
        super().__init__(d)
        self.__dict__.update(d)


def test_official_minkowski_checkpoint_maps_by_name_and_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(conv1_kernel_size=7, out_channels=16)
    model = _trained_like(config, seed=3)
    me = _me_state_dict(model)
    assert me["conv1.kernel"].shape == (343, 1, 32)
    assert me["final.kernel"].shape == (64, 16) and me["final.bias"].shape == (1, 16)
    assert me["conv4_tr.kernel"].shape == (27, 256, 128) and "block1.norm1.bn.running_mean" in me
    # Pickle the checkpoint as FCGF's trainer does, with the config an easydict.EasyDict.
    fake = types.ModuleType("easydict")
    _EasyDict.__module__, _EasyDict.__qualname__ = "easydict", "EasyDict"
    fake.EasyDict = _EasyDict  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "easydict", fake)
    official = {
        "epoch": 100,
        "state_dict": me,
        "optimizer": {},
        "scheduler": {"last_epoch": 99},
        "config": _EasyDict(
            {
                "model": "ResUNetBN2C",
                "model_n_out": 16,
                "conv1_kernel_size": 7,
                "normalize_feature": True,
                "voxel_size": 0.025,
            }
        ),
        "best_val": 0.9,
        "best_val_epoch": 90,
        "best_val_metric": "feat_match_ratio",
    }
    torch.save(official, tmp_path / "official.pth")
    monkeypatch.delitem(sys.modules, "easydict")  # loading must not need the package

    loaded, cfg, extras = load_checkpoint(tmp_path / "official.pth")
    assert (cfg.arch, cfg.out_channels, cfg.conv1_kernel_size) == ("ResUNetBN2C", 16, 7)
    assert extras["source"] == "minkowski" and extras["voxel_size"] == 0.025
    pts = _cloud(1)
    np.testing.assert_allclose(extract_features(loaded, pts, 0.05), extract_features(model, pts, 0.05), atol=1e-6)


def test_infer_resunetbn2_variant() -> None:
    model = build_model(_config(arch="ResUNetBN2"))
    assert infer_model_config(model.state_dict()).arch == "ResUNetBN2"


class _Payload:
    def __reduce__(self):  # noqa: ANN204 -- the classic pickle exploit
        return (Path.touch, (Path(_Payload.target),))

    target = ""


def test_checkpoint_carrying_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _Payload.target = str(marker)
    with (tmp_path / "evil.pt").open("wb") as fh:
        pickle.dump({"state_dict": _Payload()}, fh)
    with pytest.raises(ValueError, match="cannot be read safely") as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists(), "the payload ran"
    assert "\n" not in str(err.value)


def test_wrong_shape_and_version_are_one_line_errors(tmp_path: Path) -> None:
    model16 = build_model(_config(out_channels=16))
    save_checkpoint(tmp_path / "lies.pt", model16, _config(out_channels=32))  # config says 32, weights are 16
    with pytest.raises(ValueError, match=r"lies.pt.*'final.weight' has shape \(1, 64, 16\)"):
        load_checkpoint(tmp_path / "lies.pt")
    state = torch.load(tmp_path / "lies.pt", weights_only=True)
    state["version"] = 99
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format version 99"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither a capture3d FCGF checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
