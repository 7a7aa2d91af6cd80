"""`python -m hub.export`: one AOTInductor export of a tiny model, its parity with fp32 eager across input sizes, and
the loader that uses it only when it matches the machine and the weights."""

import json
import logging
import shutil

import pytest
import torch

from hub import export
from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding
from modeling_epng.inference import ARTIFACT_FILE, MANIFEST_FILE, find_artifact, machine_fingerprint

MAX_PROBABILITY_ERROR = 1e-2
# Inductor compiles the whole program to C++: a minute or more on two cores, so the module exports once.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory):
    """A saved tiny model (one communicator layer, a one-layer text encoder) and the artefact exported next to it."""
    torch.manual_seed(0)
    text_config = {**EpngConfig.tiny().text_config.to_dict(), "num_hidden_layers": 1}
    config = EpngConfig.tiny(num_communicator_layers=1, text_config=text_config, text_pooled_layers=1)
    folder = tmp_path_factory.mktemp("exported")
    EpngForPanopticNarrativeGrounding(config).save_pretrained(folder)
    manifest = export.main(["--model_name_or_path", str(folder), "--max_image_size", "256"])
    assert manifest["max_probability_error"] <= MAX_PROBABILITY_ERROR
    return folder


def test_manifest_records_the_machine_and_the_weights(exported_dir):
    manifest = json.loads((exported_dir / MANIFEST_FILE).read_text())
    assert (exported_dir / ARTIFACT_FILE).stat().st_size > 0
    assert manifest["format"] == "aoti" and manifest["dtype"] in ("bf16", "fp32")
    fingerprint = machine_fingerprint("cpu")
    assert all(manifest[key] == value for key, value in fingerprint.items())
    assert len(manifest["weights_sha256"]) == 64
    assert not list(exported_dir.glob(".export-*")), "the staging folder is left behind"


@pytest.mark.parametrize(
    "batch_size, height, width, num_phrases, num_tokens", [(2, 64, 96, 3, 16), (1, 128, 64, 6, 20), (3, 32, 32, 1, 5)]
)
def test_artifact_matches_eager_across_sizes(exported_dir, batch_size, height, width, num_phrases, num_tokens):
    reference = EpngForPanopticNarrativeGrounding.from_pretrained(exported_dir).eval()
    fast = EpngForPanopticNarrativeGrounding.from_pretrained(exported_dir).optimize_for_inference()
    assert fast.inference_settings.artifact == str(exported_dir / ARTIFACT_FILE)
    inputs = export.example_inputs(reference.config, batch_size, height, width, num_phrases, num_tokens, "cpu")
    with torch.inference_mode():
        expected, actual = reference(**inputs), fast(**inputs)
    assert actual.mask_logits.shape == (batch_size, num_phrases, height // 4, width // 4)
    assert (actual.mask_logits.sigmoid() - expected.mask_logits.sigmoid()).abs().max() <= MAX_PROBABILITY_ERROR
    # Calls the artefact does not cover (here: the loss) run the eager fast path.
    labels = torch.ones(batch_size, num_phrases, height, width)
    with torch.inference_mode():
        assert fast(**inputs, mask_labels=labels).loss is not None


def test_a_stale_or_foreign_artifact_falls_back_with_one_log_line(exported_dir, tmp_path, caplog):
    folder = shutil.copytree(exported_dir, tmp_path / "copy")
    manifest_path = folder / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(dict(manifest, torch_version="0.0.1")))
    model = EpngForPanopticNarrativeGrounding.from_pretrained(folder)
    assert find_artifact(model, manifest["dtype"])[1].startswith("built for torch_version='0.0.1'")
    with caplog.at_level(logging.INFO, logger="modeling_epng.inference"):
        model.optimize_for_inference()
    assert model.inference_settings.artifact is None
    assert sum("not using the exported artefact" in record.message for record in caplog.records) == 1

    manifest_path.write_text(json.dumps(dict(manifest, cpu_flags=[*manifest["cpu_flags"], "avx1024"])))
    assert "avx1024" in find_artifact(model, manifest["dtype"])[1]
    manifest_path.write_text(json.dumps(manifest))
    other = "fp32" if manifest["dtype"] == "bf16" else "bf16"
    assert "dtype" in find_artifact(model, other)[1]
    with open(folder / "model.safetensors", "ab") as weights:
        weights.write(b" ")
    assert "weights" in find_artifact(model, manifest["dtype"])[1]


def test_auto_dtype_takes_the_artifact_in_the_dtype_its_export_picked(exported_dir, tmp_path):
    folder = shutil.copytree(exported_dir, tmp_path / "copy")
    manifest_path = folder / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    other = "fp32" if manifest["dtype"] == "bf16" else "bf16"
    manifest_path.write_text(json.dumps(dict(manifest, dtype=other)))
    auto = EpngForPanopticNarrativeGrounding.from_pretrained(folder).optimize_for_inference()
    assert auto.inference_settings.artifact == str(folder / ARTIFACT_FILE)
    assert auto.inference_settings.dtype == other
    asked = EpngForPanopticNarrativeGrounding.from_pretrained(folder).optimize_for_inference(dtype=manifest["dtype"])
    assert asked.inference_settings.artifact is None and asked.inference_settings.dtype == manifest["dtype"]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        export.main(["--model_name_or_path", str(tmp_path)])
    with pytest.raises(ValueError, match="multiple of 32"):
        export.export(tmp_path, max_image_size=100)


def test_benchmarks_time_the_artifact_against_fp32_eager(exported_dir, tmp_path):
    from training import benchmark

    path = tmp_path / "report.json"
    run = ["--tiny", "--device", "cpu", "--threads", "1", "--batch_sizes", "1", "--iterations", "1", "--warmup", "1"]
    threads = torch.get_num_threads()
    try:
        benchmark.main(
            [
                *run,
                "--skip_inference",
                "--fast_path",
                "--model_name_or_path",
                str(exported_dir),
                "--paths",
                "--json",
                str(path),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    report = json.loads(path.read_text())
    records = report["fast_path"]["measurements"]
    eager = {record["text_encoder"] for record in records if record["variant"] == "fp32_eager"}
    assert eager == {False, True}
    (artifact,) = [record for record in records if record["variant"] == "artifact"]
    assert artifact["status"] == "ok" and artifact["text_encoder"] and artifact["speedup_vs_fp32_eager"] > 0
    assert artifact["max_probability_error"] <= MAX_PROBABILITY_ERROR
    calls = {record["call"] for record in report["paths"] if record["setting"] == "artifact"}
    assert calls == {"bare_model", "pipeline_given_phrases", "pipeline"}
