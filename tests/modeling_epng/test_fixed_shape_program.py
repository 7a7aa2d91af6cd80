"""`FixedShapeProgram`: a program of batch 1 and fixed image size and phrase slots, called with batches of fewer
phrases, on a stand-in program that records the inputs it gets; and the export's calibration batches, padded the
same way."""

import pytest
import torch

from hub.export import fixed_shape_inputs
from modeling_epng.fixed_shape_program import FixedShapeProgram


class RecordingProgram:
    """Returns per-slot outputs that depend on the slot, the narrative and the phrase mask, and records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, **inputs):
        self.calls.append(inputs)
        narrative = inputs["input_ids"][:, :1].float()  # (1, 1): tells the narratives apart
        slots = torch.arange(inputs["phrase_mask"].shape[1]).float()[None]
        mask_logits = (narrative + slots + inputs["phrase_mask"].float())[..., None, None].expand(-1, -1, 2, 2)
        return mask_logits, (10 * narrative + slots)[..., None]


def batch(batch_size, num_phrases, height=64, width=96):
    return {
        "pixel_values": torch.zeros(batch_size, 3, height, width),
        "input_ids": torch.arange(batch_size)[:, None].repeat(1, 7),
        "attention_mask": torch.ones(batch_size, 7, dtype=torch.long),
        "phrase_ids": torch.zeros(batch_size, 7, dtype=torch.long),
        "phrase_mask": torch.ones(batch_size, num_phrases, dtype=torch.bool),
    }


def test_each_narrative_runs_alone_with_its_phrase_slots_padded_and_the_outputs_cut_back():
    program = RecordingProgram()
    mask_logits, phrase_embeddings = FixedShapeProgram(program, (64, 96), 5)(**batch(3, 2))
    assert len(program.calls) == 3
    for index, call in enumerate(program.calls):
        assert call["pixel_values"].shape == (1, 3, 64, 96) and call["input_ids"].shape == (1, 7)
        assert call["phrase_mask"].tolist() == [[True, True, False, False, False]]
        assert int(call["input_ids"][0, 0]) == index
    assert mask_logits.shape == (3, 2, 2, 2) and phrase_embeddings.shape == (3, 2, 1)
    # Narrative n, slot s: n + s + 1 (a real phrase), in the batch's order.
    assert mask_logits[:, :, 0, 0].tolist() == [[1, 2], [2, 3], [3, 4]]
    assert phrase_embeddings[:, :, 0].tolist() == [[0, 1], [10, 11], [20, 21]]


def test_calls_it_cannot_take_are_refused_with_the_reason():
    fixed = FixedShapeProgram(RecordingProgram(), (64, 96), 2)
    inputs = batch(1, 2)
    assert fixed.refusal(inputs["pixel_values"], inputs["phrase_mask"]) is None
    other_size = batch(1, 2, height=96, width=64)
    assert "(96, 64), it was exported for (64, 96)" in fixed.refusal(other_size["pixel_values"], inputs["phrase_mask"])
    too_many = batch(1, 3)
    assert "3 phrase slots, more than the 2" in fixed.refusal(too_many["pixel_values"], too_many["phrase_mask"])
    with pytest.raises(ValueError, match="cannot run this call: it has 3 phrase slots"):
        fixed(**too_many)


def test_calibration_batches_become_padded_single_narratives():
    singles = fixed_shape_inputs([batch(2, 3), batch(1, 1)], (64, 96), 4)
    assert len(singles) == 3
    assert all(single["phrase_mask"].shape == (1, 4) for single in singles)
    assert singles[2]["phrase_mask"].tolist() == [[True, False, False, False]]
    with pytest.raises(ValueError, match="does not fit the fixed shapes: it has 3 phrase slots.*raise --phrase_slots"):
        fixed_shape_inputs([batch(2, 3)], (64, 96), 2)
