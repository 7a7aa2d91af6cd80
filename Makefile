# The two commands of the README. Each creates its own virtual environment (.venv) and installs what it needs.
#   make demo   generate synthetic PNG data, train a small EPNG on CPU, evaluate, save, draw overlays
#   make test   run the test suite
VENV ?= .venv
PYTHON ?= python3
# The CPU wheel of torch; override (e.g. TORCH="torch==2.13.0 --index-url ...") for a CUDA machine.
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
DEMO_DIR ?= outputs/demo

.PHONY: demo test install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: install
	HF_HUB_OFFLINE=1 $(PY) -m training.demo --output_dir $(DEMO_DIR)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest
