"""Speed and memory benchmark of EPNG, run as `python -m training.benchmark`.

The model is the paper configuration (`EpngConfig()`: ResNet-101 + FPN, BERT-base, 3 communicator layers of width
768, 640 x 640 inputs, 20 phrases) with random weights: speed does not depend on the values. `--tiny` swaps in a
tiny configuration at 64 px for smoke tests. Sections (each a list of records in the JSON output):

* `inference`: latency, images/s and peak memory per batch size x dtype (fp32 / bf16 autocast) x LPA implementation
  (explicit / flex) x eager / `torch.compile` x without / with the text encoder, under `torch.inference_mode`.
  Without the text encoder the model gets `phrase_features`; with it, ~250 tokens per sample through BERT-base.
* `lpa`: the Locality-Perceptive Attention module alone on the H/16 x W/16 tokens (when several `--lpa` are given).
* `training` (`--training`): forward + loss + backward + Adam step on 640 px inputs with random mask targets.
* `processor` (`--processor`): `EpngProcessor` samples/s per data-loading worker on COCO-sized JPEGs with panoptic
  PNG targets (decoding included), with one torch thread as in a `DataLoader` worker.
* `pipeline` (`--pipeline`): the `panoptic-narrative-grounding` pipeline (noun phrases, processing, forward,
  post-processing) against the bare forward of the demo model at 224 px; see `training/benchmark_pipeline.py`.
* `paths` (`--paths`): batch-1 latency of the bare model and of the pipeline (with and without automatic phrases)
  at the benchmark's size, per inference setting (fp32 eager, fast path, compiled, artefact); see
  `training/benchmark_paths.py`.
* `kernels` (`--kernels`, CPU): GFLOP/s of the paper model's main linear and convolution shapes in fp32, bf16 and
  (matrix product) int8, and each dtype's speed-up over fp32: the ceiling of a whole-model ratio on this CPU; see
  `training/benchmark_kernels.py`.
* `breakdown` (`--breakdown`): per-part forward time (backbone, FPN + fusion, text encoder, communicator, head).
* `profile` (`--profile`): torch.profiler's top-10 operators of one forward.

Every comparison (flex/explicit, bf16/fp32, compiled/eager, with/without text encoder) is reported as a latency
ratio of two measurements of the same run. Combinations the device cannot run are reported as skipped, with why.
How time and memory are measured on CPU and CUDA: see `training/benchmark_timing.py`. On a shared CPU pass
`--threads 1`: OpenMP threads of one process wait on each other while other processes hold the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import transformers

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding
from modeling_epng.attention import EpngLocalityPerceptiveAttention, flex_fallback_reason
from modeling_epng.configuration_epng import check_input_size

from . import benchmark_paths
from .benchmark_fast_path import add_arguments, check_arguments, fast_path_section, instruction_sets
from .benchmark_kernels import kernel_throughput
from .benchmark_pipeline import pipeline_overhead
from .benchmark_processor import processor_throughput
from .benchmark_report import device_name, format_report
from .benchmark_timing import PeakMemory, Variant, autocast, latency_ratios, measure_variants, synchronize

# 16 channels per head: the least the GPU flex kernel takes
TINY_CONFIG_OVERRIDES = {"num_attention_heads": 3}
# Defaults of the options left unset: the paper's sizes, then per device (a 2-core CPU cannot afford the GPU grid),
# then --tiny.
DEFAULTS = {
    "paper": {"image_size": 640, "num_phrases": 20, "num_tokens": 250, "processor_image_size": [640, 480]},
    "cuda": {"batch_sizes": [1, 12, 32], "train_batch_sizes": [32], "iterations": 20, "warmup": 5},
    "cpu": {"batch_sizes": [1], "train_batch_sizes": [1], "iterations": 3, "warmup": 1},
    "tiny": {
        "batch_sizes": [1, 2],
        "train_batch_sizes": [2],
        "iterations": 2,
        "warmup": 1,
        "image_size": 64,
        "num_phrases": 4,
        "num_tokens": 24,
        "processor_image_size": [80, 60],
    },
}


def unsupported_reason(
    device: torch.device, dtype: str, lpa: str, training: bool, attention: EpngLocalityPerceptiveAttention
) -> str | None:
    """Why a combination cannot run on `device` with this LPA layer's settings, or None when it can."""
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "bf16 is not supported by this GPU (needs compute capability >= 8.0)"
    dropout = attention.attention_dropout if training else 0.0
    fallback = flex_fallback_reason(device.type, attention.head_dim, training, dropout) if lpa == "flex" else None
    return None if fallback is None else f"{fallback} (the model would fall back to the explicit path)"


def lpa_modules(model: torch.nn.Module) -> list[EpngLocalityPerceptiveAttention]:
    return [module for module in model.modules() if isinstance(module, EpngLocalityPerceptiveAttention)]


def set_lpa_implementation(modules: list[EpngLocalityPerceptiveAttention], implementation: str) -> None:
    """Switch explicit/flex on the same weights (`EpngConfig.lpa_implementation` is read once, at construction)."""
    for module in modules:
        module.implementation = implementation


def make_inputs(config: EpngConfig, batch_size: int, args, with_text: bool, device, training: bool = False) -> dict:
    """Random model inputs: pixel values, and phrase features or `num_tokens` tokens with 3-token phrase spans."""
    size, num_phrases = args.image_size, args.num_phrases
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    inputs = {
        "pixel_values": torch.randn(batch_size, 3, size, size, device=device).to(memory_format=memory_format),
        "phrase_mask": torch.ones(batch_size, num_phrases, dtype=torch.bool, device=device),
    }
    text_config = config.text_config
    if with_text:
        inputs["input_ids"] = torch.randint(1000, text_config.vocab_size, (batch_size, args.num_tokens), device=device)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        phrase_ids = torch.full((args.num_tokens,), -1, dtype=torch.long, device=device)
        stride = (args.num_tokens - 2) // num_phrases  # phrases spread over the narrative, after [CLS]
        for phrase in range(num_phrases):
            phrase_ids[1 + phrase * stride : 4 + phrase * stride] = phrase
        inputs["phrase_ids"] = phrase_ids.expand(batch_size, -1).contiguous()
    else:
        inputs["phrase_features"] = torch.randn(batch_size, num_phrases, text_config.hidden_size, device=device)
    if training:  # blob-like 0/1 targets at the input size, as the collator gives them
        blocks = torch.rand(batch_size, num_phrases, size // 32, size // 32, device=device) < 0.3
        inputs["mask_labels"] = blocks.repeat_interleave(32, dim=2).repeat_interleave(32, dim=3).float()
    return inputs


def inference_step(runner, inputs: dict, device: torch.device, dtype: str):
    with torch.inference_mode(), autocast(device, dtype):
        return runner(**inputs).mask_logits


def training_step(runner, inputs: dict, device: torch.device, dtype: str, optimizer: torch.optim.Optimizer):
    with autocast(device, dtype):  # forward only: backward runs each op in its forward dtype anyway
        loss = runner(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def section_variants(section: str, model, compiled_model, batch_sizes, make_batch, step, args, device) -> list:
    """Every combination of a section: batch size x text encoder x eager/compiled x dtype x LPA (the compared
    factors vary fastest, so a ratio's two sides run next to each other).

    Args:
        model, compiled_model: the module to run and its `torch.compile` wrapper (None without `--compile`).
        make_batch: `(batch_size, with_text) -> inputs`, built once per batch size.
        step: `(runner, inputs, device, dtype) -> output`, one timed iteration.
    """
    modules = lpa_modules(model)
    text_options = (False, True) if args.with_text_encoder and section != "lpa" else (False,)
    variants = []
    for batch_size in batch_sizes:
        batches = {with_text: make_batch(batch_size, with_text) for with_text in text_options}
        for text_encoder in text_options:
            for compiled in (False, True) if args.compile else (False,):
                for dtype in args.dtypes:
                    for lpa in args.lpa:
                        settings = {
                            "section": section,
                            "batch_size": batch_size,
                            "dtype": dtype,
                            "lpa": lpa,
                            "compiled": compiled,
                            "text_encoder": text_encoder,
                        }

                        def call(settings=settings, inputs=batches[text_encoder]):
                            set_lpa_implementation(modules, settings["lpa"])
                            runner = compiled_model if settings["compiled"] else model
                            return step(runner, inputs, device, settings["dtype"])

                        reason = unsupported_reason(device, dtype, lpa, section == "training", modules[0])
                        variants.append(Variant(settings, call, reason))
    return variants


def part_breakdown(model, config, args, device, lpa: str) -> dict[str, float]:
    """Median ms per part of the eager fp32 forward at the first batch size, timed by forward hooks (which
    synchronize on CUDA). FPN + fusion = visual encoder - backbone; head = the rest (phrase projection, 4x
    upsampling, the per-phrase 1x1 products, input checks)."""
    parts = {
        "backbone": model.visual_encoder.backbone,
        "visual_encoder": model.visual_encoder,
        "communicator": model.communicator,
    }
    if args.with_text_encoder:
        parts["text_encoder"] = model.phrase_encoder.text_encoder
    starts, durations = {}, {name: [] for name in [*parts, "total"]}
    handles = []
    for name, module in parts.items():

        def before(_module, _inputs, name=name):
            synchronize(device)
            starts[name] = time.perf_counter()

        def after(_module, _inputs, _output, name=name):
            synchronize(device)
            durations[name].append((time.perf_counter() - starts[name]) * 1000)

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    set_lpa_implementation(lpa_modules(model), lpa)
    inputs = make_inputs(config, args.batch_sizes[0], args, args.with_text_encoder, device)
    try:
        with torch.inference_mode():
            for _ in range(args.warmup + args.iterations):
                synchronize(device)
                start = time.perf_counter()
                model(**inputs)
                synchronize(device)
                durations["total"].append((time.perf_counter() - start) * 1000)
    finally:
        for handle in handles:
            handle.remove()
    median = {name: statistics.median(values[args.warmup :]) for name, values in durations.items()}
    breakdown = {
        "backbone": median["backbone"],
        "fpn_fusion": median["visual_encoder"] - median["backbone"],
        "communicator": median["communicator"],
    }
    if args.with_text_encoder:
        breakdown["text_encoder"] = median["text_encoder"]
    breakdown["head_and_rest"] = median["total"] - sum(breakdown.values())
    breakdown["total"] = median["total"]
    return {"lpa": lpa, "batch_size": args.batch_sizes[0], "parts_ms": breakdown}


def operator_profile(model, config, args, device) -> dict:
    """torch.profiler's top-10 operators (by self device time) of one eager forward at the first batch size and dtype
    and the first LPA implementation."""
    from torch.profiler import ProfilerActivity, profile

    set_lpa_implementation(lpa_modules(model), args.lpa[0])
    inputs = make_inputs(config, args.batch_sizes[0], args, args.with_text_encoder, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), autocast(device, args.dtypes[0]):
        for _ in range(args.warmup):
            model(**inputs)
        with profile(activities=activities) as profiler:
            model(**inputs)
            synchronize(device)
    averages = profiler.key_averages()
    time_field = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total_us = sum(getattr(event, time_field) for event in averages)
    top = sorted(averages, key=lambda event: getattr(event, time_field), reverse=True)[:10]
    return {
        "lpa": args.lpa[0],
        "batch_size": args.batch_sizes[0],
        "dtype": args.dtypes[0],
        "sort_by": time_field,
        "operators": [
            {
                "name": event.key,
                "calls": event.count,
                "self_time_ms": getattr(event, time_field) / 1000,
                "share": getattr(event, time_field) / max(total_us, 1),
            }
            for event in top
        ],
        "table": averages.table(sort_by=time_field, row_limit=10),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    parser.add_argument("--batch_sizes", type=int, nargs="+", help="inference batch sizes (cuda: 1 12 32, cpu: 1)")
    parser.add_argument("--image_size", type=int, help="square input side, a multiple of 32 (640)")
    parser.add_argument("--num_phrases", type=int, help="phrases per sample (20)")
    parser.add_argument("--num_tokens", type=int, help="narrative tokens per sample with the text encoder (250)")
    parser.add_argument(
        "--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32"], help="fp32 and/or bf16 autocast (fp32)"
    )
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile on CPU)")
    parser.add_argument(
        "--lpa",
        nargs="+",
        choices=["explicit", "flex"],
        default=["explicit"],
        help="LPA implementations (explicit); two of them also time the LPA module alone",
    )
    parser.add_argument(
        "--channels_last", action="store_true", help="convolutions in channels-last layout (faster bf16 on GPU)"
    )
    parser.add_argument("--with_text_encoder", action="store_true", help="also measure with the text encoder")
    parser.add_argument("--training", action="store_true", help="also measure the training step")
    parser.add_argument("--train_batch_sizes", type=int, nargs="+", help="training batch sizes (cuda: 32, cpu: 1)")
    parser.add_argument(
        "--skip_inference", action="store_true", help="skip the inference section (e.g. with --training only)"
    )
    parser.add_argument("--processor", action="store_true", help="also measure EpngProcessor throughput")
    parser.add_argument("--processor_samples", type=int, default=16, help="timed processor samples (16)")
    parser.add_argument(
        "--processor_image_size",
        type=int,
        nargs=2,
        metavar=("WIDTH", "HEIGHT"),
        help="size of the synthetic COCO images (640 480)",
    )
    parser.add_argument(
        "--tokenizer", metavar="FOLDER", help="folder of a fast BERT tokenizer (default: the offline MiniLM package)"
    )
    parser.add_argument(
        "--pipeline", action="store_true", help="also measure the pipeline against the bare forward (demo model)"
    )
    parser.add_argument("--pipeline_iterations", type=int, default=20, help="timed pipeline iterations (20)")
    parser.add_argument(
        "--pipeline_image_size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"), help="image size (the input size)"
    )
    parser.add_argument(
        "--kernels", action="store_true", help="also time the main operators in fp32 / bf16 / int8 (CPU)"
    )
    parser.add_argument("--breakdown", action="store_true", help="also time the model's parts")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top-10 operators")
    parser.add_argument("--iterations", type=int, help="timed iterations (cuda: 20, cpu: 3)")
    parser.add_argument("--warmup", type=int, help="untimed warm-up iterations, >= 1 (cuda: 5, cpu: 1)")
    parser.add_argument("--json", metavar="PATH", help="write the report to this JSON file")
    parser.add_argument("--tiny", action="store_true", help="tiny config at 64 px: a smoke test, not a benchmark")
    parser.add_argument("--threads", type=int, help="torch CPU threads (torch's default: one per core)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (0)")
    add_arguments(parser)
    benchmark_paths.add_arguments(parser)
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    defaults = {**DEFAULTS["paper"], **DEFAULTS[args.device], **(DEFAULTS["tiny"] if args.tiny else {})}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.warmup < 1 or args.iterations < 1:
        parser.error("--warmup and --iterations must be >= 1 (the last warm-up iteration measures memory)")
    try:
        check_input_size(args.image_size, args.image_size, "--image_size (height and width)")
    except ValueError as error:
        parser.error(str(error))
    if args.with_text_encoder and args.num_tokens < 3 * args.num_phrases + 2:
        parser.error("--num_tokens must hold 3 tokens per phrase plus [CLS] and [SEP]")
    return args


def build_model(config: EpngConfig, device: torch.device, training: bool, args):
    """A randomly initialised model in train or eval mode, and its `torch.compile` wrapper when asked."""
    model = EpngForPanopticNarrativeGrounding(config).to(device).train(training)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not args.compile:
        return model, None
    # One graph per batch size x dtype x LPA x text encoder: lift dynamo's default limit of 8 recompilations.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 128)
    return model, torch.compile(model)


def inference_measurements(model, compiled_model, config: EpngConfig, args, device, measure) -> list[dict]:
    """The `inference` section, and the `lpa` section (the first communicator layer's LPA on (B, h * w, C) pixel
    tokens) when several LPA implementations are compared."""

    def model_batch(batch_size, with_text):
        return make_inputs(config, batch_size, args, with_text, device)

    sizes = args.batch_sizes
    measurements = measure(
        section_variants("inference", model, compiled_model, sizes, model_batch, inference_step, args, device)
    )
    if len(args.lpa) > 1:
        module = lpa_modules(model)[0]
        grid = (args.image_size // 16, args.image_size // 16)

        def token_batch(batch_size, _with_text):
            return torch.randn(batch_size, grid[0] * grid[1], config.hidden_size, device=device)

        def lpa_step(runner, tokens, device, dtype):
            with torch.inference_mode(), autocast(device, dtype):
                return runner(tokens, grid)[0]

        compiled_module = torch.compile(module) if args.compile else None
        measurements += measure(
            section_variants("lpa", module, compiled_module, sizes, token_batch, lpa_step, args, device)
        )
    return measurements


def training_measurements(config: EpngConfig, args, device, measure) -> list[dict]:
    """The `training` section, on a fresh model: no state of the inference runs (caches made under inference_mode,
    compiled graphs); one Adam optimizer serves every variant (its state counts in the memory)."""
    model, compiled_model = build_model(config, device, training=True, args=args)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def train_batch(batch_size, with_text):
        return make_inputs(config, batch_size, args, with_text, device, training=True)

    def train_step(runner, inputs, device, dtype):
        return training_step(runner, inputs, device, dtype, optimizer)

    sizes = args.train_batch_sizes
    return measure(section_variants("training", model, compiled_model, sizes, train_batch, train_step, args, device))


def run(argv=None) -> dict:
    """Run the benchmark; print the tables, write the JSON report if asked, and return the report."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    config = EpngConfig.tiny(**TINY_CONFIG_OVERRIDES) if args.tiny else EpngConfig()
    if args.save_model:
        benchmark_paths.save_random_model(config, args)
        return {}
    model, compiled_model = build_model(config, device, training=False, args=args)
    memory = PeakMemory(device)
    report = {
        "device": device_name(device),
        "device_type": device.type,
        "instruction_sets": instruction_sets(device),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "cuda_version": torch.version.cuda,
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "settings": vars(args),
        "image_size": args.image_size,
        "num_phrases": args.num_phrases,
        "config": config.to_diff_dict(),
        "parameters": model.parameter_report(),
        "memory_method": memory.method,
        "timing_method": "cuda_events" if device.type == "cuda" else "perf_counter_interleaved",
    }

    def measure(variants):
        return measure_variants(variants, args.warmup, args.iterations, device, memory)

    measurements = (
        [] if args.skip_inference else inference_measurements(model, compiled_model, config, args, device, measure)
    )
    if args.fast_path:
        report["fast_path"] = fast_path_section(config, args, device, memory)
    if args.paths:
        report["paths"] = benchmark_paths.user_path_latencies(config, args, device)
    if args.breakdown:
        report["breakdown"] = [part_breakdown(model, config, args, device, lpa) for lpa in args.lpa]
    if args.profile:
        report["profile"] = operator_profile(model, config, args, device)
    del model, compiled_model
    if args.processor:
        sample_size, samples = args.processor_image_size, args.processor_samples
        report["processor"] = processor_throughput(
            args.image_size, sample_size, args.num_phrases, samples, args.warmup, args.tokenizer
        )
    if args.pipeline:
        report["pipeline"] = pipeline_overhead(
            args.tiny,
            args.tokenizer,
            device,
            args.warmup,
            args.pipeline_iterations,
            args.pipeline_image_size,
            args.seed,
        )
    if args.kernels:
        report["kernels"] = kernel_throughput(args.tiny, args.warmup, args.iterations, args.seed)
    if args.training:
        measurements += training_measurements(config, args, device, measure)
    report.update(measurements=measurements, ratios=latency_ratios(measurements))
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2, default=str)
    return report


def main(argv=None) -> None:
    """Console entry point: `run` without its result (a console script exits with what it returns; a dict is 1)."""
    run(argv)


if __name__ == "__main__":
    main()
