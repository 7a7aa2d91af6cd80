"""Smoke test of the pipeline section of `python -m training.benchmark` (no timing thresholds: CI is shared)."""

import torch

from modeling_epng.phrase_extraction import extract_phrase_spans
from training import benchmark
from training.benchmark_pipeline import NARRATIVE, format_pipeline_overhead


def test_pipeline_section_reports_both_settings(capsys):
    threads = torch.get_num_threads()
    try:
        report = benchmark.run(
            ["--tiny", "--device", "cpu", "--threads", "1", "--skip_inference", "--warmup", "1"]
            + ["--pipeline", "--pipeline_iterations", "2"]
        )
    finally:
        torch.set_num_threads(threads)

    records = report["pipeline"]
    assert [record["optimized"] for record in records] == [False, True]
    assert records[1]["inference_settings"]["folded_batch_norms"] > 0 and records[0]["inference_settings"] is None
    for record in records:
        assert record["num_phrases"] == len(extract_phrase_spans(NARRATIVE)) >= 10
        assert record["input_size"] == 64 and record["image_size"] == [64, 64]
        for name in (
            "bare_forward",
            "pipeline",
            "pipeline_background_parse",
            "pipeline_repeated_narrative",
            "pipeline_given_phrases",
            "phrase_parsing",
        ):
            assert len(record["latencies_ms"][name]) == 2 and record[f"{name}_ms"] > 0
        assert record["overhead"] == record["pipeline_ms"] / record["bare_forward_ms"] - 1
        steps = record["given_phrases_steps_ms"]
        assert set(steps) == {"preprocess", "forward", "postprocess"} and all(value > 0 for value in steps.values())
        assert sum(steps.values()) <= max(record["latencies_ms"]["pipeline_given_phrases"])
        background = record["pipeline_background_parse_ms"] / record["bare_forward_ms"] - 1
        assert record["overhead_background_parse"] == background
    printed = capsys.readouterr().out
    for line in format_pipeline_overhead(records):
        assert line in printed
