"""FCGF training: an interrupted run resumes to exactly the uninterrupted curve and weights; a short
run on synthetic courtyards improves feature matching on a held-out courtyard; the stage writes
its checkpoint, curves and metrics, and refuses bad training data in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from capture3d.stages import train_fcgf as stage
from capture3d.tasks.fcgf.checkpoint import (
    FcgfModelConfig,
    build_model,
    load_checkpoint,
)
from capture3d.tasks.fcgf.data import (
    AugmentConfig,
    ScanPair,
    VoxelPair,
    synthetic_pairs,
)
from capture3d.tasks.fcgf.train import (
    FcgfTrainConfig,
    LossConfig,
    OptimConfig,
    evaluate_fmr,
    train_fcgf,
    validation_pairs,
)


def _config(iterations: int, **kw: object) -> FcgfTrainConfig:
    base = dict(
        model=FcgfModelConfig("ResUNetBN2C", 1, 32, 5, 0.05, True),
        optim=OptimConfig("adam", 1e-3, 0.8, 1e-4, 0.5, 1000),
        loss=LossConfig("hardest_contrastive", 512, 256, 0.1, 1.4, 1.5, 0.0, 32, 0.07),
        augment=AugmentConfig(20.0, 0.5, 0.7, 0.05),
        iterations=iterations,
        checkpoint_every=1,
        val_every=1000,
        fmr_inlier_distance=0.10,
        fmr_inlier_ratio=0.05,
    )
    base.update(kw)
    return FcgfTrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small_pairs() -> list[ScanPair]:
    """Pairs of small synthetic scans (80 x 60 sensor, ~1500 voxels per scan)."""
    return synthetic_pairs(
        [1], num_scans=4, noise_sigma=0.002, width=80, height=60, auto_target_points=1500, min_overlap=0.3
    )


class _Stop(Exception):
    pass


def test_interrupted_training_resumes_to_the_same_curve(small_pairs: list[ScanPair], tmp_path: Path) -> None:
    config = _config(4)
    full = train_fcgf(small_pairs, [], config, seed=5, device="cpu", state_path=tmp_path / "full.pt")

    def stop_at_three(row: dict[str, float]) -> None:
        if row["iteration"] == 3:
            raise _Stop  # killed after iteration 2 was checkpointed

    with pytest.raises(_Stop):
        train_fcgf(
            small_pairs, [], config, seed=5, device="cpu", state_path=tmp_path / "cut.pt", progress=stop_at_three
        )
    resumed = train_fcgf(small_pairs, [], config, seed=5, device="cpu", state_path=tmp_path / "cut.pt")
    assert resumed.resumed_from == 2
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    # Another seed is another run: its state is not reused.
    other = train_fcgf(small_pairs, [], config, seed=6, device="cpu", state_path=tmp_path / "cut.pt")
    assert other.resumed_from == 0 and other.history[0]["loss"] != full.history[0]["loss"]


def _positive_to_random_distance(model: torch.nn.Module, vp: VoxelPair) -> float:
    """Mean descriptor distance of true correspondences over that of random voxel pairs (eval mode)."""
    model.eval()
    with torch.no_grad():
        feats = model(vp.tensor).features  # (M0 + M1, 32)
    f0, f1, pos = feats[: vp.num0], feats[vp.num0 :], vp.positives
    gen = torch.Generator().manual_seed(0)
    i = torch.randint(0, f0.shape[0], (5000,), generator=gen)
    j = torch.randint(0, f1.shape[0], (5000,), generator=gen)
    return float((f0[pos[:, 0]] - f1[pos[:, 1]]).norm(dim=1).mean() / (f0[i] - f1[j]).norm(dim=1).mean())


def test_short_training_learns_to_match_its_pair(small_pairs: list[ScanPair], tmp_path: Path) -> None:
    """The loop optimises: the loss falls, true correspondences move together in descriptor space
    and nearest-neighbour matching starts to find them.

    Generalisation to held-out courtyards takes far longer than a unit test; it is measured with
    ``capture3d train fcgf`` + ``capture3d evaluate features`` (README, FCGF section).
    """
    pairs = small_pairs[:1]
    config = _config(40, checkpoint_every=1000, val_every=1000, augment=AugmentConfig(0.0, 0.0, 1.0, 0.0))
    val = validation_pairs(pairs, config, seed=0)
    with torch.random.fork_rng(devices=[]):  # the same initial weights train_fcgf starts from
        torch.manual_seed(0)
        initial = build_model(config.model)
    before = _positive_to_random_distance(initial, val[0]), evaluate_fmr(initial, val, 0.10, 0.05)
    result = train_fcgf(pairs, [], config, seed=0, device="cpu", state_path=tmp_path / "s.pt")
    after = _positive_to_random_distance(result.model, val[0]), evaluate_fmr(result.model, val, 0.10, 0.05)
    losses = [r["loss"] for r in result.history]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.1, losses
    assert after[0] < 0.85 * before[0], (before, after)
    assert after[1]["inlier_ratio"] > before[1]["inlier_ratio"] + 0.01, (before, after)


def test_point_info_nce_generalises_to_a_held_out_courtyard(small_pairs: list[ScanPair], tmp_path: Path) -> None:
    """PointInfoNCE (the default objective) trained briefly on one courtyard raises the feature-match
    inlier ratio on a courtyard it never saw to over twice the untrained network's.

    These tiny scans have ~12 cm voxels, so matches count within 0.2 m: the 3DMatch protocol's
    10 cm at the 5.8 cm voxel of full-size scans is the same 1.7 voxels.
    """
    held_out = synthetic_pairs(
        [7], num_scans=4, noise_sigma=0.002, width=80, height=60, auto_target_points=1500, min_overlap=0.3
    )
    loss = LossConfig("point_info_nce", 512, 256, 0.1, 1.4, 1.5, 2.0, 32, 0.07)
    config = _config(60, loss=loss, checkpoint_every=1000, val_every=1000, augment=AugmentConfig(0.0, 0.5, 0.7, 0.05))
    assert 0.10 < held_out[0].voxel < 0.14
    val = validation_pairs(held_out, config, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        initial = build_model(config.model)
    before = evaluate_fmr(initial, val, 0.20, 0.05)["inlier_ratio"]
    result = train_fcgf(small_pairs, [], config, seed=0, device="cpu", state_path=tmp_path / "s.pt")
    after = evaluate_fmr(result.model, val, 0.20, 0.05)["inlier_ratio"]
    assert all(np.isnan(r["pos_loss"]) for r in result.history)  # one term, no positive / negative split
    assert after > 2 * before, (before, after, len(val))


def _stage_params(base_params: dict, **data: object) -> dict:
    params = dict(base_params)
    section = json.loads(json.dumps(params["train_fcgf"]))
    section["data"].update(
        synthetic_seeds=[1],
        validation_seeds=[7],
        num_scans=4,
        width=80,
        height=60,
        auto_target_points=1500,
        max_val_pairs=2,
        **data,
    )
    section.update(iterations=3, checkpoint_every=1, val_every=2, device="cpu")
    params["train_fcgf"] = section
    return params


def test_stage_writes_checkpoint_curves_and_metrics(base_params: dict, tmp_path: Path) -> None:
    out = stage.run(stage.Inputs(), tmp_path / "fcgf", stage.load_config(_stage_params(base_params)))
    model, cfg, extras = load_checkpoint(out / "model.pt")
    assert cfg.out_channels == 32 and extras["voxel_rule"]["auto_target_points"] == 1500
    with (out / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3] and all(float(r["loss"]) > 0 for r in rows)
    with (out / "validation.csv").open() as fh:
        assert [int(r["iteration"]) for r in csv.DictReader(fh)] == [0, 2, 3]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 3 and metrics["num_val_pairs"] == 2 and metrics["train_data"] == ["seed1"]
    assert not stage.state_path_for(out).exists(), "the resume state is removed after success"


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing", "capture 'nope': training capture folder"),
        ("no_gt", "capture 'bare': no ground-truth poses"),
        ("zero", "needs iterations >= 1"),
    ],
)
def test_stage_bad_training_input_is_one_line(
    case: str, expected: str, base_params: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--out", str(tmp_path / "fcgf"), "--params", str(tmp_path / "params.yaml")]
    params = _stage_params(base_params)
    if case == "missing":
        params["train_fcgf"]["data"]["extra_captures"] = [str(tmp_path / "nope")]
    elif case == "no_gt":
        bare = tmp_path / "bare"
        bare.mkdir()
        for i in range(2):
            np.save(bare / f"s{i}.npy", np.random.default_rng(i).uniform(size=(500, 3)))
        params["train_fcgf"]["data"]["extra_captures"] = [str(bare)]
    else:
        params["train_fcgf"]["iterations"] = 0
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert stage.main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "fcgf").exists()
