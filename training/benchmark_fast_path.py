"""Inference fast-path section of the EPNG benchmark (`python -m training.benchmark --fast_path`).

Variants of the same weights, timed interleaved in one process (batch = the first `--batch_sizes`, bare model: the
text encoder is left out through `phrase_features`, unless `--with_text_encoder`):

* `fp32_eager`: the model as `from_pretrained` gives it (the baseline of every ratio);
* `fast_path`: `model.optimize_for_inference()` with its defaults (no compile, no artefact);
* `fast_path_fp32`: the same with `dtype="fp32"` (channels_last + folded batch norms only);
* `fast_path_compiled` (with `--compile`): `optimize_for_inference(compile=True)`;
* `artifact` (with `--model_name_or_path DIR` holding an artefact of `python -m hub.export`): the AOTInductor
  package or the ONNX model (onnxruntime), whichever the folder holds, in its own dtype.
  It runs from token-level inputs, so this variant always includes the text encoder, and `fp32_eager` is then timed
  with the text encoder too, as its baseline.

Each variant reports its latency, its ratio to `fp32_eager` and its max |probability difference| from it.
`--cold_start` also times, in fresh processes, process start -> first mask of `from_pretrained` + the variant
(eager, fast path, compiled, artefact, each with its stages) and a run of the `epng-ground` command (the folder needs
its processor): see `training/benchmark_cold_start.py`.
"""

from __future__ import annotations

import torch

from modeling_epng import EpngForPanopticNarrativeGrounding
from modeling_epng.inference import ISA_FLAG, artifact_dtype, cpu_flags, native_bf16_reason

from .benchmark_cold_start import cold_start_seconds, format_cold_start
from .benchmark_timing import Variant, measure_variants

BASELINE = "fp32_eager"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--fast_path", action="store_true", help="measure optimize_for_inference variants against fp32 eager"
    )
    parser.add_argument(
        "--model_name_or_path",
        metavar="DIR",
        help="fast-path and user-path sections: this saved folder's weights (and exported artefact, processor)",
    )
    parser.add_argument(
        "--cold_start", action="store_true", help="fast-path section: time process start -> first mask per variant"
    )


def check_arguments(parser, args) -> None:
    if args.cold_start and not args.model_name_or_path:
        parser.error("--cold_start needs --model_name_or_path (a saved folder that fresh processes can load)")
    if args.cold_start and not args.fast_path:
        parser.error("--cold_start belongs to the --fast_path section")
    if args.model_name_or_path and not (args.fast_path or args.paths):
        parser.error("--model_name_or_path belongs to the --fast_path and --paths sections")


def instruction_sets(device) -> dict:
    """What decides the fast path's dtype here: torch's CPU capability, the ISA flags, native bf16 or not."""
    native, reason = native_bf16_reason(device)
    flags = sorted(flag for flag in cpu_flags() if ISA_FLAG.match(flag))
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_flags": flags,
        "native_bf16": native,
        "native_bf16_reason": reason,
    }


def fast_path_section(config, args, device, memory) -> dict:
    """The `fast_path` entry of the report: measurements, the settings of each variant, cold starts if asked."""
    records, settings = fast_path_measurements(config, args, device, memory)
    section = {"measurements": records, "settings": settings}
    if args.cold_start:
        variants = ["eager", "fast_path", *(["compiled"] if args.compile else []), "artifact", "ground"]
        section["cold_start"] = [cold_start_seconds(args.model_name_or_path, name, args) for name in variants]
    return section


def load_model(config, args, device):
    if args.model_name_or_path:
        return EpngForPanopticNarrativeGrounding.from_pretrained(args.model_name_or_path).to(device).eval()
    torch.manual_seed(args.seed)
    return EpngForPanopticNarrativeGrounding(config).to(device).eval()


def fast_path_measurements(config, args, device, memory) -> tuple[list[dict], dict]:
    """The records of every fast-path variant (see the module docstring) and the settings each variant used."""
    from .benchmark import make_inputs

    batch_size = args.batch_sizes[0]
    reference = load_model(config, args, device)
    config = reference.config
    plain = make_inputs(config, batch_size, args, args.with_text_encoder, device)
    tokens = make_inputs(config, batch_size, args, True, device)  # the artefact runs from tokens
    models = {BASELINE: reference}
    options = {"fast_path": {}, "fast_path_fp32": {"dtype": "fp32"}}
    if args.compile:
        options["fast_path_compiled"] = {"compile": True}
    for name, option in options.items():
        models[name] = load_model(config, args, device).optimize_for_inference(use_artifact=False, **option)
    settings = {name: model.inference_settings.to_dict() for name, model in models.items() if name != BASELINE}
    artifact_reason = None
    if args.model_name_or_path:
        model = load_model(config, args, device).optimize_for_inference(dtype=artifact_dtype(args.model_name_or_path))
        if model.inference_settings.artifact:
            models["artifact"] = model
            settings["artifact"] = model.inference_settings.to_dict()
        else:
            artifact_reason = "no exported artefact matching this machine next to the weights (python -m hub.export)"
    else:
        artifact_reason = "needs --model_name_or_path DIR with an exported artefact"

    # The artefact runs from tokens: without --with_text_encoder, fp32 eager is also timed from tokens as its baseline.
    runs = [(name, model, plain, args.with_text_encoder) for name, model in models.items() if name != "artifact"]
    if "artifact" in models:
        if not args.with_text_encoder:
            runs.append((BASELINE, reference, tokens, True))
        runs.append(("artifact", models["artifact"], tokens, True))
    with torch.inference_mode():
        references = {id(inputs): reference(**inputs).mask_logits.float().sigmoid() for inputs in (plain, tokens)}
    variants, errors = [], {}
    for name, model, inputs, text_encoder in runs:

        def call(model=model, inputs=inputs):
            with torch.inference_mode():
                return model(**inputs).mask_logits

        with torch.inference_mode():
            probabilities = call().float().sigmoid()
        errors[name, text_encoder] = float((probabilities - references[id(inputs)]).abs().max())
        fields = {"section": "fast_path", "variant": name, "batch_size": batch_size, "text_encoder": text_encoder}
        variants.append(Variant(fields, call))
    records = measure_variants(variants, args.warmup, args.iterations, device, memory)
    baseline = {True: None, False: None}
    for record in records:
        record["max_probability_error"] = errors[record["variant"], record["text_encoder"]]
        if record["variant"] == BASELINE and record["status"] == "ok":
            baseline[record["text_encoder"]] = record["latency_ms"]
    for record in records:
        base = baseline.get(record["text_encoder"])
        ok = record["status"] == "ok" and base is not None
        record["speedup_vs_fp32_eager"] = base / record["latency_ms"] if ok else None
    if artifact_reason:
        fields = {"section": "fast_path", "variant": "artifact", "batch_size": batch_size, "text_encoder": True}
        records.append(dict(fields, status="skipped", reason=artifact_reason))
    return records, settings


def format_fast_path(section: dict) -> list[str]:
    """Table lines of the fast-path section of a report."""
    lines = ["", "Inference fast path (ratios to fp32 eager of this run, same inputs):"]
    row = "  {:20} {:>5} {:4} {:>10} {:>8} {:>10}  {}"
    lines.append(row.format("variant", "batch", "text", "ms", "speed-up", "max |dp|", "status"))
    for record in section["measurements"]:
        text = "yes" if record["text_encoder"] else "no"
        if record["status"] != "ok":
            lines.append(row.format(record["variant"], record["batch_size"], text, "-", "-", "-", record["reason"]))
            continue
        speedup = record["speedup_vs_fp32_eager"]
        values = (f"{record['latency_ms']:.1f}", "-" if speedup is None else f"{speedup:.2f}x")
        error = f"{record['max_probability_error']:.1e}"
        lines.append(row.format(record["variant"], record["batch_size"], text, *values, error, "ok"))
    for name, settings in section["settings"].items():
        lines.append(f"  {name}: {settings}")
    lines += [format_cold_start(record) for record in section.get("cold_start", [])]
    return lines
