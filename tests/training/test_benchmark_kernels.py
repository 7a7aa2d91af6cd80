"""The kernel section of `python -m training.benchmark` (no timing thresholds: CI is shared)."""

import pytest
import torch

from training import benchmark
from training.benchmark_kernels import TINY_KERNELS, _kernel_calls, format_kernel_throughput, kernel_throughput


def test_kernel_section_reports_every_operator_and_dtype():
    threads = torch.get_num_threads()
    try:
        report = benchmark.run(
            ["--tiny", "--device", "cpu", "--threads", "1", "--skip_inference", "--kernels", "--iterations", "3"]
        )
    finally:
        torch.set_num_threads(threads)
    records = report["kernels"]
    assert [record["name"] for record in records] == list(TINY_KERNELS)
    for record in records:
        dtypes = record["dtypes"]
        expected = {"fp32", "bf16", "int8"} if record["shape"][0] == "linear" else {"fp32", "bf16"}
        assert set(dtypes) == expected
        assert dtypes["fp32"]["speedup"] == 1.0
        for result in dtypes.values():
            if "status" in result:
                continue
            assert result["speedup"] == pytest.approx(dtypes["fp32"]["ms"] / result["ms"])
            assert result["gflops"] == pytest.approx(record["gflop"] * 1e3 / result["ms"])
    linear = records[0]
    _, tokens, in_features, out_features = linear["shape"]
    assert linear["gflop"] == pytest.approx(2 * tokens * in_features * out_features / 1e9)
    lines = format_kernel_throughput(records)
    assert any(record["name"] in line and "bf16" in line for record in records for line in lines)


@pytest.mark.parametrize("name", list(TINY_KERNELS))
def test_each_dtype_computes_the_operator_of_its_shape(name):
    shape = TINY_KERNELS[name]
    calls = _kernel_calls(shape, torch.Generator().manual_seed(0))
    outputs = {dtype: call() for dtype, call in calls.items()}
    expected = (shape[1], shape[3]) if shape[0] == "linear" else (1, shape[2], shape[4], shape[4])
    assert {dtype: tuple(output.shape) for dtype, output in outputs.items()} == dict.fromkeys(calls, expected)
    # bf16 is the fp32 operator on rounded inputs, not another computation.
    torch.testing.assert_close(outputs["bf16"].float(), outputs["fp32"], rtol=0.05, atol=0.5)
    if "int8" in outputs:
        assert outputs["int8"].dtype == torch.int32


def test_a_dtype_the_build_cannot_run_is_reported_not_raised(monkeypatch):
    def no_int8(*args):
        raise RuntimeError("_int_mm is not implemented here\nmore detail")

    monkeypatch.setattr(torch, "_int_mm", no_int8)
    records = kernel_throughput(tiny=True, warmup=1, iterations=2)
    assert records[0]["dtypes"]["int8"] == {"status": "RuntimeError: _int_mm is not implemented here"}
    assert records[0]["dtypes"]["bf16"]["ms"] > 0
    assert "int8 not run (RuntimeError" in format_kernel_throughput(records)[2]
