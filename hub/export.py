"""Export a trained EPNG once, so that every later process loads it compiled in seconds instead of compiling it.

    python -m hub.export --model_name_or_path DIR [--format aoti] [--dtype auto|bf16|fp32] [--max_image_size 2048]

Writes `epng_inference.pt2` (an AOTInductor package: `torch.export` of the inference fast path of
`model.optimize_for_inference()`, compiled ahead of time by `torch._inductor.aoti_compile_and_package`) and its
manifest `epng_inference.json` into DIR, next to the weights. `optimize_for_inference()` (and so the pipeline, the
CLI, the app and `evaluate_png.py`) picks it up when it matches the machine; see `modeling_epng/inference.py`.

The program is exported with a dynamic batch size, image height and width (multiples of 32 up to
`--max_image_size`), token count and phrase count. The package is compiled for this machine's torch version and CPU
instruction set (or GPU), which the manifest records. Before anything is written, the package is checked against the
fp32 eager model on two input sizes: the export fails if a probability differs by more than `--tolerance`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from modeling_epng import EpngForPanopticNarrativeGrounding
from modeling_epng.inference import (
    ARTIFACT_FILE,
    ARTIFACT_INPUTS,
    ARTIFACT_OUTPUTS,
    DTYPES,
    MANIFEST_FILE,
    machine_fingerprint,
    weights_sha256,
)

FORMATS = ("aoti",)
MAX_BATCH_SIZE = 64
MAX_PHRASES = 256


class EpngInferenceProgram(nn.Module):
    """What the artefact computes: the fast-path model from token-level inputs to `ARTIFACT_OUTPUTS`."""

    def __init__(self, model: EpngForPanopticNarrativeGrounding):
        super().__init__()
        self.model = model
        self.dtype = DTYPES[model.inference_settings.dtype]

    def forward(self, pixel_values, input_ids, attention_mask, phrase_ids, phrase_mask):
        # The model's forward reads the phrase count from phrase_ids' values, which an exported graph cannot; pooling
        # the phrases first and passing phrase_features takes the same path without that read.
        with torch.autocast(pixel_values.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            features = self.model.phrase_encoder.pool_phrases(
                input_ids, attention_mask, phrase_ids, phrase_mask.shape[1]
            )
        outputs = self.model(pixel_values=pixel_values, phrase_features=features.float(), phrase_mask=phrase_mask)
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


def max_probability_error(package, reference: EpngForPanopticNarrativeGrounding, inputs: dict) -> float:
    with torch.inference_mode():
        expected = reference(**inputs).mask_logits.float().sigmoid()
        actual = package(**inputs)[0].float().sigmoid()
    return float((actual - expected).abs().max())


def export(
    model_dir: str | Path,
    format: str = "aoti",
    dtype: str = "auto",
    max_image_size: int = 2048,
    tolerance: float = 1e-2,
    device: str = "cpu",
) -> dict:
    """Export the model of `model_dir` into `model_dir` (see the module docstring); returns the manifest."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if max_image_size < 32 or max_image_size % 32:
        raise ValueError(f"max_image_size must be a positive multiple of 32, got {max_image_size}")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved EPNG folder (no config.json); export writes next to it")
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    reference = EpngForPanopticNarrativeGrounding.from_pretrained(model_dir).to(device).eval()
    model = EpngForPanopticNarrativeGrounding.from_pretrained(model_dir).to(device)
    model.optimize_for_inference(dtype=dtype, use_artifact=False)
    config = model.config
    # Batch 2 and sizes above 1 so that no dimension is specialised to the example's value.
    inputs = example_inputs(config, 2, 64, 96, 3, 16, device)
    start = time.perf_counter()
    program = torch.export.export(
        EpngInferenceProgram(model).eval(),
        (),
        inputs,
        dynamic_shapes=dynamic_shapes(config, max_image_size),
        strict=False,
    )
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".export-") as staging:
        staged = Path(staging, ARTIFACT_FILE)
        aoti_compile_and_package(program, package_path=str(staged))
        seconds = time.perf_counter() - start
        package = aoti_load_package(str(staged))
        checks = [inputs, example_inputs(config, 1, 96, 64, 5, 24, device)]
        error = max(max_probability_error(package, reference, check) for check in checks)
        if error > tolerance:
            raise RuntimeError(
                f"the exported program's probabilities differ from fp32 eager by {error:.2e} > {tolerance}"
            )
        manifest = {
            "format": format,
            "file": ARTIFACT_FILE,
            "dtype": model.inference_settings.dtype,
            **machine_fingerprint(device),
            "weights_sha256": weights_sha256(model_dir),
            "max_image_size": max_image_size,
            "max_batch_size": MAX_BATCH_SIZE,
            "max_phrases": MAX_PHRASES,
            "max_probability_error": error,
            "export_seconds": round(seconds, 1),
        }
        os.replace(staged, model_dir / ARTIFACT_FILE)
        staged_manifest = Path(staging, MANIFEST_FILE)
        staged_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(staged_manifest, model_dir / MANIFEST_FILE)
    return manifest


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="saved EPNG folder; the artefact is written there")
    parser.add_argument("--format", default="aoti", choices=FORMATS, help="aoti: AOTInductor package (default)")
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 where computed natively"
    )
    parser.add_argument("--max_image_size", type=int, default=2048, help="largest image side it accepts (2048)")
    parser.add_argument("--tolerance", type=float, default=1e-2, help="largest probability error accepted (1e-2)")
    parser.add_argument("--device", default="cpu", help="device it runs on (cpu, cuda)")
    args = parser.parse_args(argv)
    try:
        manifest = export(
            args.model_name_or_path, args.format, args.dtype, args.max_image_size, args.tolerance, args.device
        )
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(json.dumps(manifest, indent=2))
    return manifest


if __name__ == "__main__":
    main()
