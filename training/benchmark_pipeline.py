"""Pipeline section of the EPNG benchmark (`training/benchmark.py --pipeline`): what the
`panoptic-narrative-grounding` pipeline adds to the bare model forward.

Model: the demo's (`training/demo.py`: 4-stage ResNet, MiniLM-L6 text encoder, 2 communicator layers of 96-d) with
random weights, at the demo's 224 x 224 input; `--tiny` swaps in `EpngConfig.tiny()` at 64 px. Each timed iteration
runs, interleaved:

* `bare_forward`: `model(**inputs)` on inputs the processor made once (under `torch.inference_mode`);
* `pipeline`: `grounder(image, narrative, parse_in_background=False)` on a PIL image: spaCy noun phrases,
  tokenisation, image processing, the same forward, post-processing to masks at the image's size and PIL masks; the
  cache of parsed narratives is cleared before each call, so the narrative is parsed as a new one;
* `pipeline_background_parse`: the same with the narrative parsed in the pipeline's child process while the text
  encoder runs (`parse_in_background=True`, the default on two or more cores). When this process is pinned to some
  cores (`taskset`), the child is moved to the others, as it would have a spare core of its own;
* `pipeline_repeated_narrative`: the same with the narrative's spans in that cache (grounded again: another image or
  threshold);
* `pipeline_given_phrases`: the same with the phrases given as spans (no parsing); its pipeline steps (preprocess,
  forward with the model's forward inside, postprocess) are timed too;
* `phrase_parsing`: the spaCy part alone (`extract_phrase_spans`, cache cleared).

Two settings: the model as built (fp32 eager, `optimize=False`) and after `model.optimize_for_inference()` (the
pipeline's default); the bare forward runs the same (optimised or not) model. Overhead = pipeline / bare - 1, from the
medians. On a shared CPU pass `--threads 1` (see `training/benchmark.py`).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch
from PIL import Image

from .benchmark_timing import time_calls
from .offline_text_encoder import offline_text_encoder_path

# A narrative in the Localized Narratives style: 57 words, 15 automatic phrases.
NARRATIVE = (
    "In this image we can see a woman holding an umbrella and a bag. She is wearing a black jacket and blue jeans. "
    "Behind her there are a few cars parked on the road. On the left side there is a pole and a dustbin. In the "
    "background there are trees, buildings and the sky with clouds."
)
DEMO_IMAGE_SIZE = 224
TINY_IMAGE_SIZE = 64


def _build(tiny: bool, tokenizer_path: str, device: torch.device, optimize: bool, seed: int):
    """A random model and its processor (the demo's or the tiny one), optimised for inference when asked."""
    from transformers import AutoTokenizer

    from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding
    from training.demo import demo_config
    from training.run_png import build_processor

    torch.manual_seed(seed)
    config = EpngConfig.tiny() if tiny else demo_config(tokenizer_path)
    model = EpngForPanopticNarrativeGrounding(config).to(device).eval()
    if optimize:
        model.optimize_for_inference()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    processor = build_processor(tokenizer, TINY_IMAGE_SIZE if tiny else DEMO_IMAGE_SIZE, config.mask_threshold)
    return model, processor


class _PhaseTimer:
    """Times the preprocess, forward (the model's forward inside) and postprocess steps of the pipeline calls made
    inside `with timer:`, in ms, into `phases`."""

    def __init__(self, grounder):
        self.active = False
        self.phases = {"preprocess": [], "forward": [], "postprocess": []}
        for name in self.phases:
            setattr(grounder, name, self._timed(name, getattr(grounder, name)))

    def _timed(self, name, step):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = step(*args, **kwargs)
            if self.active:
                self.phases[name].append((time.perf_counter() - start) * 1000)
            return result

        return timed

    def __enter__(self):
        self.active = True

    def __exit__(self, *exc_info):
        self.active = False


def _timed_steps(timer: _PhaseTimer, call):
    """`call` with the steps of its pipeline call timed by `timer`."""

    def timed_call():
        with timer:
            return call()

    return timed_call


def _parsing_anew(call):
    """`call` with the cache of parsed narratives cleared first, so that its narrative is parsed as a new one."""
    from modeling_epng.phrase_extraction import clear_phrase_cache

    def clear_and_call():
        clear_phrase_cache()
        return call()

    return clear_and_call


def pipeline_overhead(
    tiny: bool,
    tokenizer_path: str | None,
    device: torch.device,
    warmup: int,
    iterations: int,
    image_size: tuple[int, int] | None = None,
    seed: int = 0,
) -> list[dict]:
    """
    Latency of the pipeline and of the bare forward of the same model, per setting (see the module docstring).

    Args:
        tiny: the tiny config at 64 px instead of the demo model at 224 px.
        tokenizer_path: folder of a fast BERT tokenizer (and, for the demo model, its text encoder's config);
            defaults to the offline MiniLM package.
        device: where the model runs.
        warmup, iterations: untimed and timed iterations.
        image_size: `(width, height)` of the image given to the pipeline; defaults to the model's input size.
        seed: seed of the random weights and image.

    Returns:
        One record per setting (`optimized` False/True): median latencies in ms of `bare_forward`, `pipeline`,
        `pipeline_background_parse`, `pipeline_repeated_narrative`, `pipeline_given_phrases` and `phrase_parsing`,
        `overhead` (pipeline / bare - 1), `overhead_background_parse`, `overhead_repeated_narrative`,
        `overhead_given_phrases`, `given_phrases_steps_ms` (median ms of the preprocess, forward and postprocess
        steps of the given-phrases call), the number of phrases and tokens, and every latency.
    """
    from transformers import pipeline

    from modeling_epng.background_parsing import background_phrase_parser
    from modeling_epng.phrase_extraction import extract_phrase_spans
    from modeling_epng.pipeline_epng import TASK

    tokenizer_path = offline_text_encoder_path(tokenizer_path)
    side = TINY_IMAGE_SIZE if tiny else DEMO_IMAGE_SIZE
    width, height = image_size or (side, side)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    spans = extract_phrase_spans(NARRATIVE)
    parser = background_phrase_parser()
    if not parser.wait_until_ready(timeout=120):
        raise RuntimeError("the background phrase parser did not start (is spaCy with an English pipeline installed?)")
    own_cores = os.sched_getaffinity(0)
    spare_cores = set(range(os.cpu_count() or 1)) - own_cores
    if spare_cores:
        os.sched_setaffinity(parser.pid, spare_cores)
    records = []
    for optimized in (False, True):
        model, processor = _build(tiny, tokenizer_path, device, optimized, seed)
        grounder = pipeline(TASK, model=model, processor=processor, device=device, optimize=False)
        timer = _PhaseTimer(grounder)
        inputs = processor(images=image, text=NARRATIVE, phrases=spans).to(device)

        def bare_forward(model=model, inputs=inputs):
            with torch.inference_mode():
                return model(**inputs).mask_logits

        calls = {
            "bare_forward": bare_forward,
            "pipeline": _parsing_anew(lambda grounder=grounder: grounder(image, NARRATIVE, parse_in_background=False)),
            "pipeline_background_parse": _parsing_anew(
                lambda grounder=grounder: grounder(image, NARRATIVE, parse_in_background=True)
            ),
            "pipeline_repeated_narrative": lambda grounder=grounder: grounder(image, NARRATIVE),
            "pipeline_given_phrases": _timed_steps(
                timer, lambda grounder=grounder: grounder(image, NARRATIVE, phrases=spans)
            ),
            "phrase_parsing": _parsing_anew(lambda: extract_phrase_spans(NARRATIVE)),
        }
        for _ in range(warmup):
            for call in calls.values():
                call()
        for phase_latencies in timer.phases.values():
            phase_latencies.clear()  # the warm-up calls
        latencies = time_calls(calls, iterations, device)
        medians = {name: statistics.median(values) for name, values in latencies.items()}
        records.append(
            {
                "optimized": optimized,
                "inference_settings": model.inference_settings.to_dict() if optimized else None,
                "model": "tiny" if tiny else "demo",
                "input_size": processor.image_processor.size["height"],
                "image_size": [width, height],
                "num_phrases": len(spans),
                "num_tokens": int(inputs["attention_mask"].sum()),
                **{f"{name}_ms": value for name, value in medians.items()},
                "overhead": medians["pipeline"] / medians["bare_forward"] - 1.0,
                "overhead_background_parse": medians["pipeline_background_parse"] / medians["bare_forward"] - 1.0,
                "overhead_repeated_narrative": medians["pipeline_repeated_narrative"] / medians["bare_forward"] - 1.0,
                "overhead_given_phrases": medians["pipeline_given_phrases"] / medians["bare_forward"] - 1.0,
                "given_phrases_steps_ms": {name: statistics.median(values) for name, values in timer.phases.items()},
                "latencies_ms": latencies,
            }
        )
    return records


def format_pipeline_overhead(records: list[dict]) -> list[str]:
    """Lines of the benchmark report for the pipeline section."""
    first = records[0]
    lines = [
        "",
        f"Pipeline vs bare forward ({first['model']} model, {first['input_size']} px input, "
        f"{first['image_size'][0]}x{first['image_size'][1]} image, {first['num_phrases']} phrases, "
        f"{first['num_tokens']} tokens; medians):",
    ]
    for record in records:
        mode = "optimize_for_inference" if record["optimized"] else "fp32 eager"
        lines.append(
            f"  {mode:23} bare {record['bare_forward_ms']:8.1f} ms  pipeline {record['pipeline_ms']:8.1f} ms  "
            f"overhead {100 * record['overhead']:+6.1f}%  (parsed in the background "
            f"{100 * record['overhead_background_parse']:+6.1f}%; repeated narrative "
            f"{100 * record['overhead_repeated_narrative']:+6.1f}%; given phrases "
            f"{100 * record['overhead_given_phrases']:+6.1f}%; spaCy parsing {record['phrase_parsing_ms']:.1f} ms)"
        )
        steps = record["given_phrases_steps_ms"]
        lines.append(
            f"  {'':23} given phrases: preprocess {steps['preprocess']:.2f} ms, forward {steps['forward']:.2f} ms, "
            f"postprocess {steps['postprocess']:.2f} ms"
        )
    return lines


__all__ = ["NARRATIVE", "format_pipeline_overhead", "pipeline_overhead"]
