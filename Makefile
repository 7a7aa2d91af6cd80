# The two commands of the README. Each creates its own virtual environment (.venv) and installs what it needs.
#   make demo   generate synthetic PNG data, train a small EPNG on CPU, evaluate, save, draw overlays
#   make test   run the test suite
#   make lint   ruff check + ruff format --check (CI runs it before the tests)
#   make app    start the web app on the demo's model (after `make demo`), at http://127.0.0.1:7860
VENV ?= .venv
PYTHON ?= python3
# The CPU wheel of torch; override (e.g. TORCH="torch==2.13.0 --index-url ...") for a CUDA machine.
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
DEMO_DIR ?= outputs/demo

.PHONY: demo test lint app install

install: $(VENV)/.installed

# torchao (epng[int8]) serves the int8 export tests from a folder of its own that only their export subprocess puts on
# its path: installed in the environment, transformers would import it in every process of the suite.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps --target $(VENV)/int8-export "torchao>=0.18,<0.19"
	touch $@

demo: install
	HF_HUB_OFFLINE=1 $(PY) -m training.demo --output_dir $(DEMO_DIR)

# The browser test of the web app needs Debian's chromium + chromium-driver; without them it is skipped (an error
# under CI=true), and this says so after the run.
test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		echo "NOTE: the web app's browser test (tests/training/test_app_browser.py) did NOT run: Chromium is" \
		"missing. Install it with: apt-get install -y chromium chromium-driver"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

app: install
	@test -d $(DEMO_DIR)/model || { echo "error: $(DEMO_DIR)/model does not exist: run \`make demo\` first"; exit 2; }
	HF_HUB_OFFLINE=1 $(PY) -m training.app --model_name_or_path $(DEMO_DIR)/model \
		--examples_dir $(DEMO_DIR)/png_synthetic
