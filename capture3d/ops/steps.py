"""Run one catalog step for one capture: the stage's own ``run``, its inputs filled from the catalog.

Inputs: the capture kind, the step name, the capture's name and folder, its results folder, the
params and the summary metrics of the steps before. Output: the step's summary metrics (the keys
:attr:`capture3d.catalog.Step.summary` names, read from the stage's metrics file). A step that
needs ground truth the capture does not have is skipped (``{}``). :func:`run_step` can run a heavy
step in a child Python process (``python -m capture3d.ops.steps REQUEST RESULT``), so its memory is
returned to the system before the next capture, or, given a :class:`~capture3d.ops.workers.WorkerPool`,
in one of its warm worker processes (imports and built models kept across captures); either way the
child's one-line error becomes a ``RuntimeError`` here. No Prefect: the flows wrap :func:`run_step`
as one Prefect task per step.

Model cache (``models`` of :func:`run_in_process`, a worker's own dict): a stage module that has
``build_model(config, device)`` and whose ``run`` takes a ``model`` argument (``fit_bodies``) gets
the model built once per (stage, config) and passed to ``run`` again for every later capture.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Hashable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capture3d.catalog import Step, fill, pipeline, step

if TYPE_CHECKING:
    from capture3d.ops.workers import WorkerPool

logger = logging.getLogger(__name__)


def _param(params: Mapping[str, Any], key: str) -> str:
    node: Any = params
    for part in key.split("."):
        node = node[part]
    return str(node)


def template_values(name: str, capture: Path, results: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """The values :func:`capture3d.catalog.fill` gives a step's path templates for one capture."""
    return {
        "capture": str(capture),
        "results": str(results),
        "name": name,
        "data": str(Path(capture).parent),
        "param": lambda key: _param(params, key),
    }


def step_inputs(
    kind: str,
    name: str,
    capture: Path,
    results: Path,
    params: Mapping[str, Any],
    step_name: str,
    out: Path | None = None,
) -> tuple[Any, Path]:
    """The stage's ``Inputs`` and output folder (``out``, default from the step's template) for one
    capture, from the step's path templates."""
    spec = step(step_name)
    module = importlib.import_module(spec.module)
    values = template_values(name, capture, results, params)
    fields = {field: Path(fill(t, **values)) for field, t in spec.inputs.items()}
    out = Path(out) if out is not None else Path(fill(spec.out_template, **values))
    if spec.per_capture:
        fields["name"] = name
    return module.Inputs(**fields), out


def summarize(spec: Step, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The step's summary keys from its metrics; ``a.*.b`` keys flatten nested per-name dicts
    (``features.*.feature_match_recall`` -> ``fpfh_feature_match_recall``, ...)."""
    out: dict[str, Any] = {}
    for key, summary_key in spec.summary.items():
        if ".*." in key:
            outer, inner = key.split(".*.")
            for sub, values in (metrics.get(outer) or {}).items():
                if isinstance(values, Mapping) and inner in values:
                    out[summary_key.replace("*", sub)] = values[inner]
        elif key in metrics:
            out[summary_key] = metrics[key]
    return out


def run_in_process(
    kind: str,
    step_name: str,
    name: str,
    capture: Path,
    results: Path,
    params: Mapping[str, Any],
    out: Path | None = None,
    models: MutableMapping[Hashable, Any] | None = None,
) -> dict[str, Any]:
    """Run the step here (into ``out``, default from the catalog's template); its summary metrics
    ({} when skipped for lack of ground truth). ``models``: a cache of built models (see the
    module docstring), kept by the caller across captures."""
    spec = step(step_name)
    if spec not in pipeline(kind).steps:
        raise KeyError(f"step {step_name!r} is not part of the {kind} pipeline")
    module = importlib.import_module(spec.module)
    inputs, out = step_inputs(kind, name, capture, results, params, step_name, out)
    if spec.needs_ground_truth and not module.has_ground_truth(inputs):
        logger.info("capture '%s': no ground truth, %s skipped", name, step_name)
        return {}
    config = module.load_config(params)
    extra = (
        {"model": _cached_model(spec, module, config, models)} if models is not None and _takes_model(module) else {}
    )
    result = Path(module.run(inputs, out, config, **extra))
    if not spec.metrics:
        return {}
    return summarize(spec, json.loads((result / spec.metrics).read_text()))


def run_step(
    kind: str,
    step_name: str,
    name: str,
    capture: Path,
    results: Path,
    params: Mapping[str, Any],
    isolate: bool = False,
    out: Path | None = None,
    pool: WorkerPool | None = None,
) -> dict[str, Any]:
    """:func:`run_in_process`, or for a heavy step with ``isolate`` the same in a child process:
    a warm worker of ``pool`` when given, else a new ``python -m capture3d.ops.steps``."""
    if not (isolate and step(step_name).heavy):
        return run_in_process(kind, step_name, name, capture, results, params, out)
    if pool is not None:
        return pool.run_step(kind, step_name, name, Path(capture), Path(results), dict(params), out)
    with tempfile.TemporaryDirectory(prefix="capture3d-step-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(
            json.dumps(
                {
                    "kind": kind,
                    "step": step_name,
                    "name": name,
                    "capture": str(capture),
                    "results": str(results),
                    "params": params,
                    "out": str(out) if out is not None else None,
                },
                default=str,
            )
        )
        proc = subprocess.run(
            [sys.executable, "-m", "capture3d.ops.steps", str(request), str(result)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            raise RuntimeError(lines[-1].removeprefix("error: ") if lines else f"exit status {proc.returncode}")
        return json.loads(result.read_text())


def warm_models(
    step_names: Sequence[str], params: Mapping[str, Any], models: MutableMapping[Hashable, Any]
) -> list[str]:
    """Import the steps' stages and build into ``models`` those their ``run`` would reuse (a
    worker's warm-up, before its first capture); the steps whose model is now built."""
    built = []
    for step_name in step_names:
        spec = step(step_name)
        module = importlib.import_module(spec.module)
        if _takes_model(module):
            _cached_model(spec, module, module.load_config(params), models)
            built.append(step_name)
    return built


def _cached_model(spec: Step, module: Any, config: Any, models: MutableMapping[Hashable, Any]) -> Any:
    """The stage's model for ``config`` from ``models``, built and stored there the first time."""
    key = (spec.module, repr(config))
    if key not in models:
        from capture3d.tasks.device import resolve_device

        models[key] = module.build_model(config, resolve_device(config.device))
        logger.info("%s: model built, kept for later captures", spec.name)
    return models[key]


def _takes_model(module: Any) -> bool:
    """Whether a stage module can reuse a built model: ``build_model`` and ``run(..., model)``."""
    return hasattr(module, "build_model") and "model" in inspect.signature(module.run).parameters


def main(argv: Sequence[str] | None = None) -> int:
    """Child-process entry of :func:`run_step`: ``python -m capture3d.ops.steps REQUEST RESULT``."""
    request_path, result_path = (argv if argv is not None else sys.argv[1:])[:2]
    request = json.loads(Path(request_path).read_text())
    try:
        metrics = run_in_process(
            request["kind"],
            request["step"],
            request["name"],
            Path(request["capture"]),
            Path(request["results"]),
            request["params"],
            Path(request["out"]) if request.get("out") else None,
        )
    except Exception as exc:  # noqa: BLE001 - one line to the parent
        sys.stderr.write(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        return 1
    Path(result_path).write_text(json.dumps(metrics, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
