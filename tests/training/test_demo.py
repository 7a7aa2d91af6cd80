"""The main-job command end to end at toy size: data, training, both evaluations, saved model, overlays."""

import json

import pytest

from modeling_epng import EpngForPanopticNarrativeGrounding
from training.demo import main


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    results = main(
        [
            "--output_dir",
            str(tmp_path),
            "--train",
            "8",
            "--val",
            "3",
            "--image_size",
            "64",
            "--epochs",
            "1",
            "--batch_size",
            "4",
            "--config_overrides",
            "self_attention_type=mhsa",
        ]
    )
    printed = capsys.readouterr().out
    assert "| untrained |" in printed and "| trained   |" in printed
    assert results["epochs"] == pytest.approx(1.0)
    assert 0.0 <= results["trained"]["eval_ar_all"] <= 100.0
    model = EpngForPanopticNarrativeGrounding.from_pretrained(tmp_path / "model")
    assert model.config.self_attention_type == "mhsa"
    assert (tmp_path / "model" / "processor_config.json").exists()
    assert json.loads((tmp_path / "demo_results.json").read_text())["trained"]["eval_num_phrases"] > 0
    assert (tmp_path / "overlays.png").read_bytes()[:4] == b"\x89PNG"
