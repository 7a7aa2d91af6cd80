"""`python -m hub.export`: one AOTInductor and one ONNX export of a tiny model, their parity with fp32 eager across
input sizes, and the loader that uses an artefact only when it matches the machine and the weights."""

import json
import logging
import shutil

import pytest
import torch
from app_testing import save_tiny_model

from hub import export
from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding
from modeling_epng.aoti_package import (
    hand_model_weights,
    load_aoti_package,
    model_weights_for,
    weights_layout_sha256,
)
from modeling_epng.fixed_shape_program import FixedShapeProgram
from modeling_epng.inference import (
    ARTIFACT_FILES,
    MANIFEST_FILE,
    find_artifact,
    machine_fingerprint,
    native_bf16_reason,
)

MAX_PROBABILITY_ERROR = 1e-2
# Inductor compiles the whole program to C++ (a minute or more on two cores) and the ONNX translation takes about as
# long as torch.export: each format is exported once per module.
pytestmark = pytest.mark.slow


def export_tiny_model(folder, *options):
    """Save a tiny model (one communicator layer, a one-layer text encoder) into `folder` and export it there."""
    torch.manual_seed(0)
    text_config = {**EpngConfig.tiny().text_config.to_dict(), "num_hidden_layers": 1}
    config = EpngConfig.tiny(num_communicator_layers=1, text_config=text_config, text_pooled_layers=1)
    EpngForPanopticNarrativeGrounding(config).save_pretrained(folder)
    manifest = export.run(["--model_name_or_path", str(folder), "--max_image_size", "256", *options])
    assert manifest["max_probability_error"] <= MAX_PROBABILITY_ERROR
    return folder


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory):
    """A saved tiny model and the AOTInductor package exported next to it."""
    return export_tiny_model(tmp_path_factory.mktemp("exported"))


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    """A saved tiny model and the ONNX model exported next to it, in place of an AOTInductor package."""
    folder = tmp_path_factory.mktemp("onnx")
    (folder / ARTIFACT_FILES["aoti"]).write_bytes(b"replaced")
    (folder / MANIFEST_FILE).write_text(json.dumps({"format": "aoti", "file": ARTIFACT_FILES["aoti"]}))
    return export_tiny_model(folder, "--format", "onnx")


def assert_matches_eager(folder, dtype, artifact_file, batch_size, height, width, num_phrases, num_tokens):
    reference = EpngForPanopticNarrativeGrounding.from_pretrained(folder).eval()
    fast = EpngForPanopticNarrativeGrounding.from_pretrained(folder).optimize_for_inference(dtype=dtype)
    assert fast.inference_settings.artifact == str(folder / artifact_file)
    inputs = export.example_inputs(reference.config, batch_size, height, width, num_phrases, num_tokens, "cpu")
    with torch.inference_mode():
        expected, actual = reference(**inputs), fast(**inputs)
    assert actual.mask_logits.shape == (batch_size, num_phrases, height // 4, width // 4)
    assert (actual.mask_logits.sigmoid() - expected.mask_logits.sigmoid()).abs().max() <= MAX_PROBABILITY_ERROR
    # Calls the artefact does not cover (here: the loss) run the eager fast path.
    labels = torch.ones(batch_size, num_phrases, height, width)
    with torch.inference_mode():
        assert fast(**inputs, mask_labels=labels).loss is not None


SIZES = [(2, 64, 96, 3, 16), (1, 128, 64, 6, 20), (3, 32, 32, 1, 5)]


def test_manifest_records_the_machine_and_the_weights(exported_dir):
    manifest = json.loads((exported_dir / MANIFEST_FILE).read_text())
    assert (exported_dir / ARTIFACT_FILES["aoti"]).stat().st_size > 0
    assert manifest["format"] == "aoti" and manifest["dtype"] in ("bf16", "fp32")
    fingerprint = machine_fingerprint("cpu")
    assert all(manifest[key] == value for key, value in fingerprint.items())
    assert len(manifest["weights_sha256"]) == 64
    assert not list(exported_dir.glob(".export-*")), "the staging folder is left behind"
    # The package holds code only: a load hands it the prepared model's weights.
    assert manifest["weights_in_package"] is False and len(manifest["weights_layout_sha256"]) == 64


def test_loading_the_package_neither_probes_the_cpu_nor_copies_the_weights(exported_dir, monkeypatch):
    import torch._inductor.codecache

    def probe(*args):
        raise AssertionError("the load probed the CPU's instruction sets")

    monkeypatch.setattr(torch._inductor.codecache, "get_device_information", probe)
    manifest = json.loads((exported_dir / MANIFEST_FILE).read_text())
    model = EpngForPanopticNarrativeGrounding.from_pretrained(exported_dir).optimize_for_inference(use_artifact=False)
    package = load_aoti_package(exported_dir / ARTIFACT_FILES["aoti"])
    package, reason = hand_model_weights(package, model, manifest["weights_layout_sha256"])
    assert reason is None
    pointers = {tensor.data_ptr() for tensor in (*model.parameters(), *model.buffers())}
    assert package.weights and {tensor.data_ptr() for tensor in package.weights.values()} <= pointers
    inputs = export.example_inputs(model.config, 1, 64, 64, 2, 12, "cpu")
    with torch.inference_mode():
        expected, actual = model(**inputs).mask_logits.sigmoid(), package(**inputs)[0].float().sigmoid()
    assert (actual - expected).abs().max() <= MAX_PROBABILITY_ERROR
    fast = EpngForPanopticNarrativeGrounding.from_pretrained(exported_dir).optimize_for_inference()
    assert fast.inference_settings.artifact == str(exported_dir / ARTIFACT_FILES["aoti"])


def test_a_package_holding_its_weights_still_runs(tmp_path, monkeypatch):
    """A package exported with its weights inside (as exports were before they left them out) runs as it is."""
    from torch._inductor import aoti_compile_and_package

    def compile_with_weights(program, path, device, model):
        aoti_compile_and_package(program, package_path=str(path))
        return load_aoti_package(path), machine_fingerprint(device)

    monkeypatch.setattr(export, "compile_aoti", compile_with_weights)
    folder = export_tiny_model(tmp_path)
    assert "weights_in_package" not in json.loads((folder / MANIFEST_FILE).read_text())
    assert_matches_eager(folder, "auto", ARTIFACT_FILES["aoti"], *SIZES[0])


@pytest.mark.parametrize(
    "options, reason",
    [({"channels_last": False}, "laid out unlike"), ({"fold_batch_norms": False}, "has no weight")],
)
def test_a_model_prepared_unlike_the_export_runs_eager(exported_dir, caplog, options, reason):
    model = EpngForPanopticNarrativeGrounding.from_pretrained(exported_dir)
    with caplog.at_level(logging.WARNING, logger="modeling_epng.inference"):
        model.optimize_for_inference(**options)
    assert model.inference_settings.artifact is None
    assert sum(reason in record.message for record in caplog.records) == 1


@pytest.mark.parametrize("sizes", SIZES)
def test_artifact_matches_eager_across_sizes(exported_dir, sizes):
    assert_matches_eager(exported_dir, "auto", ARTIFACT_FILES["aoti"], *sizes)


@pytest.mark.parametrize("sizes", SIZES)
def test_onnx_artifact_matches_eager_across_sizes(onnx_dir, sizes):
    assert_matches_eager(onnx_dir, "fp32", ARTIFACT_FILES["onnx"], *sizes)


def test_onnx_manifest_and_fallback(onnx_dir, tmp_path, caplog, monkeypatch):
    manifest = json.loads((onnx_dir / MANIFEST_FILE).read_text())
    assert manifest["format"] == "onnx" and manifest["dtype"] == "fp32" and manifest["file"] == ARTIFACT_FILES["onnx"]
    assert manifest["onnxruntime_version"] and manifest["onnx_opset"] >= 18
    assert manifest["data_files"] == [ARTIFACT_FILES["onnx"] + ".data"]
    assert (onnx_dir / manifest["data_files"][0]).stat().st_size > (onnx_dir / ARTIFACT_FILES["onnx"]).stat().st_size
    assert not (onnx_dir / ARTIFACT_FILES["aoti"]).exists(), "the replaced artefact is left behind"
    # Portable across CPUs and torch versions: only onnxruntime, the dtype and the weights count.
    assert "cpu_flags" not in manifest
    folder = shutil.copytree(onnx_dir, tmp_path / "copy")
    model = EpngForPanopticNarrativeGrounding.from_pretrained(folder)
    assert find_artifact(model, "fp32")[1] == "matches this machine"
    assert "dtype" in find_artifact(model, "bf16")[1]
    (folder / MANIFEST_FILE).write_text(json.dumps(dict(manifest, onnxruntime_version="99.0")))
    assert "onnxruntime 99.0" in find_artifact(model, "fp32")[1]
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    (folder / manifest["data_files"][0]).rename(folder / "elsewhere")
    assert "epng_inference.onnx.data, missing" in find_artifact(model, "fp32")[1]
    (folder / "elsewhere").rename(folder / manifest["data_files"][0])
    # dtype="auto" takes the fp32 model only where bf16 is not native (elsewhere the bf16 eager fast path is faster).
    monkeypatch.setattr("modeling_epng.inference.native_bf16_reason", lambda device: (False, "no bf16"))
    assert find_artifact(model, None)[1] == "matches this machine"
    monkeypatch.setattr("modeling_epng.inference.native_bf16_reason", lambda device: (True, "native bf16"))
    assert "faster bf16 fast path here (native bf16); dtype='fp32' runs it" in find_artifact(model, None)[1]
    assert find_artifact(model, "fp32")[1] == "matches this machine"
    monkeypatch.setattr("modeling_epng.inference.onnxruntime_version", lambda: None)
    assert "onnxruntime is not installed" in find_artifact(model, "fp32")[1]
    with caplog.at_level(logging.INFO, logger="modeling_epng.inference"):
        model.optimize_for_inference(dtype="fp32")
    assert model.inference_settings.artifact is None
    assert sum("not using the exported artefact" in record.message for record in caplog.records) == 1


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
    # As if exported in the other dtype: then its weights are laid out as the model prepared in that dtype lays them.
    prepared = EpngForPanopticNarrativeGrounding.from_pretrained(folder).optimize_for_inference(
        other, use_artifact=False
    )
    package = load_aoti_package(folder / ARTIFACT_FILES["aoti"])
    layout = weights_layout_sha256(model_weights_for(package, prepared))
    manifest_path.write_text(json.dumps(dict(manifest, dtype=other, weights_layout_sha256=layout)))
    auto = EpngForPanopticNarrativeGrounding.from_pretrained(folder).optimize_for_inference()
    assert auto.inference_settings.artifact == str(folder / ARTIFACT_FILES["aoti"])
    assert auto.inference_settings.dtype == other
    asked = EpngForPanopticNarrativeGrounding.from_pretrained(folder).optimize_for_inference(dtype=manifest["dtype"])
    assert asked.inference_settings.artifact is None and asked.inference_settings.dtype == manifest["dtype"]


@pytest.fixture(scope="module")
def fixed_dir(tmp_path_factory, minilm_path):
    """A saved tiny model with its 64 x 64 processor, exported for batch 1, 64 x 64 images and 4 phrase slots."""
    folder = save_tiny_model(tmp_path_factory.mktemp("fixed"), minilm_path)
    manifest = export.run(["--model_name_or_path", str(folder), "--fixed_shapes", "--phrase_slots", "4"])
    assert manifest["max_probability_error"] <= MAX_PROBABILITY_ERROR
    return folder


def test_a_fixed_shape_artifact_takes_its_shapes_padded_and_leaves_the_others_to_eager(fixed_dir, monkeypatch, caplog):
    manifest = json.loads((fixed_dir / MANIFEST_FILE).read_text())
    assert manifest["fixed_shapes"] == {"batch_size": 1, "image_size": [64, 64], "phrase_slots": 4}
    assert manifest["max_batch_size"] == 1 and manifest["max_phrases"] == 4
    runs = []
    run_program = FixedShapeProgram.__call__
    monkeypatch.setattr(
        FixedShapeProgram, "__call__", lambda self, **inputs: runs.append(1) or run_program(self, **inputs)
    )
    # Batches, fewer phrases than slots and any token count run on the artefact; within bf16's rounding of eager.
    for sizes in [(2, 64, 64, 3, 16), (1, 64, 64, 4, 30)]:
        assert_matches_eager(fixed_dir, "auto", ARTIFACT_FILES["aoti"], *sizes)
    assert len(runs) == 2
    # Another image size or more phrases than slots: the eager fast path, said once per reason.
    with caplog.at_level(logging.WARNING, logger="modeling_epng.inference"):
        for sizes, reason in [
            ((1, 96, 64, 2, 10), "(96, 64), it was exported for (64, 64)"),
            ((1, 64, 64, 6, 9), "6 phrase"),
        ]:
            assert_matches_eager(fixed_dir, "auto", ARTIFACT_FILES["aoti"], *sizes)
            assert reason in caplog.text
    assert len(runs) == 2


def test_a_fixed_shape_export_needs_the_processors_image_size(tmp_path):
    EpngForPanopticNarrativeGrounding(EpngConfig.tiny()).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="--fixed_shapes exports for the processor's image size"):
        export.export(tmp_path, fixed_shapes=True)
    with pytest.raises(ValueError, match="phrase_slots must be a positive number"):
        export.export(tmp_path, fixed_shapes=True, phrase_slots=0)
    assert not (tmp_path / MANIFEST_FILE).exists()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        export.run(["--model_name_or_path", str(tmp_path)])
    with pytest.raises(ValueError, match="multiple of 32"):
        export.export(tmp_path, max_image_size=100)
    with pytest.raises(ValueError, match="ONNX artefact is fp32"):
        export.export(tmp_path, format="onnx", dtype="bf16")


@pytest.mark.parametrize("artifact_format, folder_fixture", [("aoti", "exported_dir"), ("onnx", "onnx_dir")])
def test_benchmarks_time_the_artifact_against_fp32_eager(artifact_format, folder_fixture, request, tmp_path):
    from training import benchmark
    from training.benchmark_cold_start import cold_start_seconds

    exported_dir = request.getfixturevalue(folder_fixture)
    path = tmp_path / "report.json"
    run = ["--tiny", "--device", "cpu", "--threads", "1", "--batch_sizes", "1", "--iterations", "1", "--warmup", "1"]
    threads = torch.get_num_threads()
    try:
        benchmark.run(
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
    paths = [record for record in report["paths"] if record["setting"] == "artifact"]
    if artifact_format == "onnx" and native_bf16_reason("cpu")[0]:
        # The user paths time what the pipeline's default runs: not the fp32 ONNX model where bf16 is native.
        (skipped,) = paths
        assert skipped["status"] == "skipped" and "faster bf16 fast path" in skipped["reason"]
    else:
        assert {record["call"] for record in paths} == {"bare_model", "pipeline_given_phrases", "pipeline"}
    cold_start = cold_start_seconds(str(exported_dir), "artifact", benchmark.parse_args(run))
    assert cold_start["status"] == "ok", cold_start
    assert cold_start["seconds"] > 0 and cold_start["settings"]["artifact"] == str(
        exported_dir / ARTIFACT_FILES[artifact_format]
    )
