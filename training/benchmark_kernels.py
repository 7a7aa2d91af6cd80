"""Kernel section of the EPNG benchmark (`training/benchmark.py --kernels`): how much faster this CPU computes the
paper model's main operators in bf16 (and a matrix product in int8) than in fp32.

The whole-model ratio of the bf16 fast path to fp32 eager cannot exceed what the kernels allow, so this section
says what a CPU can reach before any model code is involved. Operators, with the paper configuration's shapes
(640 x 640 input, 250 narrative tokens):

* `communicator linear`: a (1600, 768) x (768, 768) linear layer (the H/16 tokens of the communicator);
* `text encoder FFN linear`: a (250, 768) x (768, 3072) linear layer (BERT-base's feed-forward);
* `backbone 3x3 conv`: a 256 -> 256 channel 3 x 3 convolution at 40 x 40 (ResNet-101's third stage, 23 blocks);
* `backbone 1x1 conv`: a 1024 -> 256 channel 1 x 1 convolution at 40 x 40 (the same blocks' reduction).

Each runs as the two paths run it: fp32 in the default memory format (fp32 eager), bf16 with channels_last
convolutions (the fast path), and, for the linears, `torch._int_mm` on int8 (VNNI / AMX int8 where the CPU has them;
the int32 result is not rescaled, so it is the product alone). Medians of interleaved calls; throughput in GFLOP/s
(2 x multiply-adds) and each dtype's speed-up over fp32 of the same run. `--tiny` shrinks every shape for smoke tests.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from .benchmark_timing import time_calls

# name: ("linear", tokens, in_features, out_features) or ("conv", in_channels, out_channels, kernel, side)
PAPER_KERNELS = {
    "communicator linear": ("linear", 1600, 768, 768),
    "text encoder FFN linear": ("linear", 250, 768, 3072),
    "backbone 3x3 conv": ("conv", 256, 256, 3, 40),
    "backbone 1x1 conv": ("conv", 1024, 256, 1, 40),
}
TINY_KERNELS = {
    "communicator linear": ("linear", 16, 32, 32),
    "text encoder FFN linear": ("linear", 8, 32, 64),
    "backbone 3x3 conv": ("conv", 8, 8, 3, 8),
    "backbone 1x1 conv": ("conv", 16, 8, 1, 8),
}


def _flops(shape: tuple) -> int:
    if shape[0] == "linear":
        _, tokens, in_features, out_features = shape
        return 2 * tokens * in_features * out_features
    _, in_channels, out_channels, kernel, side = shape
    return 2 * in_channels * out_channels * kernel * kernel * side * side


def _kernel_calls(shape: tuple, generator: torch.Generator) -> dict:
    """Callables per dtype computing the operator of `shape` on random inputs."""
    if shape[0] == "linear":
        _, tokens, in_features, out_features = shape
        inputs = torch.randn(tokens, in_features, generator=generator)
        weight = torch.randn(out_features, in_features, generator=generator)
        inputs_int8 = torch.randint(-128, 128, (tokens, in_features), dtype=torch.int8, generator=generator)
        weight_int8 = torch.randint(-128, 128, (in_features, out_features), dtype=torch.int8, generator=generator)
        bf16_inputs, bf16_weight = inputs.bfloat16(), weight.bfloat16()
        return {
            "fp32": lambda: F.linear(inputs, weight),
            "bf16": lambda: F.linear(bf16_inputs, bf16_weight),
            "int8": lambda: torch._int_mm(inputs_int8, weight_int8),
        }
    _, in_channels, out_channels, kernel, side = shape
    inputs = torch.randn(1, in_channels, side, side, generator=generator)
    weight = torch.randn(out_channels, in_channels, kernel, kernel, generator=generator)
    channels_last = torch.channels_last
    bf16_inputs = inputs.bfloat16().contiguous(memory_format=channels_last)
    bf16_weight = weight.bfloat16().contiguous(memory_format=channels_last)
    padding = kernel // 2
    return {
        "fp32": lambda: F.conv2d(inputs, weight, padding=padding),
        "bf16": lambda: F.conv2d(bf16_inputs, bf16_weight, padding=padding),
    }


def kernel_throughput(tiny: bool, warmup: int, iterations: int, seed: int = 0) -> list[dict]:
    """
    GFLOP/s of each operator per dtype on this CPU (see the module docstring).

    Returns:
        One record per operator: `name`, `shape`, `gflop` (per call), and per dtype `ms` (median), `gflops` and
        `speedup` (fp32's median over this dtype's); a dtype the CPU cannot run has `status` with the error instead.
    """
    generator = torch.Generator().manual_seed(seed)
    records = []
    with torch.inference_mode():
        for name, shape in (TINY_KERNELS if tiny else PAPER_KERNELS).items():
            calls, failures = {}, {}
            for dtype, call in _kernel_calls(shape, generator).items():
                try:
                    for _ in range(max(1, warmup)):
                        call()
                except RuntimeError as error:  # e.g. no int8 matrix product on this build
                    failures[dtype] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                else:
                    calls[dtype] = call
            medians = {
                dtype: statistics.median(ms) for dtype, ms in time_calls(calls, iterations, torch.device("cpu")).items()
            }
            flops = _flops(shape)
            dtypes = {
                dtype: {"ms": ms, "gflops": flops / ms / 1e6, "speedup": medians["fp32"] / ms}
                for dtype, ms in medians.items()
            }
            dtypes.update({dtype: {"status": reason} for dtype, reason in failures.items()})
            records.append({"name": name, "shape": list(shape), "gflop": flops / 1e9, "dtypes": dtypes})
    return records


def format_kernel_throughput(records: list[dict]) -> list[str]:
    """Lines of the benchmark report for the kernel section."""
    lines = ["", "Kernels on the CPU (GFLOP/s, and speed-up over fp32 of this run; medians):"]
    for record in records:
        kind, *sizes = record["shape"]
        cells = []
        for dtype, result in record["dtypes"].items():
            if "status" in result:
                cells.append(f"{dtype} not run ({result['status']})")
            else:
                cells.append(f"{dtype} {result['gflops']:7.1f} ({result['speedup']:.2f}x)")
        lines.append(f"  {record['name']:24} {kind} {'x'.join(map(str, sizes)):16} " + "  ".join(cells))
    return lines
