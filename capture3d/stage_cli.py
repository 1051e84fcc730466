"""Command lines generated from the stages' dataclasses: one flag per input and per params field.

Inputs: a stage module (its ``Inputs`` dataclass, ``load_config`` whose return annotation names
the config dataclass, ``run``, and optional ``INPUT_ALIASES`` / ``CLI_ALIASES`` of legacy flags) and
its :class:`capture3d.catalog.Step`. Outputs: the stage's argparse arguments (``python -m
capture3d.stages.<name>`` and the ``capture3d`` subcommand get the same ones), the parsed command
line as an :class:`Invocation` (inputs, output folder, ``--set`` overrides), and the params
reference of the README.

Flags: one per ``Inputs`` field (``--capture``, ``--model`` ...; required when the field has no
default), ``--out``, ``--name``, ``--params FILE``, repeated ``--set SECTION.KEY=VALUE``, and one per
leaf field of the stage's config dataclass, nested dataclasses dotted (``--pair.global-method``).
A config flag becomes one more ``--set`` override after the explicit ones, so
:mod:`capture3d.config` checks its type; ``Literal`` fields get ``choices``. Every flag's help is
its field's attribute docstring (:func:`field_docs`). ``python -m capture3d.stage_cli
--write-readme`` rewrites the README's params reference; ``--check-readme`` exits 1 when it is
stale. No Prefect, no DVC; stage modules are imported by name, and only when needed.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import inspect
import itertools
import json
import logging
import sys
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture3d import catalog
from capture3d.catalog import Step
from capture3d.config import load_params
from capture3d.errors import Capture3dError
from capture3d.stages.common import add_params_arguments, configure_logging, error_line

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
README_START = "<!-- params-reference:start -->"
README_END = "<!-- params-reference:end -->"
_SET = "set:"  # argparse dest prefix of the config flags
_ADD = "add:"  # ... and of the repeatable legacy flags that add to a list


@dataclass(frozen=True)
class Flag:
    """A legacy flag that is more than another name of a config field's flag (``CLI_ALIASES``)."""

    key: str
    """the config field it sets, inside the stage's section (``data.extra_captures``)"""
    const: str | None = None
    """a switch without a value that sets ``key`` to this"""
    append: bool = False
    """repeatable: each use adds one item to the list ``key``"""
    nargs: bool = False
    """with ``append``: each use takes one or more values (``--unlabeled A B``)"""
    also: tuple[str, ...] = ()
    """``KEY=VALUE`` overrides (inside the section) that setting ``key`` implies"""
    help: str = ""
    """help text (default: the field's docstring)"""


@dataclass(frozen=True)
class Leaf:
    """A leaf field of a params section: its dotted key, type and docstring."""

    key: str
    """dotted key inside the section (``pair.global_method``)"""
    hint: Any
    """the field's type"""
    doc: str
    """the field's attribute docstring"""

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def dest(self) -> str:
        return _SET + self.key


@dataclass(frozen=True)
class Invocation:
    """A parsed stage command line: what to call ``run`` with."""

    inputs: Any
    """the stage's ``Inputs``"""
    out: Path
    """the output folder"""
    overrides: list[str]
    """``--set`` overrides, the config flags' after the explicit ones"""
    label: str
    """the capture named in error lines"""


# ----------------------------------------------------------------------------- dataclass reading


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of ``cls`` and its bases (the string literal right after a field; a
    subclass's wins), whitespace collapsed to single spaces."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        try:
            node = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        except (OSError, TypeError, SyntaxError):
            continue
        body = node.body if isinstance(node, ast.ClassDef) else []
        for stmt, after in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def config_leaves(cls: type, prefix: str = "") -> list[Leaf]:
    """The leaf fields of config dataclass ``cls``, nested dataclasses flattened to dotted keys."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    leaves: list[Leaf] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            leaves += config_leaves(hint, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        else:
            leaves.append(Leaf(prefix + f.name, hint, docs.get(f.name, "")))
    return leaves


def config_class(module: types.ModuleType) -> type:
    """The stage's config dataclass: the return annotation of its ``load_config`` (the first
    element when it returns a tuple of sections)."""
    hint = typing.get_type_hints(module.load_config)["return"]
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return hint


def type_name(hint: Any) -> str:
    """A short description of a field type: ``auto | cpu | cuda``, ``list of float``, ``int``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is tuple:
        return f"list of {type_name(args[0]) if args else 'any'}"
    if origin is dict or hint is dict:
        return "mapping"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _is_text(hint: Any) -> bool:
    if typing.get_origin(hint) is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(hint))
    return hint is str


def override_value(text: str, hint: Any) -> str:
    """A flag's text as the YAML value of its ``--set`` override: strings quoted (so ``on`` or
    ``123`` stay strings), comma-separated items for a list of strings (``--features fpfh,fcgf``)."""
    if _is_text(hint):
        return json.dumps(text)
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[:1] == (str,) and not text.lstrip().startswith("["):
        return json.dumps([item.strip() for item in text.split(",") if item.strip()])
    return text


# ----------------------------------------------------------------------------- the parser


def step_of(module: types.ModuleType) -> Step:
    """The catalog step of a stage module (imported, or run as ``__main__``)."""
    return catalog.step(Path(module.__file__ or "").stem)


def _help(text: str) -> str:
    """A docstring as argparse help: reST literals unquoted, ``%`` escaped."""
    return text.replace("``", "").replace("%", "%%")


def _input_type(hint: Any) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return next((t for t in (Path, int, float) if t in args), str)


def _results_field(step: Step) -> str | None:
    """The input that is an earlier step's output folder (``model``, ``result``): the default
    output goes beside it."""
    return next((f for f, t in step.inputs.items() if f != "capture" and t.startswith("{results}/")), None)


def _fill_out(step: Step, results: str, name: str, capture: str) -> str:
    return catalog.fill(
        step.out_template, results=results, name=name, capture=capture, data=catalog.pipeline_of(step.name).captures_dir
    )


def out_hint(step: Step) -> str:
    """The default output folder in words: ``<model>/../evaluate_sfm``, ``results/<name>/sfm``."""
    field = _results_field(step)
    return _fill_out(step, f"<{field}>/.." if field else "results/<name>", "<name>", "<capture>")


def add_stage_arguments(
    parser: argparse.ArgumentParser, module: types.ModuleType, step: Step, default_out: bool = False
) -> None:
    """Add the stage's flags to ``parser``; with ``default_out`` ``--out`` defaults to the step's
    output template (the ``capture3d`` subcommand) instead of being required."""
    section = step.params_sections[0]
    input_aliases: Mapping[str, str] = getattr(module, "INPUT_ALIASES", {})
    aliases: Mapping[str, str | Flag] = getattr(module, "CLI_ALIASES", {})
    hints = typing.get_type_hints(module.Inputs)
    docs = field_docs(module.Inputs)
    fields = dataclasses.fields(module.Inputs)
    for f in fields:
        names = [f"--{f.name.replace('_', '-')}", *(f"--{a}" for a, t in input_aliases.items() if t == f.name)]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        parser.add_argument(
            *names,
            dest=f.name,
            type=_input_type(hints[f.name]),
            required=required,
            default=None,
            metavar=f.name.upper(),
            help=_help(docs.get(f.name, "")),
        )
    out_help = "output folder (replaced atomically)" + (f"; default: {out_hint(step)}" if default_out else "")
    parser.add_argument("--out", type=Path, required=not default_out, default=None, help=_help(out_help))
    if "name" not in {f.name for f in fields}:
        parser.add_argument("--name", default="", help="name used in messages")
    add_params_arguments(parser)
    group = parser.add_argument_group(
        f"params.yaml section '{section}'", f"each flag overrides one setting, as --set {section}.KEY=VALUE"
    )
    leaves = {leaf.key: leaf for leaf in config_leaves(config_class(module))}
    for leaf in leaves.values():
        names = [
            leaf.flag,
            *(
                f"--{a}"
                for a, t in aliases.items()
                if f"--{a}" != leaf.flag
                and (t == leaf.key or (isinstance(t, Flag) and t.key == leaf.key and t.const is None and not t.append))
            ),
        ]
        if leaf.hint is bool:
            kind: dict[str, Any] = {"choices": ["true", "false"]}
        elif _is_text(leaf.hint) and typing.get_origin(leaf.hint) is typing.Literal:
            kind = {"choices": list(typing.get_args(leaf.hint))}
        else:
            kind = {"metavar": {int: "INT", float: "NUMBER", str: "TEXT"}.get(leaf.hint, "VALUE")}
        group.add_argument(*names, dest=leaf.dest, default=None, help=_help(leaf.doc), **kind)
    for alias, target in aliases.items():
        if not isinstance(target, Flag):
            if target not in leaves:
                raise KeyError(f"{step.module}: CLI_ALIASES {alias!r} names no field {target!r}")
            continue
        leaf = leaves[target.key]
        if target.const is not None:
            group.add_argument(
                f"--{alias}",
                dest=leaf.dest,
                action="store_const",
                const=target.const,
                help=_help(target.help or f"{leaf.key}: {target.const}"),
            )
        elif target.append:
            group.add_argument(
                f"--{alias}",
                dest=_ADD + leaf.key,
                action="extend" if target.nargs else "append",
                nargs="+" if target.nargs else None,
                default=[],
                metavar="VALUE",
                help=_help(target.help or f"{leaf.doc} (repeatable: adds one)"),
            )


def build_parser(module: types.ModuleType | str) -> argparse.ArgumentParser:
    """The parser of ``python -m capture3d.stages.<name>`` (``--out`` required)."""
    module = _module(module)
    step = step_of(module)
    parser = argparse.ArgumentParser(
        prog=f"python -m {step.module}", description=(module.__doc__ or step.help).strip().splitlines()[0]
    )
    add_stage_arguments(parser, module, step)
    return parser


def overrides(module: types.ModuleType, step: Step, args: argparse.Namespace) -> list[str]:
    """``--set`` overrides of the parsed command line: the explicit ones, then what the config
    flags imply (``also``), then the config flags themselves."""
    section = step.params_sections[0]
    aliases: Mapping[str, str | Flag] = getattr(module, "CLI_ALIASES", {})
    given = [leaf for leaf in config_leaves(config_class(module)) if getattr(args, leaf.dest, None) is not None]
    result = list(getattr(args, "overrides", []))
    keys = {leaf.key for leaf in given}
    result += [f"{section}.{o}" for t in aliases.values() if isinstance(t, Flag) and t.key in keys for o in t.also]
    result += [f"{section}.{leaf.key}={override_value(str(getattr(args, leaf.dest)), leaf.hint)}" for leaf in given]
    for target in aliases.values():
        if isinstance(target, Flag) and target.append and getattr(args, _ADD + target.key, None):
            result.append(f"{section}.{target.key}={json.dumps([str(v) for v in getattr(args, _ADD + target.key)])}")
    return result


def default_out(step: Step, inputs: Any, label: str) -> Path:
    """The step's output template filled for one command line: beside an earlier step's output
    (``<model>/../evaluate_sfm``), else under ``results/<name>`` (``results/<name>/fit_gaussians``)."""
    field = _results_field(step)
    results = Path(getattr(inputs, field)).parent if field else Path("results") / label
    return Path(_fill_out(step, str(results), label, str(getattr(inputs, "capture", "") or "")))


def invocation(module: types.ModuleType, step: Step, args: argparse.Namespace) -> Invocation:
    """The stage's inputs, output folder (``--out``, else :func:`default_out`) and overrides."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(module.Inputs)
        if getattr(args, f.name, None) is not None
    }
    inputs = module.Inputs(**given)
    label = str(getattr(inputs, "label", "") or getattr(args, "name", "") or "")
    out = args.out if args.out is not None else default_out(step, inputs, label)
    return Invocation(inputs, Path(out), overrides(module, step, args), label)


def run_invocation(module: types.ModuleType, call: Invocation, params_file: Path | None) -> Path:
    """Load the config (params file + overrides) and run the stage; returns its output folder."""
    config = module.load_config(load_params(params_file, call.overrides))
    return Path(module.run(call.inputs, call.out, config))


def stage_main(module: types.ModuleType | str, argv: Sequence[str] | None = None) -> int:
    """A stage module's ``main``: parse, run; a :class:`Capture3dError` becomes one line on stderr
    (naming the capture) and its exit code."""
    module = _module(module)
    step = step_of(module)
    args = build_parser(module).parse_args(argv)
    configure_logging()
    label = getattr(args, "name", "") or ""
    try:
        call = invocation(module, step, args)
        label = call.label
        run_invocation(module, call, args.params)
    except Capture3dError as exc:
        logger.debug("stage failed", exc_info=True)
        sys.stderr.write(f"error: {error_line(exc, label)}\n")
        return exc.exit_code
    return 0


def _module(module: types.ModuleType | str) -> types.ModuleType:
    return sys.modules[module] if isinstance(module, str) else module


# ----------------------------------------------------------------------------- params reference


def _cell(text: str) -> str:
    """One markdown table cell: one line, reST literals as code spans, ``|`` escaped, ``<`` and ``>``
    outside code spans as entities (``meshes/<body>`` is not an HTML tag)."""
    parts = " ".join(text.split()).replace("``", "`").replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def _default_text(params: Mapping[str, Any], section: str, key: str) -> str:
    node: Any = params.get(section, {})
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return ""
        node = node[part]
    if isinstance(node, str):
        return f"`{node}`" if node else '`""`'
    if isinstance(node, list) and node and all(isinstance(v, Mapping) for v in node):
        return f"{len(node)} entries (params.yaml)"
    return f"`{json.dumps(node)}`"


def params_reference(params_file: Path | None = None) -> str:
    """Markdown: one table per stage's params section (key, type or choices, the params.yaml
    value, the field's docstring), in pipeline order."""
    params = load_params(params_file or ROOT / "params.yaml")
    lines = [
        "## Params reference",
        "",
        "Generated from the stages' config dataclasses (`python -m capture3d.stage_cli --write-readme`;",
        "a test fails when it is stale). Every key is also a flag of its stage's command: `pair.global_method`",
        "of `register_scans` is `capture3d register --pair.global-method` and",
        "`python -m capture3d.stages.register_scans --pair.global-method`, the same as",
        "`--set register_scans.pair.global_method=...`.",
    ]
    for step in catalog.steps():
        module = importlib.import_module(step.module)
        cls = config_class(module)
        section = step.params_sections[0]
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        lines += ["", f"### `{section}`", ""]
        if summary:
            lines += [summary.replace("``", "`"), ""]
        lines += ["| key | type | params.yaml | meaning |", "|---|---|---|---|"]
        for leaf in config_leaves(cls):
            cells = (f"`{leaf.key}`", type_name(leaf.hint), _default_text(params, section, leaf.key), leaf.doc)
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def readme_with_reference(readme: str, reference: str) -> str:
    """``readme`` with the text between the params-reference markers replaced by ``reference``."""
    start, end = readme.index(README_START) + len(README_START), readme.index(README_END)
    return readme[:start] + "\n" + reference + readme[end:]


def readme_main(argv: Sequence[str] | None = None) -> int:
    """``--write-readme``: rewrite the README's params reference; ``--check-readme``: exit 1 when stale."""
    parser = argparse.ArgumentParser(prog="python -m capture3d.stage_cli", description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="the README to update")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write-readme", action="store_true", help="rewrite the params reference section")
    mode.add_argument("--check-readme", action="store_true", help="exit 1 when the section is stale")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    new = readme_with_reference(text, params_reference())
    if args.write_readme:
        args.readme.write_text(new)
        return 0
    if new != text:
        sys.stderr.write(
            f"error: the params reference in {args.readme} is stale: run python -m capture3d.stage_cli --write-readme\n"
        )
        return 1
    return 0


if __name__ == "__main__":  # the package's own copy of this module, not a second one as __main__
    raise SystemExit(importlib.import_module("capture3d.stage_cli").readme_main())
