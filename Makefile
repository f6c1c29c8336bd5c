# The README's two commands: `make demo` and `make test`. Each creates and fills .venv first
# when it is missing (or when pyproject.toml changed since).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# Every process that starts Ray here: keep 127.0.0.1 as is, no usage stats, and no auth token
# (a bare ray.init() would otherwise write one that breaks `ray job submit`). docs/environment.md.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
# glibc's default mmap threshold costs FCN ~440k page faults per forward; these make steps
# ~40% faster and steady. Ray workers get them through the jobs' runtime environment too.
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 68719476736
export MALLOC_ARENA_MAX := 1

.PHONY: demo test lint format clean-demo

# pyproject.toml requires Python 3.11 (torch and Ray wheels are pinned for it): say so at
# once, and how to point make at one, instead of a pip resolver error minutes later.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) \
		else "$(PYTHON) is Python %d.%d; this project needs 3.11: make PYTHON=python3.11 ..." \
		% sys.version_info[:2])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) jobs/demo.py

test: $(VENV)/.installed lint
# Two pytest workers on two cores: the integration tests mostly wait (job submission, service
# start-up, polling); three overload the machine (docs/environment.md).
	$(PY) -m pytest tests -n 2 --dist loadfile --no-loadscope-reorder --durations=40

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-demo:
	rm -rf demo
