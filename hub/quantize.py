"""int8 post-training quantisation of an exported EPNG program, for `python -m hub.export --dtype int8`.

PT2E with torchao's `X86InductorQuantizer`: the convolutions and linear layers of the visual encoder, the
communicator and the head get int8 weights (per output channel) and int8 activations (per tensor, their ranges
observed on calibration batches of a PNG dataset's validation split); the frozen text encoder and the phrase pooling,
where the phrase features that every mask depends on are computed, are not quantised. Inductor then compiles the
quantised program into oneDNN's int8 kernels (VNNI, AMX), with the int8 weights inside the package. What stays in
floating point (the text encoder too) runs in bf16 where the CPU computes bf16 natively: on the AMD EPYC of the
README, the int8 package with fp32 around its kernels was slower than the bf16 eager fast path.

torchao is needed to quantise (`pip install 'epng[int8]'`), not to run the package: it holds only torch operators.
The int8 program's probabilities differ from fp32 by more than bf16's (tenths at a mask's boundary), so it is judged
by its masks: the export fails unless their mean IoU against fp32's, on validation batches that did not calibrate
it, reaches `--min_mean_iou` (0.98 by default).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from modeling_epng.inference import ARTIFACT_INPUTS
from training.metrics import mask_iou

# How AOTInductor's generated C++ calls oneDNN's int8 kernels (`aoti_torch_cpu__qconv_pointwise_tensor`, ...).
INT8_KERNEL_CALL = re.compile(r"aoti_torch_cpu__q(?:conv|linear)\w*\(")

# The modules left out of quantisation, named as in the exported program (which holds the model as its attribute `model`).
# The text encoder is named on its own: the program calls the phrase encoder's pooling method, not the phrase encoder,
# so the text encoder's operations are not recorded under the phrase encoder's name. Quantised too, the text encoder
# took the demo model's mean mask IoU against fp32 from 0.992 to 0.955 (the quantised program run before compiling).
TEXT_SIDE = ("model.phrase_encoder", "model.phrase_encoder.text_encoder")


def quantizer_modules():
    """torchao's PT2E entry points, or an ImportError that names the extra to install."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as error:
        raise ImportError(f"--dtype int8 needs torchao to quantise ({error}): pip install 'epng[int8]'") from error
    return x86, prepare_pt2e, convert_pt2e, move_exported_model_to_eval


def validation_batches(
    model_dir: str | Path, dataset_dir: str | Path, batch_size: int, num_batches: int, device
) -> list[dict[str, torch.Tensor]]:
    """The first `num_batches` batches of `batch_size` narratives of the validation split of the 🤗 PNG dataset in
    `dataset_dir`, as the model's processor (saved in `model_dir`) makes them: the exported program's inputs."""
    import datasets

    from modeling_epng import EpngProcessor
    from processing.collate import EpngCollator

    if batch_size < 1 or num_batches < 1:
        raise ValueError(f"calibration needs at least one batch of one narrative, got {num_batches} x {batch_size}")
    if not Path(dataset_dir).is_dir():
        raise FileNotFoundError(f"--calibration_dataset {dataset_dir} is not a folder (a saved 🤗 PNG dataset)")
    splits = datasets.load_dataset(str(dataset_dir))
    if "validation" not in splits:
        raise ValueError(f"{dataset_dir} has no validation split to calibrate on (splits: {', '.join(splits)})")
    validation = splits["validation"]
    needed = batch_size * num_batches
    if len(validation) < needed:
        raise ValueError(f"{dataset_dir} has {len(validation)} validation narratives, {needed} are needed")
    collator = EpngCollator(EpngProcessor.from_pretrained(model_dir), return_targets=False, model_inputs_only=True)
    batches = []
    for start in range(0, needed, batch_size):
        batch = collator([validation[index] for index in range(start, start + batch_size)])
        batches.append({name: batch[name].to(device, dtype) for name, dtype in ARTIFACT_INPUTS.items()})
    return batches


class _FloatOperationsIn(nn.Module):
    """A quantised program with what stays in floating point (the text encoder, attention, norms, the head's product)
    under autocast to `dtype`, its outputs back in fp32: the int8 kernels then take and give bf16 where they would
    take and give fp32."""

    def __init__(self, program: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.program, self.dtype = program, dtype

    def forward(self, pixel_values, input_ids, attention_mask, phrase_ids, phrase_mask):
        with torch.autocast(pixel_values.device.type, dtype=self.dtype):
            outputs = self.program(
                pixel_values=pixel_values,
                input_ids=input_ids,
                attention_mask=attention_mask,
                phrase_ids=phrase_ids,
                phrase_mask=phrase_mask,
            )
        return tuple(output.float() for output in outputs)


def quantize_program(
    program: torch.export.ExportedProgram,
    calibration: list[dict],
    example: dict,
    dynamic_shapes: dict,
    float_dtype: torch.dtype = torch.float32,
) -> torch.export.ExportedProgram:
    """`program` with int8 convolutions and linear layers outside the text side, calibrated on `calibration`, and its
    other operations in `float_dtype`, exported again on `example` (the inputs it was exported on: no size of 1,
    which would be specialised) with the same `dynamic_shapes` (what AOTInductor compiles). The autocast to bf16
    comes after the quantisation: the quantiser does not look inside an autocast region."""
    x86, prepare_pt2e, convert_pt2e, move_exported_model_to_eval = quantizer_modules()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    for name in TEXT_SIDE:
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(**batch)
    quantized = convert_pt2e(prepared)
    move_exported_model_to_eval(quantized)
    if float_dtype != torch.float32:
        quantized = _FloatOperationsIn(quantized, float_dtype)
    with torch.no_grad():
        return torch.export.export(quantized, (), example, dynamic_shapes=dynamic_shapes, strict=False)


def int8_kernel_calls(package_path: str | Path) -> int:
    """How many calls of oneDNN's int8 convolution and linear kernels the AOTInductor package's generated C++ makes.
    0 means Inductor left the quantised patterns as fp32 operations between (de)quantisations: slower than fp32."""
    with zipfile.ZipFile(package_path) as package:
        sources = [name for name in package.namelist() if name.endswith(".wrapper.cpp")]
        return sum(len(INT8_KERNEL_CALL.findall(package.read(name).decode())) for name in sources)


def mask_agreement(package, reference, batches: list[dict]) -> dict:
    """Mean and lowest mask IoU and largest probability difference of `package` against the fp32 `reference` model
    on `batches`, at the model config's mask threshold."""
    ious, errors = [], []
    threshold = reference.config.mask_threshold
    with torch.inference_mode():
        for batch in batches:
            real = batch["phrase_mask"]
            expected = reference(**batch).mask_logits.float().sigmoid()[real]
            actual = package(**batch)[0].float().sigmoid()[real]
            ious.append(mask_iou(actual >= threshold, expected >= threshold))
            errors.append(float((actual - expected).abs().max()))
    iou = torch.cat(ious)
    return {
        "mask_iou_phrases": iou.numel(),
        "mean_mask_iou": float(iou.mean()),
        "min_mask_iou": float(iou.min()),
        "validation_max_probability_error": max(errors),
    }


__all__ = ["int8_kernel_calls", "mask_agreement", "quantize_program", "quantizer_modules", "validation_batches"]
