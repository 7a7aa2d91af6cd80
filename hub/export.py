"""Export a trained EPNG once, so that every later process loads it compiled in seconds instead of compiling it.

    python -m hub.export --model_name_or_path DIR [--format aoti|onnx] [--dtype auto|bf16|fp32] [--max_image_size 2048]
    python -m hub.export --model_name_or_path DIR --dtype int8 --calibration_dataset DATASET_DIR [--fixed_shapes]

`torch.export` of the inference fast path of `model.optimize_for_inference()`, written into DIR next to the weights
with its manifest `epng_inference.json` in one of two formats:

* `aoti` (default): `epng_inference.pt2`, an AOTInductor package compiled ahead of time by
  `torch._inductor.aoti_compile_and_package` for this machine's torch version and CPU instruction set (or GPU). It
  holds the compiled code only (5 MB for the paper's model, not 720): a load hands it the weights of the model that
  `optimize_for_inference()` prepares, see `modeling_epng/aoti_package.py`.
* `onnx`: `epng_inference.onnx`, the same program translated by `torch.onnx.export` (fp32), run by onnxruntime on any
  CPU; it needs `pip install 'epng[onnx]'` (onnx, onnxscript and onnxruntime) to export and onnxruntime to run.

`optimize_for_inference()` (and so the pipeline, the CLI, the app and `evaluate_png.py`) picks the artefact up when
its manifest matches the machine; see `modeling_epng/inference.py`. A folder holds one artefact at a time: an export
replaces the manifest of the one before and removes its files.

`--dtype int8` (AOTInductor only, CPU): the program quantised to int8 by torchao's PT2E quantiser (`pip install
'epng[int8]'` to export; running it needs torch only), calibrated on the validation split of a 🤗 PNG dataset, with
its int8 weights inside the package (see `hub/quantize.py`). It is checked by its masks, not by `--tolerance`.

The program is exported with a dynamic batch size, image height and width (multiples of 32 up to
`--max_image_size`), token count and phrase count. With `--fixed_shapes`, only the token count stays dynamic: batch 1,
the image size of the model's processor and `--phrase_slots` phrase slots, which calls are padded to (see
`modeling_epng/fixed_shape_program.py`); Inductor's kernels for known sizes are faster (on the AMD EPYC of the
README, int8 2.6x fp32 eager instead of 1.6x), and calls of another image size or more phrases run eagerly. Before
anything is written, the artefact is checked against the fp32 eager model on two input sizes: the export fails if a
probability differs by more than `--tolerance`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from modeling_epng import EpngForPanopticNarrativeGrounding, EpngProcessor
from modeling_epng.aoti_package import (
    AotiPackageWithWeights,
    load_aoti_package,
    model_weights_for,
    weights_layout_sha256,
)
from modeling_epng.configuration_epng import check_input_size
from modeling_epng.fixed_shape_program import FixedShapeProgram
from modeling_epng.inference import (
    ARTIFACT_FILES,
    ARTIFACT_INPUTS,
    ARTIFACT_OUTPUTS,
    DTYPES,
    MANIFEST_FILE,
    OnnxRuntimeProgram,
    artifact_files,
    fold_batch_norms_into_convolutions,
    machine_fingerprint,
    onnxruntime_version,
    read_manifest,
    resolve_dtype,
    weights_sha256,
    weights_stats,
)

from .quantize import int8_kernel_calls, mask_agreement, quantize_program, quantizer_modules, validation_batches

FORMATS = tuple(ARTIFACT_FILES)
MAX_BATCH_SIZE = 64
MAX_PHRASES = 256


class EpngInferenceProgram(nn.Module):
    """What the artefact computes: the fast-path model from token-level inputs to `ARTIFACT_OUTPUTS`."""

    def __init__(self, model: EpngForPanopticNarrativeGrounding, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, pixel_values, input_ids, attention_mask, phrase_ids, phrase_mask):
        # The model's forward reads the phrase count from phrase_ids' values, which an exported graph cannot; pooling
        # the phrases first and passing phrase_features takes the same path without that read. In fp32 no autocast
        # region at all: the quantiser of an int8 export does not look inside one.
        low_precision = self.dtype != torch.float32
        with torch.autocast(pixel_values.device.type, dtype=self.dtype) if low_precision else contextlib.nullcontext():
            features = self.model.phrase_encoder.pool_phrases(
                input_ids, attention_mask, phrase_ids, phrase_mask.shape[1]
            )
        outputs = self.model(
            pixel_values=pixel_values,
            phrase_features=features.float(),
            phrase_mask=phrase_mask,
            output_pixel_embeddings=False,
        )
        return tuple(outputs[name] for name in ARTIFACT_OUTPUTS)


def example_inputs(config, batch_size: int, height: int, width: int, num_phrases: int, num_tokens: int, device):
    """Random token-level inputs with two-token phrases after [CLS] (the values do not shape the program)."""
    generator = torch.Generator().manual_seed(height * width + num_phrases)
    input_ids = torch.randint(1000, config.text_config.vocab_size, (batch_size, num_tokens), generator=generator)
    phrase_ids = torch.full((batch_size, num_tokens), -1)
    for phrase in range(num_phrases):
        phrase_ids[:, 1 + 2 * phrase : 3 + 2 * phrase] = phrase
    inputs = {
        "pixel_values": torch.randn(batch_size, 3, height, width, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "phrase_ids": phrase_ids,
        "phrase_mask": torch.ones(batch_size, num_phrases, dtype=torch.bool),
    }
    return {name: value.to(device, ARTIFACT_INPUTS[name]) for name, value in inputs.items()}


def dynamic_shapes(config, max_image_size: int) -> dict:
    batch = Dim("batch", min=1, max=MAX_BATCH_SIZE)
    rows, cols = (Dim(name, min=1, max=max_image_size // 32) for name in ("rows32", "cols32"))
    tokens = Dim("tokens", min=2, max=config.text_config.max_position_embeddings)
    phrases = Dim("phrases", min=1, max=MAX_PHRASES)
    text = {0: batch, 1: tokens}
    return {
        "pixel_values": {0: batch, 2: 32 * rows, 3: 32 * cols},
        "input_ids": text,
        "attention_mask": text,
        "phrase_ids": text,
        "phrase_mask": {0: batch, 1: phrases},
    }


def fixed_dynamic_shapes(config) -> dict:
    """`dynamic_shapes` of a `--fixed_shapes` export: the token count only."""
    text = {1: Dim("tokens", min=2, max=config.text_config.max_position_embeddings)}
    return {name: text if name in ("input_ids", "attention_mask", "phrase_ids") else None for name in ARTIFACT_INPUTS}


def processor_image_size(model_dir: Path) -> tuple[int, int]:
    """The (height, width) every image of the model's saved processor is resized to."""
    try:
        image_processor = EpngProcessor.from_pretrained(model_dir).image_processor
    except OSError as error:
        raise FileNotFoundError(
            f"--fixed_shapes exports for the processor's image size; {model_dir}: {error}"
        ) from error
    if not image_processor.do_resize:
        raise ValueError(f"--fixed_shapes needs a processor that resizes to one size; {model_dir}'s does not resize")
    height, width = image_processor.size["height"], image_processor.size["width"]
    check_input_size(height, width, "the processor's image size")
    return height, width


def max_probability_error(package, reference: EpngForPanopticNarrativeGrounding, inputs: dict) -> float:
    with torch.inference_mode():
        expected = reference(**inputs).mask_logits.float().sigmoid()
        actual = package(**inputs)[0].float().sigmoid()
    return float((actual - expected).abs().max())


def compile_aoti(program: torch.export.ExportedProgram, path: Path, device: str, model) -> tuple[object, dict]:
    """Compile `program` into the AOTInductor package `path` without the weights, which a load hands it from the model
    it prepares (see `modeling_epng/aoti_package.py`); returns it with `model`'s weights and its manifest entries.
    With `model` None (an int8 program, whose int8 weights the model does not have) the weights go into the package,
    frozen: Inductor then stores them in oneDNN's int8 layouts once, instead of reordering them at every call."""
    from torch._inductor import aoti_compile_and_package

    if model is None:
        # Inductor freezes only a graph compiled without autograd; freezing is what lowers the quantised patterns to
        # oneDNN's int8 convolutions and matrix products (without it they run as fp32 ones between (de)quantisations).
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            aoti_compile_and_package(program, package_path=str(path))
        return load_aoti_package(path), {**machine_fingerprint(device), "weights_in_package": True}
    configs = {"aot_inductor.package_constants_in_so": False}
    aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)
    package = load_aoti_package(path)
    weights = model_weights_for(package, model)
    entries = {"weights_in_package": False, "weights_layout_sha256": weights_layout_sha256(weights)}
    return AotiPackageWithWeights(package, weights), {**machine_fingerprint(device), **entries}


def translate_onnx(program: torch.export.ExportedProgram, path: Path, device: str = "cpu") -> tuple[object, dict]:
    """Translate `program` into the ONNX model `path`, its weights in `<path>.data` (onnxruntime opens the graph twice
    as fast without 700 MB of weights inside the protobuf); returns it in an onnxruntime session and its manifest
    entries."""
    # torch.onnx's exporter needs onnxscript and the parity check onnxruntime: imported first for a clear error.
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"--format onnx needs {error.name}: pip install 'epng[onnx]'") from error
    # The exporter warns once per torchvision operator when torchvision is missing; EPNG uses none of them.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    onnx_program = torch.onnx.export(
        program,
        input_names=list(ARTIFACT_INPUTS),
        output_names=list(ARTIFACT_OUTPUTS),
        dynamo=True,
        verbose=False,
    )
    onnx_program.save(str(path), external_data=True)
    opset = next(entry.version for entry in onnx_program.model_proto.opset_import if entry.domain in ("", "ai.onnx"))
    entries = {"torch_version": torch.__version__, "device": "cpu", "onnxruntime_version": onnxruntime_version()}
    data_files = [staged.name for staged in path.parent.iterdir() if staged != path]
    return OnnxRuntimeProgram(path), {**entries, "onnx_opset": opset, "data_files": data_files}


def export(
    model_dir: str | Path,
    format: str = "aoti",
    dtype: str = "auto",
    max_image_size: int = 2048,
    tolerance: float = 1e-2,
    device: str = "cpu",
    calibration_dataset: str | Path | None = None,
    calibration_batches: int = 4,
    calibration_batch_size: int = 8,
    min_mean_iou: float = 0.98,
    fixed_shapes: bool = False,
    phrase_slots: int = 32,
) -> dict:
    """Export the model of `model_dir` into `model_dir` (see the module docstring); returns the manifest.

    `dtype="int8"` quantises the program first (see `hub/quantize.py`) on `calibration_batches` batches of
    `calibration_batch_size` narratives of the validation split of the 🤗 PNG dataset `calibration_dataset`, and
    checks it on as many batches after those: their masks must reach a mean IoU of `min_mean_iou` against fp32's
    (`tolerance` does not apply). `fixed_shapes` exports for batch 1, the processor's image size and `phrase_slots`
    phrase slots, the token count alone dynamic."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "onnx" and (dtype in ("bf16", "int8") or torch.device(device).type != "cpu"):
        raise ValueError(f"an ONNX artefact is fp32 for the CPU, got dtype {dtype!r} and device {device!r}")
    if dtype == "int8":
        if torch.device(device).type != "cpu":
            raise ValueError(f"an int8 artefact runs oneDNN's CPU kernels, got device {device!r}")
        if calibration_dataset is None:
            raise ValueError("--dtype int8 needs --calibration_dataset: a 🤗 PNG dataset folder to calibrate on")
        quantizer_modules()  # before minutes of work: says which extra to install
    if fixed_shapes and phrase_slots < 1:
        raise ValueError(f"phrase_slots must be a positive number, got {phrase_slots}")
    if max_image_size < 32 or max_image_size % 32:
        raise ValueError(f"max_image_size must be a positive multiple of 32, got {max_image_size}")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved EPNG folder (no config.json); export writes next to it")
    image_size = processor_image_size(model_dir) if fixed_shapes else None
    reference = EpngForPanopticNarrativeGrounding.from_pretrained(model_dir).to(device).eval()
    model = EpngForPanopticNarrativeGrounding.from_pretrained(model_dir).to(device)
    if dtype == "int8":
        # The fp32 model with its batch norms folded, without the fast path's autocast wrapper, whose region (even
        # disabled) the quantiser would not look inside. What stays in floating point runs in bf16 where the CPU
        # computes bf16 natively, as the fast path's `dtype="auto"` picks.
        model.eval().requires_grad_(False)
        fold_batch_norms_into_convolutions(model)
        program_dtype = torch.float32
        int8_float_dtype = resolve_dtype("auto", device)[0]
        batches = validation_batches(
            model_dir, calibration_dataset, calibration_batch_size, 2 * calibration_batches, device
        )
        calibration, held_out = batches[:calibration_batches], batches[calibration_batches:]
    else:
        model.optimize_for_inference(dtype="fp32" if format == "onnx" else dtype, use_artifact=False)
        program_dtype = DTYPES[model.inference_settings.dtype]
    config = model.config
    if fixed_shapes:
        shapes = fixed_dynamic_shapes(config)
        inputs = example_inputs(config, 1, *image_size, phrase_slots, 16, device)
        checks = [example_inputs(config, 2, *image_size, 3, 16, device), inputs]
    else:
        shapes = dynamic_shapes(config, max_image_size)
        # Batch 2 and sizes above 1 so that no dimension is specialised to the example's value.
        inputs = example_inputs(config, 2, 64, 96, 3, 16, device)
        checks = [inputs, example_inputs(config, 1, 96, 64, 5, 24, device)]
    start = time.perf_counter()
    program = torch.export.export(
        EpngInferenceProgram(model, program_dtype).eval(), (), inputs, dynamic_shapes=shapes, strict=False
    )
    if dtype == "int8":
        if fixed_shapes:
            calibration = fixed_shape_inputs(calibration, image_size, phrase_slots)
        program = quantize_program(program, calibration, inputs, shapes, DTYPES[int8_float_dtype])
    artifact_file = ARTIFACT_FILES[format]
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".export-") as staging:
        staged = Path(staging, artifact_file)
        if format == "aoti":
            package, built_for = compile_aoti(program, staged, device, None if dtype == "int8" else model)
        else:
            package, built_for = translate_onnx(program, staged, device)
        seconds = time.perf_counter() - start
        if fixed_shapes:
            package = FixedShapeProgram(package, image_size, phrase_slots)
        error = max(max_probability_error(package, reference, check) for check in checks)
        if dtype == "int8":
            kernels = int8_kernel_calls(staged)
            if not kernels:
                raise RuntimeError("Inductor lowered no convolution or linear layer to oneDNN's int8 kernels")
            checked = {**mask_agreement(package, reference, held_out), "int8_kernel_calls": kernels}
            checked["int8_float_dtype"] = int8_float_dtype
            if checked["mean_mask_iou"] < min_mean_iou:
                raise RuntimeError(
                    f"the int8 program's masks agree with fp32's by a mean IoU of {checked['mean_mask_iou']:.4f} < "
                    f"{min_mean_iou} on {checked['mask_iou_phrases']} validation phrases"
                )
            built_for = {**built_for, **checked, "calibration_narratives": calibration_batches * calibration_batch_size}
        elif error > tolerance:
            raise RuntimeError(
                f"the exported program's probabilities differ from fp32 eager by {error:.2e} > {tolerance}"
            )
        manifest = {
            "format": format,
            "file": artifact_file,
            "dtype": "int8" if dtype == "int8" else model.inference_settings.dtype,
            "outputs": list(ARTIFACT_OUTPUTS),
            **built_for,
            "weights_sha256": weights_sha256(model_dir),
            "weights_stats": weights_stats(model_dir),
            "max_image_size": max_image_size,
            "max_batch_size": MAX_BATCH_SIZE,
            "max_phrases": MAX_PHRASES,
            **fixed_shape_entries(image_size, phrase_slots),
            "max_probability_error": error,
            "export_seconds": round(seconds, 1),
        }
        previous = read_manifest(model_dir)
        previous_files = set(artifact_files(previous) if previous else []) - set(artifact_files(manifest))
        for name in artifact_files(manifest):
            os.replace(Path(staging, name), model_dir / name)
        staged_manifest = Path(staging, MANIFEST_FILE)
        staged_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(staged_manifest, model_dir / MANIFEST_FILE)
    for name in previous_files:
        (model_dir / name).unlink(missing_ok=True)
    return manifest


def fixed_shape_inputs(batches: list[dict], image_size: tuple[int, int], phrase_slots: int) -> list[dict]:
    """Each narrative of `batches` as the inputs of a `--fixed_shapes` program (batch 1, phrase slots padded)."""
    padder = FixedShapeProgram(None, image_size, phrase_slots)
    singles = []
    for batch in batches:
        refusal = padder.refusal(batch["pixel_values"], batch["phrase_mask"])
        if refusal is not None:
            raise ValueError(f"a calibration batch does not fit the fixed shapes: {refusal} (raise --phrase_slots)")
        singles += padder.single_inputs(batch)
    return singles


def fixed_shape_entries(image_size: tuple[int, int] | None, phrase_slots: int) -> dict:
    """What the manifest records of the fixed shapes (nothing for a program of dynamic shapes); the batch size and
    image size are then the only ones it takes, the phrase slots the most phrases."""
    if image_size is None:
        return {}
    shapes = {"batch_size": 1, "image_size": list(image_size), "phrase_slots": phrase_slots}
    return {"fixed_shapes": shapes, "max_batch_size": 1, "max_image_size": max(image_size), "max_phrases": phrase_slots}


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="saved EPNG folder; the artefact is written there")
    parser.add_argument(
        "--format", default="aoti", choices=FORMATS, help="aoti: AOTInductor package (default); onnx: ONNX, fp32, CPU"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "bf16", "fp32", "int8"),
        help="auto: bf16 where computed natively; int8: quantised, needs --calibration_dataset and torchao",
    )
    parser.add_argument("--max_image_size", type=int, default=2048, help="largest image side it accepts (2048)")
    parser.add_argument("--tolerance", type=float, default=1e-2, help="largest probability error accepted (1e-2)")
    parser.add_argument("--device", default="cpu", help="device it runs on (cpu, cuda)")
    parser.add_argument("--calibration_dataset", help="int8: 🤗 PNG dataset folder whose validation split calibrates")
    parser.add_argument("--calibration_batches", type=int, default=4, help="int8: batches that calibrate (4)")
    parser.add_argument("--calibration_batch_size", type=int, default=8, help="int8: narratives per batch (8)")
    parser.add_argument(
        "--min_mean_iou", type=float, default=0.98, help="int8: least mean mask IoU against fp32 accepted (0.98)"
    )
    parser.add_argument(
        "--fixed_shapes",
        action="store_true",
        help="export for batch 1, the processor's image size and --phrase_slots phrases (faster; others run eagerly)",
    )
    parser.add_argument("--phrase_slots", type=int, default=32, help="--fixed_shapes: most phrases per narrative (32)")
    args = parser.parse_args(argv)
    try:
        manifest = export(
            args.model_name_or_path,
            args.format,
            args.dtype,
            args.max_image_size,
            args.tolerance,
            args.device,
            args.calibration_dataset,
            args.calibration_batches,
            args.calibration_batch_size,
            args.min_mean_iou,
            args.fixed_shapes,
            args.phrase_slots,
        )
    except (ValueError, FileNotFoundError, ImportError) as error:
        parser.error(str(error))
    print(json.dumps(manifest, indent=2))
    return manifest


def main(argv=None) -> None:
    """Console entry point: `run` without its result (a console script exits with what it returns; a dict is 1)."""
    run(argv)


if __name__ == "__main__":
    main()
