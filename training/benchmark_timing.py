"""Timing and memory measurement of the EPNG benchmark (`training/benchmark.py`), independent of the model.

Timing: warm-up iterations (compilation, caches) are excluded; the latency is the median over the timed iterations.
On CPU each call is timed with `time.perf_counter` and the variants of a comparison are interleaved call by call, so
that the load of a shared machine hits both sides of a ratio alike. On CUDA every call is bracketed by CUDA events
recorded back to back (the GPU queue stays full), read after a final synchronize.

Memory is measured over the last warm-up iteration. On CUDA: `torch.cuda.max_memory_allocated` (absolute, weights
included) and its increase over the memory allocated before the iteration. On CPU (Linux), without psutil: the
resident-set high-water mark VmHWM of `/proc/self/status`, reset through `/proc/self/clear_refs` before the
iteration, and its increase over the RSS before it (activations and temporary buffers; weights excluded). Freed heap
pages are handed back first (`malloc_trim`), otherwise glibc keeps them resident and their re-use would not show.
Where `clear_refs` is unavailable, `resource.getrusage` gives the process-lifetime peak: the increase is then a
lower bound (zero when an earlier iteration peaked higher).
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

MIB = 2**20
KEY_FIELDS = ("section", "batch_size", "dtype", "lpa", "compiled", "text_encoder")
# (field, numerator, denominator) of every reported ratio.
COMPARISONS = (
    ("lpa", "flex", "explicit"),
    ("dtype", "bf16", "fp32"),
    ("compiled", True, False),
    ("text_encoder", True, False),
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: str):
    """bf16 autocast (weights stay fp32, as in mixed-precision training), or nothing for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


class PeakMemory:
    """Peak memory of one iteration (see the module docstring for what is measured on each device)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda_max_memory_allocated"
        if device.type == "cpu":
            try:
                self._reset_host_peak()
                self.method = "linux_vmhwm_after_clear_refs"
            except OSError:
                self.method = "getrusage_maxrss_lower_bound"

    @staticmethod
    def _reset_host_peak() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)

    def _host_bytes(self, field: str) -> int:
        if self.method == "linux_vmhwm_after_clear_refs":
            with open("/proc/self/status") as status:
                return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE).group(1)) * 1024
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max_rss if platform.system() == "Darwin" else max_rss * 1024  # bytes on macOS, KiB on Linux

    def measure(self, call: Callable[[], object]) -> dict[str, float]:
        """Run `call` once; return its peak memory and the increase over the memory held before it, in MiB."""
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        else:
            if self.method == "linux_vmhwm_after_clear_refs":
                self._reset_host_peak()
            before = self._host_bytes("VmRSS")
        call()
        synchronize(self.device)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = self._host_bytes("VmHWM")
        return {"peak_memory_mb": peak / MIB, "peak_memory_increase_mb": max(peak - before, 0) / MIB}


def time_calls(calls: dict[int, Callable[[], object]], iterations: int, device: torch.device) -> dict[int, list]:
    """Per-call latencies in ms of every callable (interleaved on CPU, CUDA events on GPU; see module docstring)."""
    latencies = {key: [] for key in calls}
    if device.type == "cuda":
        for key, call in calls.items():
            events = [
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iterations)
            ]
            synchronize(device)
            for start, end in events:
                start.record()
                call()
                end.record()
            synchronize(device)
            latencies[key] = [start.elapsed_time(end) for start, end in events]
        return latencies
    for _ in range(iterations):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            latencies[key].append((time.perf_counter() - start) * 1000)
    return latencies


@dataclass
class Variant:
    """One measured combination: its settings (the `KEY_FIELDS`), one iteration to time, or why it cannot run."""

    settings: dict
    call: Callable[[], object] | None = None
    skip_reason: str | None = None


def measure_variants(
    variants: list[Variant], warmup: int, iterations: int, device: torch.device, memory: PeakMemory
) -> list[dict]:
    """Warm up every runnable variant (its last warm-up iteration measures memory), then time them together.

    Returns one record per variant: its settings, `status` ("ok", "skipped" or "failed"), `reason`, and for "ok" the
    median/mean/min latency (ms), every latency, images/s and the peak memory fields of [`PeakMemory.measure`].
    """
    records, calls = {}, {}
    for index, variant in enumerate(variants):
        record = records[index] = dict(variant.settings, status="skipped", reason=variant.skip_reason)
        if variant.skip_reason:
            continue
        try:
            for _ in range(warmup - 1):
                variant.call()
            record.update(memory.measure(variant.call))
        except torch.OutOfMemoryError:
            record["reason"] = f"out of memory on {device.type} at batch size {variant.settings['batch_size']}"
        # A combination the toolchain cannot run (e.g. an inductor lowering error) is reported, not fatal.
        except Exception as error:  # noqa: BLE001
            record.update(status="failed", reason=f"{type(error).__name__}: {str(error).strip().splitlines()[0]}")
        else:
            calls[index] = variant.call
        if device.type == "cuda" and index not in calls:
            torch.cuda.empty_cache()
    for index, latencies in time_calls(calls, iterations, device).items():
        median = statistics.median(latencies)
        records[index].update(
            status="ok",
            reason=None,
            latency_ms=median,
            latency_mean_ms=statistics.fmean(latencies),
            latency_min_ms=min(latencies),
            latencies_ms=latencies,
            images_per_s=1000.0 * records[index]["batch_size"] / median,
        )
    return [records[index] for index in range(len(variants))]


def latency_ratios(measurements: list[dict]) -> list[dict]:
    """Every flex/explicit, bf16/fp32, compiled/eager and with/without-text-encoder ratio between two measurements
    that differ in that one factor only (so both come from the same run)."""
    ok = [m for m in measurements if m["status"] == "ok"]
    ratios = []
    for field, numerator, denominator in COMPARISONS:
        others = [key for key in KEY_FIELDS if key != field]
        for top in (m for m in ok if m[field] == numerator):
            for bottom in (m for m in ok if m[field] == denominator and all(m[k] == top[k] for k in others)):
                memory = top["peak_memory_increase_mb"], bottom["peak_memory_increase_mb"]
                ratio = {key: top[key] for key in others}
                ratio.update(
                    comparison=f"{field}: {numerator}/{denominator}",
                    latency_ratio=top["latency_ms"] / bottom["latency_ms"],
                    # Below 1 MiB an increase is allocator noise (memory re-used from an earlier variant).
                    peak_memory_increase_ratio=memory[0] / memory[1] if min(memory) >= 1 else None,
                )
                ratios.append(ratio)
    return ratios
