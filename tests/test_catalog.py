"""The stage catalog is the one description of the pipeline, and everything derives from it.

Checks: every step names a stage module with the uniform interface and params sections that load;
the summary keys the report and status tables show come from it; and a new photos stage needs
exactly four places (task module, stage module, catalog entry, params section) to appear in
dvc.yaml, the batch work key, the CLI and a batch run.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from capture3d import catalog
from capture3d.config import load_params


def test_every_step_names_a_stage_with_the_uniform_interface(repo_root: Path) -> None:
    params = load_params(repo_root / "params.yaml")
    names = [s.name for s in catalog.steps()]
    assert len(names) == len(set(names)), "step names are unique"
    for step in catalog.steps():
        module = importlib.import_module(step.module)
        for attr in ("Inputs", "load_config", "run", "main"):
            assert hasattr(module, attr), f"{step.module}.{attr} missing"
        fields = {f.name for f in dataclasses.fields(module.Inputs)}
        assert set(step.inputs) <= fields, (step.name, set(step.inputs) - fields)
        if step.needs_ground_truth:
            assert callable(getattr(module, "has_ground_truth", None)), step.name
        for section in step.params_sections:
            assert section in params, (step.name, section)
        module.load_config(params)
        assert step.command, f"{step.name}: no capture3d subcommand"
    for kind in catalog.batch_kinds():
        assert catalog.pipeline(kind).capture_steps, kind


def test_summary_keys_feed_the_status_table_and_the_report() -> None:
    from capture3d.flows.status import SUMMARY_KEYS
    from capture3d.ops.report import DEFAULT_THRESHOLDS
    from capture3d.ops.report_html import KIND_STAGES
    from capture3d.ops.report_html import SUMMARY_KEYS as REPORT_KEYS

    keys = catalog.summary_keys()
    assert keys == SUMMARY_KEYS and REPORT_KEYS[:-1] == keys
    assert "gaussians_psnr" in keys and "body_pa_mpjpe_mm" in keys and "num_placed" in keys
    exact = {k for k in DEFAULT_THRESHOLDS if "*" not in k}  # regression thresholds on named summary keys
    assert exact <= set(keys), exact - set(keys)
    assert KIND_STAGES["photos"] == ("sfm", "evaluate_sfm", "fit_gaussians", "fit_nerf")


NEW_TASK = '''
"""Photo statistics: mean brightness and sharpness (variance of a Laplacian) per image."""
from __future__ import annotations
import logging
from pathlib import Path
import numpy as np
from PIL import Image
logger = logging.getLogger(__name__)
def image_stats(paths: list[Path]) -> dict[str, float]:
    """Mean brightness (0-255) and mean Laplacian variance of the images."""
    bright, sharp = [], []
    for p in paths:
        g = np.asarray(Image.open(p).convert("L"), dtype=np.float64)  # (H, W)
        lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
        bright.append(g.mean())
        sharp.append(lap.var())
    return {"num_images": len(paths), "mean_brightness": float(np.mean(bright)),
            "mean_sharpness": float(np.mean(sharp))}
'''

NEW_STAGE = '''
"""DVC stage ``image_stats``: a photo capture's brightness and sharpness.

Inputs: a capture folder (``images/`` or photos) and the ``image_stats`` section. Output folder
(atomic): ``metrics.json``.
"""
from __future__ import annotations
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.errors import CaptureError
from capture3d.stage_cli import stage_main
from capture3d.stages.common import CaptureInputs, write_json
from capture3d.tasks.sfm.image_folder import scan_images
from capture3d.tasks.sfm.image_stats import image_stats
logger = logging.getLogger(__name__)
@dataclass(frozen=True)
class ImageStatsConfig:
    """The ``image_stats`` section."""
    min_sharpness: float
    """captures whose mean sharpness is below this fail"""
Inputs = CaptureInputs
def load_config(params: Mapping[str, Any]) -> ImageStatsConfig:
    return section(params, "image_stats", ImageStatsConfig)
def run(inputs: CaptureInputs, out: Path, config: ImageStatsConfig) -> Path:
    folder = scan_images(inputs.data_dir("images"))
    stats = image_stats([folder.root / n for n in folder.names])
    if stats["mean_sharpness"] < config.min_sharpness:
        raise CaptureError(inputs.label, f"photos too blurred ({stats['mean_sharpness']:.3g})")
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", {"capture": inputs.label, **stats})
    return out
def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(__name__, argv)
'''

NEW_STEP = """
PHOTOS = dataclasses.replace(PHOTOS, steps=(*PHOTOS.steps, Step(
    "image_stats", _m(capture="{capture}"), summary=_m(mean_sharpness="mean_sharpness"),
    display=("num_images", "mean_brightness", "mean_sharpness"), command=("image-stats",),
    help="brightness and sharpness of a photo capture")))
PIPELINES = (PHOTOS, *PIPELINES[1:])
"""


def test_a_new_photos_stage_needs_four_places(repo_root: Path, tmp_path: Path) -> None:
    """Dry run of the done-when of the catalog issue: add a real photos stage in four places (task
    module, stage module, catalog entry, params section) in a copy of the project; dvc.yaml (with
    its import-closure deps), the batch work key, the CLI and a batch step all pick it up."""
    repo = tmp_path / "project"
    shutil.copytree(repo_root / "capture3d", repo / "capture3d", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo_root / "params.yaml", repo / "params.yaml")
    (repo / "capture3d/tasks/sfm/image_stats.py").write_text(textwrap.dedent(NEW_TASK))  # 1
    (repo / "capture3d/stages/image_stats.py").write_text(textwrap.dedent(NEW_STAGE))  # 2
    text = (repo / "capture3d/catalog.py").read_text()
    marker = "PIPELINES: tuple[Pipeline, ...] = (PHOTOS, SCANS, FCGF, BODIES)"
    text = text.replace(marker, marker + "\n" + textwrap.dedent(NEW_STEP))  # 3
    text = text.replace(
        "from __future__ import annotations\n", "from __future__ import annotations\n\nimport dataclasses\n", 1
    )
    (repo / "capture3d/catalog.py").write_text(text)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["image_stats"] = {"min_sharpness": 1.0}  # 4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(repo), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def py(code: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    out = py("""
        from pathlib import Path
        import yaml
        from capture3d.ops.dvc_yaml import render
        from capture3d.ops.batch_plan import kind_sections
        stage = yaml.safe_load(render(Path(".")))["stages"]["image_stats"]
        print(stage["foreach"], stage["do"]["cmd"])
        print("DEPS", " ".join(stage["do"]["deps"]))
        print("SECTIONS", " ".join(kind_sections("photos")))
    """)
    assert "${captures} python -m capture3d.stages.image_stats --capture data/captures/${item}" in out
    deps = out.split("DEPS ")[1].split("\n")[0].split()
    assert "capture3d/tasks/sfm/image_stats.py" in deps and "capture3d/tasks/sfm/image_folder.py" in deps
    assert "image_stats" in out.split("SECTIONS ")[1]
    help_text = subprocess.run(
        [sys.executable, "-m", "capture3d.cli", "image-stats", "--help"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_text.returncode == 0 and "--min-sharpness" in help_text.stdout, help_text.stdout + help_text.stderr
    captures = tmp_path / "captures" / "cap" / "images"
    captures.mkdir(parents=True)
    from PIL import Image

    rng = __import__("numpy").random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype("uint8")).save(captures / f"{i}.png")
    out = py(f"""
        from pathlib import Path
        from capture3d.config import load_params
        from capture3d.ops.steps import run_step
        print(run_step("photos", "image_stats", "cap", Path({str(captures.parent)!r}), Path({str(tmp_path / "res")!r}),
                       load_params(Path("params.yaml"))))
    """)
    assert "mean_sharpness" in out
    assert (tmp_path / "res" / "image_stats" / "metrics.json").is_file()
