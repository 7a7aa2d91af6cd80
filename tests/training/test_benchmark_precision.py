"""The bf16 precision breakdown (`training/benchmark_precision.py`): every part's variant is measured, and its fp32
regions really run in fp32."""

import json

import pytest
import torch
from app_testing import save_tiny_model
from epng_testing import grounding_inputs

from modeling_epng import EpngForPanopticNarrativeGrounding
from training.benchmark_precision import PARTS, forward_with_head, main, part_calls, run_in


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, minilm_path):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"), minilm_path)


def test_report_has_every_part_alone_in_bf16_and_in_fp32(model_folder, synthetic_dataset_dir, tmp_path, capsys):
    main(["--model_name_or_path", str(model_folder), "--dataset", str(synthetic_dataset_dir), "--num_examples", "3",
          "--json", str(tmp_path / "precision.json")])  # fmt: skip
    report = json.loads((tmp_path / "precision.json").read_text())
    expected = (
        {"all bf16 (the bf16 fast path)"} | {f"{p} alone in bf16" for p in PARTS} | {f"{p} in fp32" for p in PARTS}
    )
    assert set(report["variants"]) == expected
    for values in report["variants"].values():
        assert 0 <= values["mean_probability_error"] <= values["max_probability_error"] < 1
        assert 0 <= values["flipped_pixels"] <= 1
    assert report["variants"]["all bf16 (the bf16 fast path)"]["max_probability_error"] > 0
    assert report["reference"]["num_phrases"] > 0 and report["reference"]["max_sum_abs_products"] > 0
    assert "backbone alone in bf16" in capsys.readouterr().out


def test_every_part_in_fp32_reproduces_fp32_and_so_does_the_recomputed_head(model_folder):
    inputs = grounding_inputs()
    reference = EpngForPanopticNarrativeGrounding.from_pretrained(model_folder).eval()
    mixed = EpngForPanopticNarrativeGrounding.from_pretrained(model_folder)
    mixed.optimize_for_inference(dtype="bf16", use_artifact=False)
    fp32 = EpngForPanopticNarrativeGrounding.from_pretrained(model_folder)
    fp32.optimize_for_inference(dtype="fp32", use_artifact=False)
    with torch.inference_mode():
        expected = reference(**inputs).mask_logits
        bf16 = mixed(**inputs).mask_logits
        for part in PARTS:
            for (owner, method), (fp32_owner, _) in zip(part_calls(mixed, part), part_calls(fp32, part), strict=True):
                run_in(owner, method, torch.float32, fp32_owner)
        # all that is left in bf16 is the head, recomputed here in fp32
        actual = forward_with_head(mixed, inputs, torch.float32)
        head_in_bf16 = forward_with_head(reference, inputs, torch.bfloat16)
    assert (bf16 - expected).abs().max() > 1e-4  # the fast path does round to bf16
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    assert (head_in_bf16 - expected).abs().max() > 1e-5
