"""The text report of `python -m training.benchmark`: the device line and the human-readable tables (the JSON keeps
every value)."""

from __future__ import annotations

import contextlib
import os
import platform
import re

import torch

from .benchmark_fast_path import format_fast_path
from .benchmark_kernels import format_kernel_throughput
from .benchmark_paths import format_user_paths
from .benchmark_pipeline import format_pipeline_overhead
from .benchmark_timing import KEY_FIELDS


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model_name = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError, AttributeError), open("/proc/cpuinfo") as cpuinfo:
        model_name = re.search(r"model name\s*:\s*(.*)", cpuinfo.read()).group(1)
    return f"{model_name} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def format_report(report: dict) -> str:
    """Human-readable tables of a report (the JSON keeps every value)."""
    title = (
        f"EPNG benchmark on {report['device']} | torch {report['torch_version']} | {report['image_size']} px | "
        f"{report['num_phrases']} phrases | load average {report['load_average']}"
    )
    isa = report["instruction_sets"]
    lines = [title, f"CPU capability {isa['cpu_capability']}; ISA flags: {' '.join(isa['isa_flags'])}", ""]
    columns = ("section", "batch", "dtype", "lpa", "mode", "text", "ms", "img/s", "peak MiB", "+MiB", "status")
    row = "{:9} {:>5} {:5} {:8} {:7} {:4} {:>9} {:>8} {:>8} {:>7}  {}"
    lines += [row.format(*columns), "-" * 100]
    for m in report["measurements"]:
        settings = [m["section"], m["batch_size"], m["dtype"], m["lpa"], "compile" if m["compiled"] else "eager"]
        settings.append("yes" if m["text_encoder"] else "no")
        if m["status"] == "ok":
            values = [f"{m['latency_ms']:.1f}", f"{m['images_per_s']:.2f}", f"{m['peak_memory_mb']:.0f}"]
            lines.append(row.format(*settings, *values, f"{m['peak_memory_increase_mb']:.0f}", "ok"))
        else:
            lines.append(row.format(*settings, "-", "-", "-", "-", f"{m['status']}: {m['reason']}"))
    if report["ratios"]:
        lines += ["", "Ratios of two measurements of this run (latency < 1: the numerator is faster):"]
    for ratio in report["ratios"]:
        fixed = ", ".join(f"{key}={ratio[key]}" for key in KEY_FIELDS[1:] if key in ratio)
        memory = ratio["peak_memory_increase_ratio"]
        memory = "-" if memory is None else f"{memory:.2f}"
        lines.append(
            f"  {ratio['section']:9} {ratio['comparison']:24} latency {ratio['latency_ratio']:6.3f}  "
            f"memory increase {memory:>5}  [{fixed}]"
        )
    if "fast_path" in report:
        lines += format_fast_path(report["fast_path"])
    for breakdown in report.get("breakdown", []):
        parts = breakdown["parts_ms"]
        lines += ["", f"Per-part forward, batch {breakdown['batch_size']}, fp32 eager, lpa={breakdown['lpa']}:"]
        lines += [f"  {name:14} {ms:10.1f} ms  {100 * ms / parts['total']:5.1f}%" for name, ms in parts.items()]
    if "profile" in report:
        profile = report["profile"]
        title = f"one eager forward, batch {profile['batch_size']}, {profile['dtype']}, {profile['lpa']} LPA"
        lines += ["", f"Top-10 operators ({title}):", profile["table"]]
    processor = report.get("processor")
    if processor and processor["status"] == "ok":
        width, height = processor["image_size"]
        summary = (
            f"Processor: {processor['samples_per_s_per_worker']:.2f} samples/s per worker, median "
            f"{processor['latency_ms']:.1f} ms ({width}x{height} JPEG + panoptic PNG, {processor['tokens']} tokens, "
            f"{processor['num_phrases']} phrases, {processor['jpeg_kb']:.0f} KB JPEG); on a core of its own (CPU time): "
            f"{processor['samples_per_s_per_worker_cpu']:.1f} samples/s with mask targets, "
            f"{processor['samples_per_s_per_worker_cpu_without_targets']:.1f} without; workers for 100 images/s "
            f"training: {processor['workers_for_training_target']}, for 500 images/s inference: "
            f"{processor['workers_for_inference_target']}"
        )
        lines += ["", summary]
    elif processor:
        lines += ["", f"Processor: skipped: {processor['reason']}"]
    if report.get("paths"):
        lines += format_user_paths(report["paths"])
    if report.get("kernels"):
        lines += format_kernel_throughput(report["kernels"])
    if report.get("pipeline"):
        lines += format_pipeline_overhead(report["pipeline"])
    return "\n".join(lines)
