"""``dvc.yaml``, generated from the stage catalog and the stages' import closures.

Input: :data:`capture3d.catalog.PIPELINES` and the package source (for each stage's import closure,
:func:`capture3d.ops.code_deps.import_closure`). Output: the text of ``dvc.yaml``: one stage per
step, ``foreach`` over the pipeline's captures for per-capture steps, the command running the same
``capture3d.stages.<name>`` module the flows run, data deps, every module the stage imports as a
code dep, its params sections, outputs, metrics and plots. ``python -m capture3d.ops.dvc_yaml
--write`` rewrites the project's file; ``--check`` exits 1 when the committed file differs (a
test runs the same comparison).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from capture3d.catalog import PIPELINES, Pipeline, Step, fill
from capture3d.ops.code_deps import import_closure

logger = logging.getLogger(__name__)

HEADER = """\
# GENERATED from capture3d/catalog.py by `python -m capture3d.ops.dvc_yaml --write`: edit the
# catalog, not this file (tests/test_dvc_pipeline.py fails when the two differ).
# One stage per step; per-capture stages use foreach over the capture lists in params.yaml, so
# each capture is cached on its own. Every stage runs the same `capture3d.stages.<name>.run` as
# the Prefect flows and tracks its whole params.yaml sections. Its capture3d/ deps are its
# module's import closure, so a change to any module a stage runs invalidates it.
"""


def stage_paths(pipeline: Pipeline, step: Step) -> dict[str, str]:
    """Template values in DVC's syntax (``${item}`` for per-capture steps)."""
    item = "${item}"
    return {
        "capture": f"{pipeline.captures_dir}/{item}",
        "results": f"results/{item}",
        "name": item,
        "data": pipeline.captures_dir,
        "param": "${{{}}}",
    }


def _fill(template: str, values: dict[str, str]) -> str:
    return fill(template, **values)


def stage_out_path(out_dir: str, rel: str) -> str:
    return out_dir if rel == "." else f"{out_dir}/{rel}"


def stage_command(step: Step, values: dict[str, str], out_dir: str) -> list[str]:
    words = [f"python -m {step.module}"]
    words += [f"--{field} {_fill(t, values)}" for field, t in step.inputs.items()]
    words.append(f"--out {out_dir}")
    if step.per_capture:
        words.append("--name ${item}")
    return words


def stage_cmd_lines(words: list[str], indent: str) -> list[str]:
    one = " ".join(words)
    if len(indent) + len("cmd: ") + len(one) <= 118:
        return [f"{indent}cmd: {one}"]
    lines, current = [], ""
    for word in words:
        if current and len(indent) + 2 + len(current) + 1 + len(word) > 110:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return [f"{indent}cmd: >-"] + [f"{indent}  {line}" for line in lines]


def stage_lines(pipeline: Pipeline, step: Step, root: Path) -> list[str]:
    """The dvc.yaml lines of one step (without the trailing blank line)."""
    values = stage_paths(pipeline, step)
    out_dir = _fill(step.out_template, values)
    lines = [f"  # {line}" for line in step.dvc_comment.splitlines()]
    lines.append(f"  {step.name}:")
    indent = "    "
    if step.per_capture:
        lines += [f"    foreach: ${{{pipeline.captures_key}}}", "    do:"]
        indent = "      "
    lines += stage_cmd_lines(stage_command(step, values, out_dir), indent)
    data = []
    if any("{capture}" in t for t in step.inputs.values()):
        data.append(values["capture"])
    data += [_fill(t, values) for t in step.deps]
    code = import_closure(step.module, root)
    lines.append(f"{indent}deps:")
    lines += [f"{indent}  - {d}" for d in dict.fromkeys([*data, *code])]
    lines.append(f"{indent}params:")
    lines += [f"{indent}  - {s}" for s in step.params_sections]
    return lines + stage_output_lines(step, out_dir, indent)


def stage_output_lines(step: Step, out_dir: str, indent: str) -> list[str]:
    """The ``outs``, ``metrics`` and ``plots`` entries of ``step`` writing under ``out_dir``."""
    lines: list[str] = []
    if step.outs:
        lines.append(f"{indent}outs:")
        lines += [f"{indent}  - {stage_out_path(out_dir, o)}" for o in step.outs]
    if step.metrics:
        lines += [f"{indent}metrics:", f"{indent}  - {out_dir}/{step.metrics}:", f"{indent}      cache: false"]
    if step.plots:
        lines.append(f"{indent}plots:")
        for plot in step.plots:
            lines += [
                f"{indent}  - {out_dir}/{plot.file}:",
                f"{indent}      x: {plot.x}",
                f"{indent}      y: {plot.y}",
                f"{indent}      cache: false",
            ]
    return lines


def render(root: Path) -> str:
    """The whole dvc.yaml for the package source under ``root`` (the project folder)."""
    lines = [HEADER.rstrip("\n"), "stages:"]
    for pipeline in PIPELINES:
        for step in pipeline.steps:
            lines += stage_lines(pipeline, step, root)
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``--write``: rewrite ``<root>/dvc.yaml``; ``--check``: exit 1 when it differs from the catalog."""
    parser = argparse.ArgumentParser(prog="python -m capture3d.ops.dvc_yaml", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2], help="project folder")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write dvc.yaml")
    mode.add_argument("--check", action="store_true", help="exit 1 when dvc.yaml is not the generated one")
    args = parser.parse_args(argv)
    path = args.root / "dvc.yaml"
    text = render(args.root)
    if args.write:
        path.write_text(text)
        return 0
    if not path.is_file() or path.read_text() != text:
        sys.stderr.write(f"error: {path} differs from the catalog: run python -m capture3d.ops.dvc_yaml --write\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
