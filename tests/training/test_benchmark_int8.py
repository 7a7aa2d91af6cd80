"""The int8 measurement's command line: what it refuses, and its message where torchao is missing."""

import sys

import pytest
import torch

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding
from training import benchmark_int8


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "nothing to measure"),
        (["--model_name_or_path", "somewhere"], "go together"),
        (["--dataset", "somewhere", "--speed"], "go together"),
    ],
)
def test_cli_rejects_incomplete_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        benchmark_int8.main(argv)
    assert error.value.code == 2 and message in capsys.readouterr().err


def test_without_torchao_it_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao...` now raises ImportError
    model = EpngForPanopticNarrativeGrounding(EpngConfig.tiny())
    batch = {"pixel_values": torch.randn(1, 3, 64, 64), "phrase_features": torch.randn(1, 2, 32)}
    batch["phrase_mask"] = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(SystemExit, match="pip install torchao"):
        benchmark_int8.quantize(model, [batch], mixed_bf16=False)


def test_mask_ious_count_empty_pairs_as_agreement():
    reference = torch.full((1, 3, 4, 4), -5.0)
    reference[0, 0, :2] = 5.0  # phrase 0: top half; phrase 1: empty; phrase 2: padding
    logits = reference.clone()
    logits[0, 0, :1] = -5.0  # half of phrase 0's mask is lost
    phrase_mask = torch.tensor([[True, True, False]])
    assert benchmark_int8.mask_ious(logits, reference, phrase_mask, 0.5).tolist() == [0.5, 1.0]
