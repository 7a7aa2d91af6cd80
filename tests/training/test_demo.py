"""The main-job command end to end at toy size, through its console script: data, training, both evaluations, saved
model, overlays, exit status 0."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_epng import EpngForPanopticNarrativeGrounding


@pytest.mark.slow
def test_demo_console_script_runs_end_to_end(tmp_path):
    script = Path(sys.executable).with_name("epng-demo")
    completed = subprocess.run(
        [
            str(script),
            "--output_dir", str(tmp_path),
            "--train", "8",
            "--val", "3",
            "--image_size", "64",
            "--epochs", "1",
            "--batch_size", "4",
            "--config_overrides", "self_attention_type=mhsa",
        ],
        capture_output=True, text=True, timeout=600, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| untrained |" in completed.stdout and "| trained   |" in completed.stdout
    results = json.loads((tmp_path / "demo_results.json").read_text())
    assert results["epochs"] == pytest.approx(1.0)
    assert 0.0 <= results["trained"]["eval_ar_all"] <= 100.0
    assert results["trained"]["eval_num_phrases"] > 0
    model = EpngForPanopticNarrativeGrounding.from_pretrained(tmp_path / "model")
    assert model.config.self_attention_type == "mhsa"
    assert (tmp_path / "model" / "processor_config.json").exists()
    assert (tmp_path / "overlays.png").read_bytes()[:4] == b"\x89PNG"
