"""EpngForPanopticNarrativeGrounding on unusual or bad inputs: batches without phrases, mismatched attention
masks, non-finite pixels, over-long token sequences, and losses in half precision or under autocast."""

import pytest
import torch

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding
from modeling_epng.image_processing_epng import EpngImageProcessor
from modeling_epng.processing_epng import EpngProcessor


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return EpngForPanopticNarrativeGrounding(EpngConfig.tiny(**overrides))


def text_inputs(batch_size=2, seq_len=9, num_phrases=2):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 2000, (batch_size, seq_len), generator=generator)
    phrase_ids = torch.full((batch_size, seq_len), -1)
    for phrase in range(num_phrases):
        phrase_ids[:, 1 + 2 * phrase] = phrase
    return {
        "pixel_values": torch.randn(batch_size, 3, 64, 64, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "phrase_ids": phrase_ids,
        "phrase_mask": torch.ones(batch_size, num_phrases, dtype=torch.bool),
    }


def test_a_batch_without_phrases_gives_empty_masks_a_zero_loss_and_empty_results(tokenizer):
    model = make_model().train()
    processor = EpngProcessor(EpngImageProcessor(size={"height": 64, "width": 64}), tokenizer)
    image = torch.randint(0, 255, (40, 56, 3), dtype=torch.uint8).numpy()
    inputs = processor(images=[image, image], text=["nothing here", "nor here"], phrases=[[], []])
    assert inputs["phrase_mask"].shape == (2, 0)
    labels = torch.zeros(2, 0, 64, 64, dtype=torch.bool)
    output = model(**inputs, mask_labels=labels)
    assert output.mask_logits.shape == (2, 0, 16, 16)
    assert output.loss.item() == 0 and output.bce_loss.item() == 0 and output.sal_loss.item() == 0
    assert output.loss.requires_grad
    output.loss.backward()  # the graph is intact: a training step on such a batch is a no-op, not a crash
    results = processor.post_process_grounding(output, [(40, 56), (40, 56)], inputs["phrase_mask"])
    assert [tuple(result["masks"].shape) for result in results] == [(0, 40, 56)] * 2
    assert [result["scores"].numel() for result in results] == [0, 0]


def test_attention_mask_of_another_shape_is_refused():
    inputs = text_inputs()
    inputs["attention_mask"] = inputs["attention_mask"][:, :-2]
    with pytest.raises(ValueError, match=r"attention_mask \(2, 7\) must have the shape of input_ids \(2, 9\)"):
        make_model()(**inputs)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixel_values_are_refused(bad_value):
    inputs = text_inputs()
    inputs["pixel_values"][1, 2, 10, 20] = bad_value
    with pytest.raises(ValueError, match="pixel_values contains NaN or infinite values"):
        make_model()(**inputs, mask_labels=torch.zeros(2, 2, 64, 64))


def test_token_sequence_longer_than_the_position_embeddings_is_refused():
    model = make_model()
    limit = model.config.text_config.max_position_embeddings
    inputs = text_inputs(seq_len=limit + 1)
    with pytest.raises(ValueError, match=f"input_ids has {limit + 1} tokens .* at most {limit}"):
        model(**inputs)


def saturated_logits(dtype):
    """Confident logits (|x| >= 12), whose sigmoid rounds to exactly 0 or 1 in float16, as the given dtype; every
    value is exactly representable in float16 and bfloat16, so both precisions see the same numbers."""
    generator = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (2, 2, 16, 16), generator=generator) * 2 - 1
    return (signs * (12 + torch.randint(0, 8, (2, 2, 16, 16), generator=generator))).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_losses_are_computed_in_float32_for_half_precision_inputs(dtype):
    model = make_model()
    labels = saturated_logits(torch.float32) < 0  # every logit confidently wrong
    embeddings = torch.randn(2, 2, 48).to(dtype), torch.randn(2, 48, 16, 16).to(dtype)
    phrase_mask = torch.ones(2, 2, dtype=torch.bool)
    reference = model.compute_loss(
        saturated_logits(torch.float32), *(e.float() for e in embeddings), labels, phrase_mask, (64, 64)
    )
    half = model.compute_loss(saturated_logits(dtype), *embeddings, labels, phrase_mask, (64, 64))
    for name in ("bce_loss", "dice_loss", "sal_loss", "loss"):
        assert half[name].dtype == torch.float32, name
        torch.testing.assert_close(half[name], reference[name], rtol=1e-5, atol=1e-5)


def test_losses_under_autocast_match_float32_losses_of_the_same_logits():
    model = make_model().eval()
    inputs = text_inputs()
    labels = torch.rand(2, 2, 64, 64, generator=torch.Generator().manual_seed(1)) > 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(**inputs, mask_labels=labels)
    assert output.mask_logits.dtype == torch.bfloat16 and output.loss.dtype == torch.float32
    reference = model.compute_loss(
        output.mask_logits.float(),
        output.phrase_embeddings.float(),
        output.pixel_embeddings.float(),
        labels,
        inputs["phrase_mask"],
        (64, 64),
    )
    torch.testing.assert_close(output.loss, reference["loss"], rtol=1e-6, atol=1e-6)
