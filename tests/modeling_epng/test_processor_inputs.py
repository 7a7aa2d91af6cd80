"""EpngProcessor on mistakes a user makes: phrases nested wrongly for a batch, float spans, a token budget beyond
the text encoder, and post-processing target sizes that are malformed or absurdly large."""

import pytest
import torch

from modeling_epng.image_processing_epng import EpngImageProcessor
from modeling_epng.processing_epng import MAX_TARGET_PIXELS, EpngProcessor


@pytest.fixture
def processor(tokenizer):
    return EpngProcessor(EpngImageProcessor(size={"height": 64, "width": 64}), tokenizer)


@pytest.mark.parametrize("phrases", [["a dog"], [(0, 5)], ["a dog", "grass"]])
def test_flat_phrases_with_a_batch_of_narratives_name_the_nesting(processor, phrases):
    with pytest.raises(ValueError, match=r"one list of phrases per narrative.*phrases=\[\[phrases of t0\]"):
        processor(text=["a dog on grass"] * len(phrases), phrases=phrases)


def test_phrases_nested_too_deep_are_named(processor):
    with pytest.raises(ValueError, match="nested one level too deep"):
        processor(text="a dog on grass", phrases=[["a dog"]])


def test_correct_nestings_still_work(processor):
    single = processor(text="a dog on grass", phrases=["a dog", (9, 14)])
    batch = processor(text=["a dog on grass"], phrases=[["a dog", (9, 14)]])
    assert torch.equal(single["phrase_ids"], batch["phrase_ids"]) and single["phrase_mask"].tolist() == [[True, True]]


@pytest.mark.parametrize("span", [(0.0, 5), (0, 5.7), (True, 5)])
def test_non_integer_spans_are_refused(processor, span):
    with pytest.raises(ValueError, match=r"must hold integer character offsets"):
        processor(text="a dog on grass", phrases=[span])


def test_max_length_beyond_the_text_encoder_is_refused(processor):
    limit = processor.tokenizer.model_max_length
    with pytest.raises(ValueError, match=f"max_length={limit + 1}` exceeds the {limit} tokens"):
        processor(text="a dog " * 600, phrases=["a dog"], max_length=limit + 1)
    assert processor(text="a dog " * 600, phrases=["a dog"], max_length=limit)["input_ids"].shape == (1, limit)


@pytest.mark.parametrize(
    "target_size, message",
    [
        ((40.0, 56), r"\(height, width\) pair of integers"),
        ((40,), r"\(height, width\) pair of integers"),
        ((0, 56), "must be positive"),
        ((-40, 56), "must be positive"),
        ((50000, 50000), "above the limit of 178956970"),
    ],
)
def test_bad_target_sizes_are_refused_before_allocating(processor, target_size, message):
    logits = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match=message):
        processor.post_process_grounding(logits, [target_size])


@pytest.mark.parametrize("target_size", [(48, 40), (48, 32)])  # by F.interpolate, by the per-axis integer resize
def test_large_targets_are_resized_a_few_phrases_at_a_time(processor, monkeypatch, target_size):
    import modeling_epng.processing_epng as processing_epng

    logits = torch.randn(1, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    whole = processor.post_process_grounding(logits, [target_size])[0]
    monkeypatch.setattr(processing_epng, "_RESIZE_CHUNK_PIXELS", 2 * 48 * 40)  # two phrases per chunk
    chunked = processor.post_process_grounding(logits, [torch.tensor(target_size)])[0]
    assert torch.equal(whole["masks"], chunked["masks"]) and torch.equal(whole["scores"], chunked["scores"])
    assert MAX_TARGET_PIXELS == 178_956_970
    limit = processor.post_process_grounding(logits, [(48, 40)], max_target_pixels=48 * 40)
    assert limit[0]["masks"].shape == (5, 48, 40)
    with pytest.raises(ValueError, match="max_target_pixels"):
        processor.post_process_grounding(logits, [(48, 40)], max_target_pixels=48 * 40 - 1)
