"""benchmarks/gpu_check.py (`make gpu-check`): its no-CUDA path, its output parsers and its timeouts."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_without_cuda_it_says_so_and_exits_0(gpu_check) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU even on a CUDA machine
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "CUDA is unavailable" in proc.stdout
    assert proc.stdout.strip() == gpu_check.UNAVAILABLE


@pytest.mark.parametrize(
    "summary, passed, text",
    [
        ("3 passed, 356 deselected, 1 warning in 12.30s", True, "3 passed"),
        ("===== 3 passed, 356 deselected in 4.0s =====", True, "3 passed"),
        ("2 passed, 1 skipped, 356 deselected in 9.1s", False, "2 passed, 1 skipped"),
        ("1 failed, 2 passed, 356 deselected in 5.0s", False, "2 passed, 1 failed"),
        ("356 deselected, 1 warning, 1 error in 5.24s", False, "1 errors"),
        ("356 deselected in 3.0s", False, "no tests ran"),
    ],
)
def test_pytest_summary(gpu_check, summary: str, passed: bool, text: str) -> None:
    rc = 0 if passed or "skipped" in summary or "no tests" in text else 1
    ok, result = gpu_check.parse_pytest(f"....\n{summary}\n", rc)
    assert ok is passed
    assert result.startswith(text)
    assert gpu_check.parse_pytest("Traceback ...\n", 1) == (False, "no pytest summary (exit 1)")


FCGF_OUTPUT = """
| C_in -> C_out | variant | voxels / grid | fwd s | fwd+bwd s | peak MiB | fwd+bwd vs dense |
|---|---|---|---|---|---|---|
| 64 -> 64 | dense | 116x78x95 | 0.0100 | 0.0300 | 1484 | 1.000 |
| 64 -> 64 | sparse | 15953 | 0.0050 | 0.0150 | 56 | 0.500 |

| descriptor | s per fragment | vs FPFH |
|---|---|---|
| FCGF (cuda) | 0.0200 | n/a |
"""


def test_fcgf_table(gpu_check) -> None:
    ok, result = gpu_check.parse_fcgf(FCGF_OUTPUT, 0)
    assert ok, result
    assert result == "sparse conv 64 -> 64 fwd+bwd 0.0150 s (0.500 x dense); FCGF 0.0200 s/fragment"
    oom = FCGF_OUTPUT.replace("| 15953 | 0.0050 | 0.0150 | 56 | 0.500 |", "| failed (out of memory?) | | | | |")
    assert gpu_check.parse_fcgf(oom, 0)[0] is False
    assert gpu_check.parse_fcgf(FCGF_OUTPUT.replace("FCGF (cuda)", "FCGF (cpu)"), 0)[0] is False
    assert gpu_check.parse_fcgf(FCGF_OUTPUT, 1) == (False, "exit 1")


def test_tagged_result_and_table(gpu_check) -> None:
    parse = gpu_check.parse_tagged("nvs")
    line = gpu_check.RESULT_TAG + '{"passed": true, "text": "gsplat CUDA 800 it/s"}'
    assert parse(f"noise\n{line}\n", 0) == (True, "gsplat CUDA 800 it/s")
    assert parse(f"{line}\n", 1)[0] is False
    assert parse("no tag\n", 0) == (False, "no result (exit 0)")
    outcomes = [
        gpu_check.Outcome("a check", "cuda (X)", "fine", 1.0, True),
        gpu_check.Outcome("b", "cpu", "bad", 2, False),
    ]
    lines = gpu_check.table(outcomes).splitlines()
    assert lines[0].split("|")[1:-1] == [" check   ", " device   ", " result ", " seconds ", " pass/fail "]
    assert [line.split("|")[-2].strip() for line in lines[2:]] == ["PASS", "FAIL"]


def test_a_check_past_its_timeout_is_killed_with_its_children(gpu_check, monkeypatch) -> None:
    monkeypatch.setattr(gpu_check, "MIN_TIMEOUT_S", 0.1)
    # the child starts a grandchild that keeps the output pipe open: both must go at the timeout
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    code += "print('started', flush=True); time.sleep(60)"
    check = gpu_check.Check("sleeper", "cpu", [sys.executable, "-c", code], 2.0, lambda out, rc: (True, "unused"))
    start = time.monotonic()
    outcome = gpu_check.run_check(check, deadline=time.monotonic() + 100)
    assert time.monotonic() - start < 20
    assert (outcome.passed, outcome.result) == (False, "timed out after 2 s")
    assert "started" in outcome.output
    spent = gpu_check.run_check(check, deadline=time.monotonic())
    assert (spent.passed, spent.result, spent.seconds) == (False, "not run: the time budget is spent", 0.0)
