"""`python -m hub.export --dtype int8`: an int8 AOTInductor package of a tiny model calibrated on a synthetic PNG
validation split, exported where torchao is installed and run here, where it is not; its manifest, its choice by
`optimize_for_inference`, the pipeline on it, and what the export refuses.

torchao is kept out of the test environment (transformers would import it in every process): `make install` puts it
in `.venv/int8-export`, which only the export subprocess has on its path. Without that folder the export test is
skipped with a reason that says it did not run, except under CI (`CI=true`), where it fails.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from app_testing import save_tiny_model

from hub import export
from hub.quantize import int8_kernel_calls, mask_agreement, validation_batches
from modeling_epng import EpngForPanopticNarrativeGrounding
from modeling_epng.fixed_shape_program import FixedShapeProgram
from modeling_epng.inference import ARTIFACT_FILES, DTYPES, MANIFEST_FILE, resolve_dtype

TORCHAO_FOLDER = Path(sys.prefix, "int8-export")
REPOSITORY = Path(__file__).resolve().parents[2]
# 2 batches of 1 narrative calibrate, 2 more check: 4 of the synthetic split's 5 validation narratives.
CALIBRATION_BATCHES = 2


def _torchao_path_or_skip() -> Path:
    if (TORCHAO_FOLDER / "torchao").is_dir():
        return TORCHAO_FOLDER
    message = f"the int8 export test did NOT run: torchao is not in {TORCHAO_FOLDER} (`make install` puts it there)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def export_int8(folder: Path, minilm_path: str, dataset_dir: Path, *options: str) -> Path:
    """A tiny random model with its processor saved into `folder`, and the int8 package exported next to it by a
    subprocess that has torchao (this process does not)."""
    torchao_path = _torchao_path_or_skip()
    save_tiny_model(folder, minilm_path)
    command = [sys.executable, "-m", "hub.export", "--model_name_or_path", str(folder), "--dtype", "int8"]
    command += ["--calibration_dataset", str(dataset_dir), *options]
    # Random weights put many pixels near the threshold, so the masks' agreement is not what is tested here.
    command += ["--calibration_batches", str(CALIBRATION_BATCHES), "--calibration_batch_size", "1"]
    command += ["--min_mean_iou", "0"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(torchao_path), str(REPOSITORY)])}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory, minilm_path, synthetic_dataset_dir):
    """An int8 package of dynamic shapes next to its tiny model."""
    return export_int8(tmp_path_factory.mktemp("int8"), minilm_path, synthetic_dataset_dir, "--max_image_size", "256")


@pytest.fixture(scope="module")
def int8_fixed_dir(tmp_path_factory, minilm_path, synthetic_dataset_dir):
    """An int8 package for batch 1, the processor's 64 x 64 images and 32 phrase slots, next to its tiny model."""
    folder = tmp_path_factory.mktemp("int8-fixed")
    return export_int8(folder, minilm_path, synthetic_dataset_dir, "--fixed_shapes")


@pytest.mark.slow
def test_manifest_records_the_int8_check(int8_dir):
    manifest = json.loads((int8_dir / MANIFEST_FILE).read_text())
    assert manifest["dtype"] == "int8" and manifest["format"] == "aoti"
    assert manifest["weights_in_package"] is True  # its int8 weights are not the model's
    # Compiled to oneDNN's int8 kernels, not to fp32 ones between (de)quantisations (what Inductor does unfrozen).
    assert manifest["int8_kernel_calls"] == int8_kernel_calls(int8_dir / ARTIFACT_FILES["aoti"]) > 0
    # The rest in bf16 where this CPU computes it natively, as dtype="auto" picks.
    assert manifest["int8_float_dtype"] == resolve_dtype("auto", "cpu")[0]
    assert manifest["calibration_narratives"] == CALIBRATION_BATCHES
    assert manifest["mask_iou_phrases"] > 0 and 0.0 <= manifest["min_mask_iou"] <= manifest["mean_mask_iou"] <= 1.0
    assert (int8_dir / ARTIFACT_FILES["aoti"]).is_file()
    assert not [path.name for path in int8_dir.iterdir() if path.name.startswith(".export-")]


@pytest.mark.slow
def test_the_int8_package_runs_without_torchao_and_is_quantised(int8_dir):
    assert "torchao" not in sys.modules
    reference = EpngForPanopticNarrativeGrounding.from_pretrained(int8_dir).eval()
    fast = EpngForPanopticNarrativeGrounding.from_pretrained(int8_dir).optimize_for_inference()
    settings = fast.inference_settings
    assert settings.dtype == "int8" and settings.artifact == str(int8_dir / ARTIFACT_FILES["aoti"])
    for batch_size, height, width, num_phrases, num_tokens in [(2, 64, 96, 3, 16), (1, 128, 64, 6, 20)]:
        inputs = export.example_inputs(reference.config, batch_size, height, width, num_phrases, num_tokens, "cpu")
        with torch.inference_mode():
            expected, actual = reference(**inputs).mask_logits, fast(**inputs).mask_logits
        assert actual.shape == expected.shape == (batch_size, num_phrases, height // 4, width // 4)
        difference = (actual.sigmoid() - expected.sigmoid()).abs().max()
        # int8 rounding moves the probabilities (an fp32 program would stay within 1e-6), but not arbitrarily.
        assert 1e-4 < difference < 0.5
    # What the package does not cover (the loss) runs eagerly, in the dtype of the package's floating-point part.
    labels = torch.ones(1, 6, 128, 64)
    with torch.inference_mode():
        assert fast(**inputs, mask_labels=labels).loss is not None
    float_dtype = DTYPES[json.loads((int8_dir / MANIFEST_FILE).read_text())["int8_float_dtype"]]
    assert {module.weight.dtype for module in fast.modules() if isinstance(module, torch.nn.Conv2d)} == {float_dtype}
    assert "torchao" not in sys.modules


@pytest.mark.slow
def test_asking_for_a_float_dtype_runs_eager_beside_an_int8_package(int8_dir, caplog):
    with caplog.at_level(logging.WARNING):
        model = EpngForPanopticNarrativeGrounding.from_pretrained(int8_dir).optimize_for_inference(dtype="fp32")
    assert model.inference_settings.artifact is None and model.inference_settings.dtype == "fp32"
    assert "built for dtype 'int8', 'fp32' is asked for" in caplog.text


@pytest.mark.slow
def test_the_pipeline_grounds_with_the_int8_package(int8_dir):
    from transformers import pipeline

    from modeling_epng.pipeline_epng import TASK

    grounder = pipeline(TASK, model=str(int8_dir))
    assert grounder.model.inference_settings.dtype == "int8"
    image = np.random.default_rng(0).integers(0, 256, size=(48, 80, 3), dtype=np.uint8)
    results = grounder(image, "a dog on the grass next to a red car", phrases=["a dog", "the grass"])
    assert [result["phrase"] for result in results] == ["a dog", "the grass"]
    assert all(result["mask"].size == (80, 48) and result["mask"].mode == "L" for result in results)


@pytest.mark.slow
def test_a_fixed_shape_int8_package_runs_padded_calls(int8_fixed_dir, monkeypatch):
    manifest = json.loads((int8_fixed_dir / MANIFEST_FILE).read_text())
    assert manifest["fixed_shapes"] == {"batch_size": 1, "image_size": [64, 64], "phrase_slots": 32}
    # Calibrated on single narratives padded to the fixed shapes, and compiled to the int8 kernels.
    assert manifest["calibration_narratives"] == CALIBRATION_BATCHES and manifest["int8_kernel_calls"] > 0
    runs = []
    run_program = FixedShapeProgram.__call__
    monkeypatch.setattr(
        FixedShapeProgram, "__call__", lambda self, **inputs: runs.append(1) or run_program(self, **inputs)
    )
    reference = EpngForPanopticNarrativeGrounding.from_pretrained(int8_fixed_dir).eval()
    fast = EpngForPanopticNarrativeGrounding.from_pretrained(int8_fixed_dir).optimize_for_inference(dtype="int8")
    inputs = export.example_inputs(reference.config, 2, 64, 64, 3, 16, "cpu")
    with torch.inference_mode():
        expected, actual = reference(**inputs).mask_logits, fast(**inputs).mask_logits
    assert runs == [1] and actual.shape == expected.shape == (2, 3, 16, 16)
    assert 1e-4 < (actual.sigmoid() - expected.sigmoid()).abs().max() < 0.5
    # Another image size runs the eager fast path instead.
    inputs = export.example_inputs(reference.config, 1, 96, 64, 2, 8, "cpu")
    with torch.inference_mode():
        expected, actual = reference(**inputs).mask_logits, fast(**inputs).mask_logits
    assert runs == [1] and (actual.sigmoid() - expected.sigmoid()).abs().max() <= 1e-2


def test_int8_without_an_int8_package_names_the_export(tmp_path, minilm_path):
    folder = save_tiny_model(tmp_path, minilm_path)
    model = EpngForPanopticNarrativeGrounding.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"python -m hub.export --dtype int8 .*no exported artefact"):
        model.optimize_for_inference(dtype="int8")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--dtype", "int8"], "needs --calibration_dataset"),
        (["--dtype", "int8", "--format", "onnx"], "an ONNX artefact is fp32"),
        (["--dtype", "int8", "--device", "cuda"], "oneDNN's CPU kernels"),
        (["--dtype", "int8", "--calibration_dataset", "DATASET"], "pip install 'epng[int8]'"),
    ],
)
def test_the_int8_export_refuses_what_it_cannot_do(
    tmp_path, minilm_path, synthetic_dataset_dir, capsys, monkeypatch, options, message
):
    monkeypatch.setitem(sys.modules, "torchao", None)  # as where it is not installed: `import torchao...` raises
    folder = save_tiny_model(tmp_path, minilm_path)
    options = [str(synthetic_dataset_dir) if option == "DATASET" else option for option in options]
    with pytest.raises(SystemExit) as error:
        export.run(["--model_name_or_path", str(folder), *options])
    assert error.value.code == 2 and message in capsys.readouterr().err
    assert not (folder / MANIFEST_FILE).exists()


def test_validation_batches_are_the_programs_inputs(tmp_path, minilm_path, synthetic_dataset_dir):
    folder = save_tiny_model(tmp_path, minilm_path)
    batches = validation_batches(folder, synthetic_dataset_dir, batch_size=2, num_batches=2, device="cpu")
    assert len(batches) == 2
    assert list(batches[0]) == ["pixel_values", "input_ids", "attention_mask", "phrase_ids", "phrase_mask"]
    assert batches[0]["pixel_values"].shape[:2] == (2, 3) and batches[0]["phrase_mask"].dtype == torch.bool
    with pytest.raises(ValueError, match="5 validation narratives, 6 are needed"):
        validation_batches(folder, synthetic_dataset_dir, batch_size=3, num_batches=2, device="cpu")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        validation_batches(folder, tmp_path / "missing", batch_size=1, num_batches=1, device="cpu")


def test_mask_agreement_compares_thresholded_masks_of_real_phrases(tmp_path, minilm_path):
    reference = EpngForPanopticNarrativeGrounding.from_pretrained(save_tiny_model(tmp_path, minilm_path)).eval()
    inputs = export.example_inputs(reference.config, 1, 64, 64, 2, 8, "cpu")
    inputs["phrase_mask"][0, 1] = False  # phrase 1 is padding: not compared
    with torch.no_grad():
        logits = reference(**inputs).mask_logits
    logits[0, 1] = -logits[0, 1]  # a padding phrase's difference does not count

    def package(**_):
        return (logits,)

    agreement = mask_agreement(package, reference, [inputs])
    assert agreement["mask_iou_phrases"] == 1 and agreement["mean_mask_iou"] == 1.0
    assert agreement["validation_max_probability_error"] < 1e-6
    logits[0, 0] = -logits[0, 0]  # every pixel of phrase 0 flips
    assert mask_agreement(package, reference, [inputs])["mean_mask_iou"] == 0.0
