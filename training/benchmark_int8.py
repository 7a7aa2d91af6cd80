"""int8 post-training quantisation of EPNG compiled in the process, measured (the shipped int8 setting is the artefact
of `python -m hub.export --dtype int8`, see `hub/quantize.py`): PT2E with torchao's
`X86InductorQuantizer` (convolutions and linears: int8 weights per channel, int8 activations per tensor from
calibration), compiled by Inductor with freezing, optionally with bf16 autocast for what stays in floating point.

    # masks against fp32 on a trained model: calibrated on validation batches, compared on the next ones
    python -m training.benchmark_int8 --model_name_or_path outputs/demo/model --dataset outputs/demo/png_dataset
    # speed at the paper configuration (random weights, 640 x 640, 20 phrases, batch 1), int8 and int8 + bf16
    python -m training.benchmark_int8 --speed

The bare model runs from phrase features (the text encoder's pooled output, computed in fp32), as the benchmark's
fast-path section does. `--time_on_core N --lock PATH` compile on the cores the process was started on, then move
the process to core N and take an exclusive lock on PATH for the timed calls only (a shared machine's timing core).
Needs torchao (`pip install torchao`), which is not a dependency of this package.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import time

import torch

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding


class PhraseFeatureForward(torch.nn.Module):
    """The model from pixel values, phrase features and phrase mask to mask logits (what gets exported)."""

    def __init__(self, model: EpngForPanopticNarrativeGrounding):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, phrase_features, phrase_mask):
        return self.model(
            pixel_values=pixel_values, phrase_features=phrase_features, phrase_mask=phrase_mask
        ).mask_logits


def quantize(model: EpngForPanopticNarrativeGrounding, calibration: list[dict], mixed_bf16: bool):
    """Export on the first calibration batch (static shapes), insert observers, calibrate, convert, compile."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as error:
        raise SystemExit(f"the int8 benchmark needs torchao (pip install torchao): {error}") from error

    # Freezing folds the weights into the graph, which lets Inductor prepack them for oneDNN's int8 kernels. It is set
    # for the whole process: patched around the first call only, int8 ran at 1.2x fp32 eager instead of 2.5x.
    torch._inductor.config.freezing = True
    bare = PhraseFeatureForward(model.eval())
    with torch.no_grad():  # an inference graph: no autograd state on the weights that freezing must keep
        exported = torch.export.export(bare, args=(), kwargs=calibration[0]).module()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(**batch)
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    compiled = torch.compile(converted)

    def call(**inputs):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed_bf16):
            return compiled(**inputs).float()

    call(**calibration[0])  # compiles
    return call


def mask_ious(logits, reference, phrase_mask, threshold: float) -> torch.Tensor:
    """IoU of the thresholded masks per real phrase (1 where both are empty)."""
    actual, expected = logits.sigmoid()[phrase_mask] > threshold, reference.sigmoid()[phrase_mask] > threshold
    intersection = (actual & expected).sum((-1, -2)).float()
    union = (actual | expected).sum((-1, -2)).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def validation_batches(model, model_dir: str, dataset_dir: str, batch_size: int, num_batches: int, num_phrases: int):
    """Phrase-feature batches of the validation split, padded to `num_phrases` slots (static shapes for export)."""
    import datasets

    from modeling_epng import EpngProcessor
    from processing.collate import EpngCollator

    collator = EpngCollator(EpngProcessor.from_pretrained(model_dir), return_targets=False, model_inputs_only=True)
    validation = datasets.load_dataset(dataset_dir)["validation"]
    if len(validation) < batch_size * num_batches:
        raise SystemExit(
            f"{dataset_dir} has {len(validation)} validation narratives, {batch_size * num_batches} needed"
        )
    batches = []
    for start in range(0, batch_size * num_batches, batch_size):
        batch = collator([validation[index] for index in range(start, start + batch_size)])
        count = batch["phrase_mask"].shape[1]
        if count > num_phrases:
            raise SystemExit(f"a batch has {count} phrases, more than --num_phrases {num_phrases}")
        with torch.inference_mode():
            pooled = model.phrase_encoder.pool_phrases(
                batch["input_ids"], batch["attention_mask"], batch["phrase_ids"], count
            )
        features = torch.zeros(batch_size, num_phrases, pooled.shape[-1])
        features[:, :count] = pooled
        phrase_mask = torch.zeros(batch_size, num_phrases, dtype=torch.bool)
        phrase_mask[:, :count] = batch["phrase_mask"]
        batches.append({"pixel_values": batch["pixel_values"], "phrase_features": features, "phrase_mask": phrase_mask})
    return batches


def mask_agreement(args) -> dict:
    model = EpngForPanopticNarrativeGrounding.from_pretrained(args.model_name_or_path).eval()
    batches = validation_batches(
        model, args.model_name_or_path, args.dataset, args.batch_size, 2 * args.calibration_batches, args.num_phrases
    )
    calibration, held_out = batches[: args.calibration_batches], batches[args.calibration_batches :]
    bare, results = PhraseFeatureForward(model), {}
    for name, mixed_bf16 in (("int8", False), ("int8_bf16", True)):
        start = time.monotonic()
        call = quantize(model, calibration, mixed_bf16)
        ious, errors = [], []
        for batch in held_out:
            with torch.no_grad():
                reference = bare(**batch)
            logits = call(**batch)
            ious.append(mask_ious(logits, reference, batch["phrase_mask"], model.config.mask_threshold))
            errors.append(float((logits.sigmoid() - reference.sigmoid())[batch["phrase_mask"]].abs().max()))
        iou = torch.cat(ious)
        results[name] = {
            "num_phrases": iou.numel(),
            "mean_iou": float(iou.mean()),
            "min_iou": float(iou.min()),
            "iou_10th_percentile": float(iou.quantile(0.1)),
            "max_probability_error": max(errors),
            "quantize_and_compile_s": time.monotonic() - start,
        }
        print(name, results[name], flush=True)
    return results


@contextlib.contextmanager
def timing_core(core: int | None, lock_path: str | None):
    """Pin this process to `core` and hold an exclusive lock on `lock_path` while timing (each optional)."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    with contextlib.ExitStack() as stack:
        if lock_path:
            lock = stack.enter_context(open(lock_path, "w"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def speed(args) -> dict:
    torch.manual_seed(args.seed)
    model = EpngForPanopticNarrativeGrounding(EpngConfig()).eval()
    generator = torch.Generator().manual_seed(args.seed)

    def random_batch():
        return {
            "pixel_values": torch.randn(1, 3, 640, 640, generator=generator),
            "phrase_features": torch.randn(1, 20, model.config.text_config.hidden_size, generator=generator),
            "phrase_mask": torch.ones(1, 20, dtype=torch.bool),
        }

    calibration, timed = [random_batch() for _ in range(4)], random_batch()
    bare = PhraseFeatureForward(model)
    calls = {"fp32_eager": lambda **inputs: bare(**inputs)}
    for name, mixed_bf16 in (("int8", False), ("int8_bf16", True)):
        calls[name] = quantize(model, calibration, mixed_bf16)
    latencies = {name: [] for name in calls}
    with timing_core(args.time_on_core, args.lock), torch.no_grad():
        for name, call in calls.items():
            call(**timed)  # warm-up on the timing core
        for _ in range(args.iterations):  # interleaved
            for name, call in calls.items():
                start = time.perf_counter()
                call(**timed)
                latencies[name].append(time.perf_counter() - start)
    medians = {name: sorted(values)[len(values) // 2] * 1e3 for name, values in latencies.items()}
    results = {
        name: {"latency_ms": value, "speedup_vs_fp32_eager": medians["fp32_eager"] / value}
        for name, value in medians.items()
    }
    for name, values in results.items():
        print(f"{name:12} {values['latency_ms']:8.1f} ms  {values['speedup_vs_fp32_eager']:.2f}x", flush=True)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", help="a trained model + processor folder: compare masks with fp32")
    parser.add_argument("--dataset", help="the 🤗 PNG dataset folder whose validation split calibrates and compares")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--calibration_batches", type=int, default=4, help="as many more batches are compared (4)")
    parser.add_argument("--num_phrases", type=int, default=16, help="phrase slots of every batch (16)")
    parser.add_argument("--speed", action="store_true", help="time fp32 eager, int8 and int8 + bf16 (paper config)")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--time_on_core", type=int, help="move to this CPU core for the timed calls")
    parser.add_argument("--lock", help="hold an exclusive lock on this file during the timed calls")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if bool(args.model_name_or_path) != bool(args.dataset):
        parser.error("--model_name_or_path and --dataset go together")
    if not (args.speed or args.model_name_or_path):
        parser.error("nothing to measure: pass --speed and/or --model_name_or_path DIR --dataset DIR")
    torch.set_num_threads(args.threads)
    report = {}
    if args.model_name_or_path:
        report["masks"] = mask_agreement(args)
    if args.speed:
        report["speed"] = speed(args)
    if args.json:
        with open(args.json, "w") as output:
            json.dump(report, output, indent=2)


if __name__ == "__main__":
    main()
