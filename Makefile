# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the lint checks
# and then the tests. Both create or refresh .venv (re-installed when pyproject.toml changes) and
# install the system library Open3D needs (libusb-1.0) when it is missing.
# `make gpu-check` on a CUDA machine: the CUDA-only tests and the benchmarks' GPU rows, one table.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LINT_PATHS := capture3d tests benchmarks
# pytest options of every test target: one pytest-xdist worker per core (at most 4), whole test modules
# per worker, longest first (tests/conftest.py); `make test PYTEST_ARGS=-q` runs in one process
PYTEST_ARGS ?= -q -n auto --maxprocesses 4 --durations=25
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ALLOW_EPHEMERAL_MODE := true

.PHONY: venv demo train-fcgf lint format test test-fast test-slow gpu-check bench clean system-deps

venv: $(STAMP)

system-deps:
	@if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then \
		echo "installing libusb-1.0 (needed by open3d)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libusb-1.0-0; \
	fi
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "installing chromium (headless screenshots of the HTML report in the tests)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; \
	fi

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@echo "building the Anny body model cache (about 2 minutes on the first install, then kept in ~/.cache/anny)"
	$(PY) -c "from capture3d.tasks.body.anny_model import AnnyBody; AnnyBody()"
	touch $(STAMP)

demo: system-deps $(STAMP)
	$(VENV)/bin/capture3d demo

# opt-in: FCGF training (45 minutes on 2 cores) and its evaluation on the scan captures, as DVC
# stages of their own file (training/dvc.yaml, generated; `dvc repro` alone never starts them)
train-fcgf: system-deps $(STAMP)
	$(PY) -m capture3d.ops.dvc_yaml --write --training
	$(VENV)/bin/dvc repro training/dvc.yaml

# ruff (pyproject.toml [tool.ruff]) and the import contracts ([tool.importlinter]); read-only. All three
# run, so one go shows every problem; the target fails if any did.
lint: $(STAMP)
	@status=0; \
	echo "ruff check $(LINT_PATHS)"; $(VENV)/bin/ruff check $(LINT_PATHS) || status=1; \
	echo "ruff format --check $(LINT_PATHS)"; $(VENV)/bin/ruff format --check $(LINT_PATHS) || status=1; \
	echo "lint-imports"; $(VENV)/bin/lint-imports --no-cache --no-logo || status=1; \
	exit $$status

# rewrites the files: ruff's safe fixes, then the formatter
format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

test: system-deps $(STAMP) lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: system-deps $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow"

test-slow: system-deps $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) -m slow

# CUDA machines: every `-m cuda` test and the GPU rows of the benchmarks (under 8 minutes); exit 1 on a
# failed check. Without CUDA it says so and exits 0.
gpu-check: system-deps $(STAMP)
	$(PY) benchmarks/gpu_check.py

bench: system-deps $(STAMP)
	$(PY) benchmarks/bench_sfm.py
	$(PY) benchmarks/bench_registration.py
	$(PY) benchmarks/bench_fcgf.py
	$(PY) benchmarks/bench_nvs.py
	$(PY) benchmarks/bench_bodies.py
	$(PY) benchmarks/bench_batch.py

clean:
	rm -rf results data/captures/demo .pytest_cache
