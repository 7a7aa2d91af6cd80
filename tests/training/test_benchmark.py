"""Smoke tests of `python -m training.benchmark` on the tiny config (no timing thresholds: the CI machine is shared)."""

import json

import pytest
import torch

from modeling_epng import EpngConfig
from modeling_epng.attention import EpngLocalityPerceptiveAttention
from training import benchmark, benchmark_paths
from training.benchmark_timing import COMPARISONS, latency_ratios

# Eager flex_attention on CPU is the unfused reference path, and says so; that is what the flex variants measure here.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

# One torch thread: on a loaded 2-core machine, two OpenMP threads wait on each other for whole scheduler slices.
TINY_RUN = ["--tiny", "--device", "cpu", "--threads", "1", "--batch_sizes", "1", "--iterations", "1", "--warmup", "1"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One tiny run of every section: both LPA paths, both dtypes, with the text encoder, training, processor,
    breakdown and profile; returns the JSON file it wrote, read back."""
    path = tmp_path_factory.mktemp("benchmark") / "report.json"
    extra = ["--lpa", "explicit", "flex", "--dtypes", "fp32", "bf16", "--with_text_encoder", "--training"]
    extra += ["--processor", "--processor_samples", "2", "--breakdown", "--profile", "--fast_path", "--paths"]
    extra += ["--json", str(path)]
    threads = torch.get_num_threads()
    try:
        benchmark.run(TINY_RUN + extra)
    finally:
        torch.set_num_threads(threads)
    return json.loads(path.read_text())


def test_report_describes_the_run(report):
    for key in ("device", "torch_version", "config", "parameters", "memory_method", "timing_method", "settings"):
        assert report[key]
    assert report["device_type"] == "cpu"
    assert report["config"]["hidden_size"] == EpngConfig.tiny().hidden_size
    assert report["config"]["num_attention_heads"] == 3
    assert report["parameters"]["total"] > 0


def test_every_combination_is_measured_or_explained(report):
    sections = {m["section"] for m in report["measurements"]}
    assert sections == {"inference", "lpa", "training"}
    # inference: 2 dtypes x 2 LPA x 2 text options; lpa: 2 x 2; training: 2 x 2 x 2.
    assert len(report["measurements"]) == 8 + 4 + 8
    for m in report["measurements"]:
        if m["status"] == "ok":
            assert m["latency_ms"] > 0 and m["images_per_s"] > 0 and m["peak_memory_mb"] > 0
            assert m["peak_memory_increase_mb"] >= 0 and len(m["latencies_ms"]) == 1
        else:
            assert m["status"] == "skipped" and m["reason"], m
    skipped = [m for m in report["measurements"] if m["status"] != "ok"]
    # flex_attention has no CPU backward: exactly the flex training variants are skipped, with that reason.
    assert {(m["section"], m["lpa"]) for m in skipped} == {("training", "flex")}
    assert len(skipped) == 4 and all("backward" in m["reason"] for m in skipped)


def test_ratios_pair_measurements_of_the_same_run(report):
    comparisons = {ratio["comparison"] for ratio in report["ratios"]}
    assert comparisons == {f"{field}: {top}/{bottom}" for field, top, bottom in COMPARISONS if field != "compiled"}
    assert all(ratio["latency_ratio"] > 0 for ratio in report["ratios"])
    flex_over_explicit = [r for r in report["ratios"] if r["comparison"] == "lpa: flex/explicit"]
    assert {r["section"] for r in flex_over_explicit} == {"inference", "lpa"}


def test_breakdown_profile_and_processor(report):
    for breakdown in report["breakdown"]:
        parts = breakdown["parts_ms"]
        assert set(parts) == {"backbone", "fpn_fusion", "text_encoder", "communicator", "head_and_rest", "total"}
        assert parts["total"] > 0 and parts["backbone"] > 0 and parts["communicator"] > 0
    assert [b["lpa"] for b in report["breakdown"]] == ["explicit", "flex"]
    operators = report["profile"]["operators"]
    assert 0 < len(operators) <= 10 and all(op["self_time_ms"] >= 0 and op["calls"] > 0 for op in operators)
    processor = report["processor"]
    if processor["status"] == "ok":
        assert processor["samples_per_s_per_worker"] > 0 and processor["tokens"] > 0
    else:  # the processor or the offline tokenizer is not installed: a clear skip, not a crash
        assert processor["status"] == "skipped" and processor["reason"]


def test_fast_path_variants_are_compared_with_fp32_eager(report):
    assert report["instruction_sets"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    records = {record["variant"]: record for record in report["fast_path"]["measurements"]}
    assert set(records) == {"fp32_eager", "fast_path", "fast_path_fp32", "artifact"}
    assert records["fp32_eager"]["speedup_vs_fp32_eager"] == pytest.approx(1.0)
    for name in ("fast_path", "fast_path_fp32"):
        assert records[name]["status"] == "ok" and records[name]["speedup_vs_fp32_eager"] > 0
        assert records[name]["max_probability_error"] <= 1e-2
    assert records["fast_path_fp32"]["max_probability_error"] <= 1e-4  # folding and layout only
    # Random weights and no saved folder: the artefact variant says what it needs.
    assert records["artifact"]["status"] == "skipped" and "--model_name_or_path" in records["artifact"]["reason"]
    assert report["fast_path"]["settings"]["fast_path_fp32"]["dtype"] == "fp32"


def test_user_paths_time_the_bare_model_and_the_pipeline_per_setting(report):
    records = [record for record in report["paths"] if record["status"] == "ok"]
    assert {(record["setting"], record["call"]) for record in records} == {
        (setting, call) for setting in ("fp32_eager", "fast_path") for call in benchmark_paths.CALLS
    }
    for record in records:
        assert record["latency_ms"] > 0 and record["num_phrases"] > 0
        if record["setting"] == "fp32_eager":
            assert record["speedup_vs_fp32_eager"] == pytest.approx(1.0)
    (skipped,) = [record for record in report["paths"] if record["status"] != "ok"]
    assert skipped["setting"] == "artifact" and "--model_name_or_path" in skipped["reason"]
    with pytest.raises(SystemExit):
        benchmark.parse_args([*TINY_RUN, "--model_name_or_path", "somewhere"])


def test_cold_start_runs_fresh_processes(tmp_path, minilm_path):
    from app_testing import save_tiny_model

    from training.benchmark_cold_start import cold_start_seconds, format_cold_start

    save_tiny_model(tmp_path, minilm_path)
    args = benchmark.parse_args(TINY_RUN)
    record = cold_start_seconds(str(tmp_path), "fast_path", args)
    assert record["status"] == "ok", record
    assert record["seconds"] > 0 and record["settings"]["folded_batch_norms"] > 0
    assert record["settings"]["artifact"] is None
    assert list(record["stages"]) == ["imports", "from_pretrained", "optimize_for_inference", "first_forward"]
    assert min(record["stages"].values()) >= 0
    assert sum(record["stages"].values()) == pytest.approx(record["seconds"])
    assert "fast_path: " in format_cold_start(record) and "; imports " in format_cold_start(record)
    # The user's command, spaCy's phrases included: the narrative has six noun phrases.
    ground = cold_start_seconds(str(tmp_path), "ground", args)
    assert ground["status"] == "ok", ground
    assert ground["seconds"] > 0 and ground["phrases"] == 6
    with pytest.raises(SystemExit):
        benchmark.parse_args([*TINY_RUN, "--cold_start"])


def test_unsupported_combinations_have_reasons(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    paper = EpngLocalityPerceptiveAttention(EpngConfig(attention_dropout=0.0))  # 8 heads of 96 channels, no dropout
    narrow = EpngLocalityPerceptiveAttention(EpngConfig.tiny())  # 4 heads of 12 channels
    assert "backward" in benchmark.unsupported_reason(cpu, "fp32", "flex", True, paper)
    assert benchmark.unsupported_reason(cpu, "bf16", "flex", False, narrow) is None
    assert benchmark.unsupported_reason(cpu, "fp32", "explicit", True, paper) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert "bf16" in benchmark.unsupported_reason(cuda, "bf16", "explicit", False, paper)
    assert benchmark.unsupported_reason(cuda, "fp32", "flex", True, paper) is None
    assert "at least 16 channels" in benchmark.unsupported_reason(cuda, "fp32", "flex", False, narrow)
    paper.attention_dropout = 0.1
    assert "dropout" in benchmark.unsupported_reason(cuda, "fp32", "flex", True, paper)
    assert benchmark.unsupported_reason(cuda, "fp32", "flex", False, paper) is None  # eval: no dropout


def test_failed_variant_is_reported_not_raised():
    from training.benchmark_timing import PeakMemory, Variant, measure_variants

    def broken():
        raise RuntimeError("no kernel for this combination\nsecond line")

    settings = {"section": "inference", "batch_size": 1, "dtype": "fp32", "lpa": "explicit", "text_encoder": False}
    variants = [Variant({**settings, "compiled": True}, broken), Variant({**settings, "compiled": False}, lambda: 0)]
    device = torch.device("cpu")
    failed, ok = measure_variants(variants, warmup=1, iterations=2, device=device, memory=PeakMemory(device))
    assert failed["status"] == "failed" and failed["reason"] == "RuntimeError: no kernel for this combination"
    assert ok["status"] == "ok" and len(ok["latencies_ms"]) == 2
    assert latency_ratios([failed, ok]) == []


def test_cli_rejects_unavailable_cuda_and_bad_sizes():
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            benchmark.parse_args(["--device", "cuda"])
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--tiny", "--image_size", "100"])
    args = benchmark.parse_args(["--tiny", "--device", "cpu"])
    assert args.image_size == 64 and args.batch_sizes == [1, 2] and args.warmup >= 1
    paper = benchmark.parse_args(["--device", "cpu", "--batch_sizes", "1", "12", "32"])
    assert paper.image_size == 640 and paper.num_phrases == 20 and paper.batch_sizes == [1, 12, 32]


def test_save_model_writes_a_folder_the_user_path_section_loads(tmp_path):
    from modeling_epng import EpngForPanopticNarrativeGrounding, EpngProcessor

    assert benchmark.run([*TINY_RUN, "--save_model", str(tmp_path)]) == {}
    model = EpngForPanopticNarrativeGrounding.from_pretrained(tmp_path)
    assert model.config.hidden_size == EpngConfig.tiny().hidden_size
    assert EpngProcessor.from_pretrained(tmp_path).image_processor.size == {"height": 64, "width": 64}
    torch.manual_seed(0)
    expected = EpngForPanopticNarrativeGrounding(model.config)  # --seed 0: the same random weights
    torch.testing.assert_close(model.state_dict(), expected.state_dict())
