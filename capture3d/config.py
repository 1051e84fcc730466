"""params.yaml loading: sections into frozen dataclasses, with strict keys and types.

Inputs: a params file (YAML) and ``SECTION.KEY=VALUE`` overrides in the syntax of
``dvc exp run -S`` (values parsed as YAML). Outputs: plain dicts and frozen dataclass instances.
Unknown keys, missing keys and wrong types raise :class:`ParamsError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from capture3d.errors import ParamsError

logger = logging.getLogger(__name__)

T = TypeVar("T")

PARAMS_FILE = "params.yaml"


def default_params_path() -> Path:
    """``./params.yaml`` when present, else the project's own ``params.yaml`` beside the package (a
    source checkout), else the defaults installed with the package (:func:`packaged_params_path`)."""
    here = Path.cwd() / PARAMS_FILE
    if here.is_file():
        return here
    beside = Path(__file__).resolve().parents[1] / PARAMS_FILE
    return beside if beside.is_file() else packaged_params_path()


def packaged_params_path() -> Path:
    """The defaults shipped in the package: ``capture3d/defaults/params.yaml``, a copy of the
    project's ``params.yaml`` (``python -m capture3d.ops.project --write-defaults``; a test checks it)."""
    return Path(__file__).resolve().parent / "defaults" / PARAMS_FILE


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"sfm.mapper=global"`` -> (["sfm", "mapper"], "global"); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override '{text}': expected SECTION.KEY=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"override '{text}': value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), value


def apply_overrides(params: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``params`` with each override set; unknown paths are refused."""
    result = _deep_copy(params)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = result
        for part in path[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise ParamsError(f"override '{text}': unknown key '{'.'.join(path)}'")
            node = node[part]
        if not isinstance(node, dict) or path[-1] not in node:
            raise ParamsError(f"override '{text}': unknown key '{'.'.join(path)}'")
        node[path[-1]] = value
    return result


def load_params(path: Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a params YAML file (default: :func:`default_params_path`) and apply overrides."""
    path = Path(path) if path is not None else default_params_path()
    if not path.is_file():
        raise ParamsError(f"params file '{path}' not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"params file '{path}': invalid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"params file '{path}': expected a mapping of sections")
    return apply_overrides(data, overrides)


def section(params: Mapping[str, Any], name: str, cls: type[T]) -> T:
    """Build the frozen dataclass ``cls`` from section ``name`` of ``params``, checking keys and types."""
    if name not in params:
        raise ParamsError(f"params: section '{name}' is missing")
    return from_mapping(cls, params[name], name)


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` names the section in error messages."""
    if not isinstance(data, Mapping):
        raise ParamsError(f"params: '{where}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in set(data) - set(fields))
    if unknown:
        raise ParamsError(f"params: unknown key(s) in '{where}': {', '.join(unknown)}")
    missing = sorted(set(fields) - set(data))
    if missing:
        raise ParamsError(f"params: missing key(s) in '{where}': {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    values = {k: coerce(data[k], hints[k], f"{where}.{k}") for k in fields}
    return cls(**values)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint`` (and convert lists to tuples, ints to floats)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Literal:
        if value not in args:
            choices = " | ".join(repr(a) for a in args)
            raise ParamsError(f"params: '{where}' must be one of {choices}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return coerce(value, arg, where)
            except ParamsError:
                continue
        raise ParamsError(f"params: '{where}' has the wrong type ({_describe(value)}; expected {hint})")
    if hint is type(None):
        if value is not None:
            raise ParamsError(f"params: '{where}' must be null")
        return None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"params: '{where}' must be a list, got {_describe(value)}")
        item = args[0] if args else Any
        return tuple(coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ParamsError(f"params: '{where}' must be a mapping, got {_describe(value)}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where)  # type: ignore[arg-type]
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"params: '{where}' must be true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"params: '{where}' must be an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"params: '{where}' must be a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ParamsError(f"params: '{where}' must be a string, got {_describe(value)}")
        return value
    raise ParamsError(f"params: '{where}': unsupported type {hint}")


def replace_checked(obj: T, changes: Mapping[str, Any], where: str) -> T:
    """``dataclasses.replace`` with the same key and type checks as :func:`from_mapping`."""
    merged = {**dataclasses.asdict(obj), **dict(changes)}  # type: ignore[call-overload]
    return from_mapping(type(obj), merged, where)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
