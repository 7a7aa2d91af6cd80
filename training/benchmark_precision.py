"""Where the bf16 fast path's probability error comes from, on a trained model and real batches.

    python -m training.benchmark_precision --model_name_or_path outputs/demo/model --dataset outputs/demo/png_dataset

Runs the first `--num_examples` validation narratives of a 🤗 PNG dataset folder (processed by the model's own
processor, the text encoder included) through the model in fp32 eager (the reference) and through variants that put
one part of the network in bf16 autocast and keep the rest in fp32 (`<part> alone in bf16`), or the reverse
(`<part> in fp32`, the rest in bf16), after `optimize_for_inference` (folded batch norms, channels_last). Parts: the
text encoder, the phrase projection, the backbone, the FPN and its fusion, the communicator, and the head (the
phrase-pixel product before the upsampling). For each it prints the largest and the mean |probability difference|
over real phrases' pixels, the fraction of pixels whose mask (at the config's threshold) flips, and the fp32 logit at
the worst pixel; then the size of the fp32 logits and of sum_c |e_c x_c| (phrase embedding times pixel feature),
which is what multiplies a relative rounding error into a logit error.
"""

from __future__ import annotations

import argparse
import functools
import json

import torch

from modeling_epng import EpngForPanopticNarrativeGrounding, EpngProcessor
from modeling_epng.modeling_epng import EpngOutput

PARTS = ("text encoder", "phrase projection", "backbone", "FPN + fusion", "communicator", "head")


def part_calls(model: EpngForPanopticNarrativeGrounding, part: str) -> list[tuple[object, str]]:
    """(object, method name) of the calls that make up one part of the network: the text encoder's part is the
    phrase pooling (the encoder and the mean over each phrase's tokens); the head has none, it is the product in the
    model's forward."""
    visual = model.visual_encoder
    modules = {
        "text encoder": [],
        "phrase projection": [model.phrase_encoder.text_projection],
        "backbone": [visual.backbone],
        "FPN + fusion": [*visual.lateral_convs, *visual.output_convs],
        "communicator": [model.communicator],
        "head": [],
    }[part]
    calls = [(module, "forward") for module in modules]
    if part == "text encoder":
        return [(model.phrase_encoder, "encode_tokens"), (model.phrase_encoder, "pool_token_features")]
    return calls


def _floats(value, dtype):
    """`value` with its floating tensors (also inside tuples and model outputs) cast to `dtype`."""
    if torch.is_tensor(value):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return type(value)(_floats(item, dtype) for item in value)
    if hasattr(value, "items"):  # a ModelOutput: set its fields in place, keeping its type
        for key, item in value.items():
            value[key] = _floats(item, dtype)
    return value


def run_in(owner, name: str, dtype: torch.dtype, fp32_owner=None) -> None:
    """Make the method `name` of `owner` run in `dtype`, its outputs in fp32: under bf16 autocast, or with autocast
    off and its float inputs cast to fp32. A bf16 fast path stores the linear and convolution weights in bf16: to
    run in fp32, a module `owner` takes the weights of `fp32_owner`, the same module of the fp32 fast path."""
    forward = getattr(owner, name)
    if dtype == torch.float32 and isinstance(owner, torch.nn.Module):
        for parameter, fp32_parameter in zip(owner.parameters(), fp32_owner.parameters(), strict=True):
            parameter.data = fp32_parameter.data

    @functools.wraps(forward)
    def forward_in_dtype(*args, **kwargs):
        if dtype == torch.float32:
            args, kwargs = [_floats(a, dtype) for a in args], {k: _floats(v, dtype) for k, v in kwargs.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return _floats(forward(*args, **kwargs), torch.float32)

    setattr(owner, name, forward_in_dtype)


def head_logits(model, phrase_embeddings: torch.Tensor, pixel_map: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The head alone: (B, P, C) x (B, C, h, w) -> (B, P, 4h, 4w) logits, the product in `dtype`."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        products = torch.einsum("bpc,bchw->bphw", phrase_embeddings, pixel_map)
    return model.upsample_to_mask_stride(products.float())


def forward_with_head(model, inputs: dict, head_dtype: torch.dtype) -> torch.Tensor:
    """The model's mask logits with the head recomputed in `head_dtype` from its own communicator output."""
    captured = {}
    hook = model.communicator.register_forward_hook(lambda module, args, output: captured.update(map=output[0]))
    try:
        output: EpngOutput = model(**inputs)
    finally:
        hook.remove()
    return head_logits(model, output.phrase_embeddings.float(), captured["map"].float(), head_dtype)


def compare(logits: torch.Tensor, reference: torch.Tensor, phrase_mask: torch.Tensor, threshold: float) -> dict:
    """Largest and mean |probability difference| over real phrases, mask flips, the fp32 logit at the worst pixel."""
    probabilities, expected = logits.float().sigmoid()[phrase_mask], reference.sigmoid()[phrase_mask]
    difference = (probabilities - expected).abs()
    worst = int(difference.argmax())
    flips = (probabilities > threshold) != (expected > threshold)
    return {
        "max_probability_error": float(difference.max()),
        "mean_probability_error": float(difference.mean()),
        "flipped_pixels": float(flips.float().mean()),
        "reference_logit_at_max_error": float(reference[phrase_mask].flatten()[worst]),
    }


def load_inputs(model_dir: str, dataset_dir: str, num_examples: int) -> dict:
    import datasets

    from processing.collate import EpngCollator

    processor = EpngProcessor.from_pretrained(model_dir)
    validation = datasets.load_dataset(dataset_dir)["validation"]
    collator = EpngCollator(processor, return_targets=False, model_inputs_only=True)
    return collator([validation[index] for index in range(min(num_examples, len(validation)))])


def measure(model_dir: str, inputs: dict) -> dict:
    """The reference's logit statistics and the comparison of every variant (see the module docstring)."""

    def prepared(dtype: str) -> EpngForPanopticNarrativeGrounding:
        model = EpngForPanopticNarrativeGrounding.from_pretrained(model_dir)
        return model.optimize_for_inference(dtype=dtype, use_artifact=False)

    reference_model = EpngForPanopticNarrativeGrounding.from_pretrained(model_dir).eval()
    phrase_mask = inputs["phrase_mask"].bool()
    threshold = reference_model.config.mask_threshold
    captured = {}
    hook = reference_model.communicator.register_forward_hook(
        lambda module, args, output: captured.update(map=output[0])
    )
    with torch.inference_mode():
        output = reference_model(**inputs)
        reference = output.mask_logits
        scale = torch.einsum("bpc,bchw->bphw", output.phrase_embeddings.abs(), captured["map"].abs())
    hook.remove()
    report = {
        "reference": {
            "num_phrases": int(phrase_mask.sum()),
            "max_abs_logit": float(reference[phrase_mask].abs().max()),
            "median_abs_logit": float(reference[phrase_mask].abs().median()),
            "max_sum_abs_products": float(scale.max()),
        },
        "variants": {},
    }
    variants = {"all bf16 (the bf16 fast path)": ("bf16", None, torch.bfloat16)}
    for part in PARTS:
        variants[f"{part} alone in bf16"] = ("fp32", part, torch.bfloat16)
        variants[f"{part} in fp32"] = ("bf16", part, torch.float32)
    fp32_model = prepared("fp32")
    for name, (base_dtype, part, part_dtype) in variants.items():
        model = prepared(base_dtype)
        calls = zip(part_calls(model, part), part_calls(fp32_model, part), strict=True) if part else []
        for (owner, method), (fp32_owner, _) in calls:
            run_in(owner, method, part_dtype, fp32_owner)
        with torch.inference_mode():
            # the head's product is in the model's forward: it is recomputed in its own dtype from its inputs
            if part == "head":
                logits = forward_with_head(model, inputs, part_dtype)
            else:
                logits = model(**inputs).mask_logits
        report["variants"][name] = compare(logits, reference, phrase_mask, threshold)
    return report


def format_report(report: dict) -> list[str]:
    reference = report["reference"]
    lines = [
        f"fp32 logits over {reference['num_phrases']} phrases: max |logit| {reference['max_abs_logit']:.1f}, median "
        f"{reference['median_abs_logit']:.1f}; max sum_c |e_c x_c| {reference['max_sum_abs_products']:.1f}",
        f"  {'variant':32} {'max |dp|':>9} {'mean |dp|':>9} {'flipped':>9} {'fp32 logit at max':>18}",
    ]
    for name, values in report["variants"].items():
        lines.append(
            f"  {name:32} {values['max_probability_error']:9.1e} {values['mean_probability_error']:9.1e} "
            f"{values['flipped_pixels']:9.1e} {values['reference_logit_at_max_error']:18.2f}"
        )
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="a saved model + processor folder")
    parser.add_argument("--dataset", required=True, help="a 🤗 PNG dataset folder with a validation split")
    parser.add_argument("--num_examples", type=int, default=16, help="validation narratives, one batch (16)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", metavar="PATH", help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    if args.num_examples < 1:
        parser.error(f"--num_examples must be at least 1, got {args.num_examples}")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = measure(args.model_name_or_path, load_inputs(args.model_name_or_path, args.dataset, args.num_examples))
    print("\n".join(format_report(report)))
    if args.json:
        with open(args.json, "w") as output:
            json.dump(report, output, indent=2)


if __name__ == "__main__":
    main()
