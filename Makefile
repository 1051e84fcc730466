# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Both create or refresh .venv (re-installed when pyproject.toml changes) and install the system
# library Open3D needs (libusb-1.0) when it is missing.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ALLOW_EPHEMERAL_MODE := true

.PHONY: venv demo test test-fast bench clean system-deps

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

test: system-deps $(STAMP)
	$(PY) -m pytest -q

test-fast: system-deps $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: system-deps $(STAMP)
	$(PY) benchmarks/bench_sfm.py
	$(PY) benchmarks/bench_registration.py
	$(PY) benchmarks/bench_fcgf.py
	$(PY) benchmarks/bench_nvs.py
	$(PY) benchmarks/bench_bodies.py
	$(PY) benchmarks/bench_batch.py

clean:
	rm -rf results data/captures/demo .pytest_cache
