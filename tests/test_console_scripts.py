"""Console scripts exit 0 on success: a console script exits with what its function returns, so the mains whose work
returns results (reports, metrics, manifests) leave that to `run` and return None."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

RESULT_MODULES = [
    "training.run_png",
    "training.evaluate_png",
    "training.evaluate_res",
    "training.benchmark",
    "training.benchmark_converter",
    "training.ablation",
    "training.demo",
    "hub.export",
]


@pytest.mark.parametrize("module_name", RESULT_MODULES)
def test_main_returns_none_whatever_run_returns(module_name, monkeypatch):
    module = importlib.import_module(module_name)
    calls = []
    monkeypatch.setattr(module, "run", lambda argv=None: calls.append(argv) or {"a result": 1.0})
    assert module.main(["--flag"]) is None
    assert calls == [["--flag"]]


def test_a_console_script_exits_0_on_success(tmp_path):
    script = Path(sys.executable).with_name("epng-benchmark")
    assert script.is_file(), f"{script} is missing: the package is not installed in this environment"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [str(script), "--tiny", "--device", "cpu", "--save_model", str(tmp_path / "model")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert (tmp_path / "model" / "config.json").is_file()
