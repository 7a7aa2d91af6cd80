"""User-path section of the EPNG benchmark (`python -m training.benchmark --paths`): batch-1 latency of what a user
runs, at the benchmark's configuration (the paper's by default: 640 x 640 input and image), per inference setting.

Settings, each a model with the same weights (random, or `--model_name_or_path DIR`'s):

* `fp32_eager`: the model as `from_pretrained` gives it (the pipeline with `optimize=False`): the baseline;
* `fast_path`: `model.optimize_for_inference(use_artifact=False)`, the pipeline's default where no artefact exists;
* `fast_path_compiled` (with `--compile`): `optimize_for_inference(compile=True, use_artifact=False)`;
* `artifact` (with `--model_name_or_path DIR` holding an artefact of `python -m hub.export`): what the pipeline's
  default runs there.

Calls of each setting, interleaved with those of the other settings:

* `bare_model`: `model(**inputs)` on processor outputs made once (text encoder included, no pre/post-processing);
* `pipeline_given_phrases`: `grounder(image, narrative, phrases=spans)`: tokenisation, image processing, the forward,
  masks at the image's size as PIL images;
* `pipeline`: `grounder(image, narrative)`, which also finds the phrases with spaCy.

Each record gives the median latency and its ratio to the same call of `fp32_eager` (`speedup_vs_fp32_eager`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modeling_epng.inference import find_artifact

from .benchmark_fast_path import load_model
from .benchmark_pipeline import NARRATIVE
from .benchmark_timing import time_calls
from .offline_text_encoder import offline_text_encoder_path

BASELINE = "fp32_eager"
CALLS = ("bare_model", "pipeline_given_phrases", "pipeline")


def add_arguments(parser) -> None:
    parser.add_argument(
        "--paths",
        action="store_true",
        help="also time the bare model and the pipeline (with and without automatic phrases) per inference setting",
    )
    parser.add_argument(
        "--save_model",
        metavar="DIR",
        help="only save the benchmark's random model and a processor at --image_size to DIR (for hub.export and "
        "--model_name_or_path), then exit",
    )


def save_random_model(config, args) -> None:
    """`--save_model`: the random model of `--seed` and its processor, saved as a folder `from_pretrained` loads."""
    from modeling_epng import EpngForPanopticNarrativeGrounding

    torch.manual_seed(args.seed)
    EpngForPanopticNarrativeGrounding(config).save_pretrained(args.save_model)
    user_processor(config, args).save_pretrained(args.save_model)
    print(f"saved a random {config.model_type} model and its processor ({args.image_size} px) to {args.save_model}")


def user_processor(config, args):
    """The saved processor of `--model_name_or_path`, else one at `--image_size` with the offline MiniLM tokenizer."""
    from modeling_epng import EpngProcessor

    from .run_png import build_processor

    if args.model_name_or_path and Path(args.model_name_or_path, "processor_config.json").is_file():
        return EpngProcessor.from_pretrained(args.model_name_or_path)
    from transformers import AutoTokenizer

    tokenizer_path = offline_text_encoder_path(args.tokenizer)
    return build_processor(AutoTokenizer.from_pretrained(tokenizer_path), args.image_size, config.mask_threshold)


def _settings(config, args, device) -> tuple[dict, dict]:
    """The models of every setting (see the module docstring), and why a setting was skipped."""
    models = {BASELINE: load_model(config, args, device)}
    options = {"fast_path": {}, **({"fast_path_compiled": {"compile": True}} if args.compile else {})}
    for name, option in options.items():
        models[name] = load_model(config, args, device).optimize_for_inference(use_artifact=False, **option)
    skipped = {}
    if args.model_name_or_path:
        model = load_model(config, args, device).optimize_for_inference()
        if model.inference_settings.artifact:
            models["artifact"] = model
        else:
            skipped["artifact"] = (
                f"the pipeline's default does not run the artefact here: {find_artifact(model, None)[1]}"
            )
    else:
        skipped["artifact"] = "needs --model_name_or_path DIR with an exported artefact"
    return models, skipped


def user_path_latencies(config, args, device) -> list[dict]:
    """One record per setting and call (see the module docstring), plus one per skipped setting."""
    from transformers import pipeline

    from modeling_epng.phrase_extraction import extract_phrase_spans
    from modeling_epng.pipeline_epng import TASK

    processor = user_processor(config, args)
    size = processor.image_processor.size
    pixels = np.random.default_rng(args.seed).integers(0, 256, size=(size["height"], size["width"], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    spans = extract_phrase_spans(NARRATIVE)
    inputs = processor(images=image, text=NARRATIVE, phrases=spans).to(device)
    models, skipped = _settings(config, args, device)
    calls = {}
    for name, model in models.items():
        grounder = pipeline(TASK, model=model, processor=processor, device=device, optimize=False)

        def bare_model(model=model):
            with torch.inference_mode():
                return model(**inputs).mask_logits

        calls[name, "bare_model"] = bare_model
        calls[name, "pipeline_given_phrases"] = lambda grounder=grounder: grounder(image, NARRATIVE, phrases=spans)
        calls[name, "pipeline"] = lambda grounder=grounder: grounder(image, NARRATIVE)
    for _ in range(args.warmup):
        for call in calls.values():
            call()
    latencies = time_calls(calls, args.iterations, device)
    medians = {key: statistics.median(values) for key, values in latencies.items()}
    records = []
    for (name, call), median in medians.items():
        settings = getattr(models[name], "inference_settings", None)
        records.append(
            {
                "setting": name,
                "call": call,
                "status": "ok",
                "latency_ms": median,
                "speedup_vs_fp32_eager": medians[BASELINE, call] / median,
                "latencies_ms": latencies[name, call],
                "inference_settings": settings.to_dict() if settings is not None else None,
                "image_size": [size["width"], size["height"]],
                "num_phrases": len(spans),
                "num_tokens": int(inputs["attention_mask"].sum()),
            }
        )
    records += [{"setting": name, "status": "skipped", "reason": reason} for name, reason in skipped.items()]
    return records


def format_user_paths(records: list[dict]) -> list[str]:
    """Table lines of the user-path section of a report."""
    first = records[0]
    lines = [
        "",
        f"User paths, batch 1 ({first['image_size'][0]}x{first['image_size'][1]} image = input, "
        f"{first['num_phrases']} phrases, {first['num_tokens']} tokens; medians; speed-up = fp32 eager / setting):",
    ]
    row = "  {:20} " + " ".join("{:>24}" for _ in CALLS)
    lines.append(row.format("setting", *CALLS))
    cells = {}
    for record in records:
        if record["status"] == "ok":
            value = f"{record['latency_ms']:.1f} ms {record['speedup_vs_fp32_eager']:.2f}x"
            cells.setdefault(record["setting"], {})[record["call"]] = value
    lines += [row.format(setting, *(values.get(call, "-") for call in CALLS)) for setting, values in cells.items()]
    lines += [f"  {r['setting']:20} skipped: {r['reason']}" for r in records if r["status"] != "ok"]
    return lines
