"""EpngProcessor: phrase spans → phrase_ids, batching, truncation, targets, post-processing, Auto + save/load."""

import functools
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_epng.image_processing_epng import EpngImageProcessor
from modeling_epng.processing_epng import EpngProcessor, resolve_phrase_spans

TRICKY_TEXT = "Sunbathers at a café,  don't   mind the unbelievably tall skyscrapers!"


@pytest.fixture
def processor(tokenizer):
    return EpngProcessor(EpngImageProcessor(size={"height": 64, "width": 96}), tokenizer)


def tokens_with_phrase_ids(processor, inputs, index=0):
    length = int(inputs["attention_mask"][index].sum())
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][index][:length].tolist())
    return list(zip(tokens, inputs["phrase_ids"][index][:length].tolist(), strict=True))


def test_phrase_ids_on_tricky_text(processor):
    phrases = ["Sunbathers", "a café", "don't", "the unbelievably tall skyscrapers!"]
    inputs = processor(text=TRICKY_TEXT, phrases=phrases)
    assert tokens_with_phrase_ids(processor, inputs) == [
        ("[CLS]", -1),
        ("sun", 0), ("##bat", 0), ("##hers", 0),
        ("at", -1),
        ("a", 1), ("cafe", 1),
        (",", -1),
        ("don", 2), ("'", 2), ("t", 2),
        ("mind", -1),
        ("the", 3), ("un", 3), ("##bel", 3), ("##ie", 3), ("##va", 3), ("##bly", 3), ("tall", 3),
        ("skyscraper", 3), ("##s", 3), ("!", 3),
        ("[SEP]", -1),
    ]  # fmt: skip
    assert inputs["phrase_ids"].dtype == torch.long
    assert inputs["phrase_mask"].dtype == torch.bool and inputs["phrase_mask"].tolist() == [[True] * 4]
    assert "token_type_ids" not in inputs


def test_character_spans_and_partial_word_overlap(processor):
    # (1, 2) lies inside "Sunbathers": the token "sun" overlaps it; "skyscraper" without its "s".
    start = TRICKY_TEXT.index("skyscrapers")
    inputs = processor(text=TRICKY_TEXT, phrases=[(1, 2), (start, start + len("skyscraper"))])
    pairs = tokens_with_phrase_ids(processor, inputs)
    assert [pair for pair in pairs if pair[1] >= 0] == [("sun", 0), ("skyscraper", 1)]


def test_string_phrases_match_in_order_of_appearance():
    text = "the dog and the dog and a cat"
    assert resolve_phrase_spans(text, ["the dog", "the dog", "a cat"]) == [(0, 7), (12, 19), (24, 29)]
    assert resolve_phrase_spans(text, ["dog", (12, 15), "dog"]) == [(4, 7), (12, 15), (16, 19)]
    with pytest.raises(ValueError, match="'the dog' not found"):
        resolve_phrase_spans(text, ["the dog", "the dog", "the dog"])


@pytest.mark.parametrize(
    "phrases, message",
    [
        ([(0, 5), (3, 8)], r"Spans \(0, 5\) and \(3, 8\) of narrative 1 \('a red car"),
        ([(10, 100)], r"Span \(10, 100\) is outside narrative 1"),
        ([(-1, 3)], r"outside narrative 1"),
        ([(4, 4)], r"Span \(4, 4\) of narrative 1 .* is empty"),
        ([(5, 6)], r"Span \(5, 6\) of narrative 1 .* covers only whitespace"),
        (["blue"], r"'blue' not found in narrative 1"),
        ([(1, 2, 3)], r"must be a \(char_start, char_end\) pair"),
    ],
)
def test_bad_spans_raise_naming_narrative_and_span(processor, phrases, message):
    texts = ["fine text", "a red car  on a long road"]
    with pytest.raises(ValueError, match=message):
        processor(text=texts, phrases=[[(0, 4)], phrases])


def test_span_of_characters_the_tokenizer_drops_raises(processor):
    text = "a dog \u200b\u200b and a cat"  # zero-width spaces are not whitespace but give no token
    with pytest.raises(ValueError, match=r"Span \(6, 8\) .* of narrative 0 .* covers no token"):
        processor(text=text, phrases=[(6, 8)])


def test_batch_pads_phrases_and_tokens(processor):
    texts = ["a dog", "a cat sits on a very soft mat"]
    inputs = processor(text=texts, phrases=[["dog"], ["cat", "a very", "soft mat"]])
    assert inputs["input_ids"].shape == inputs["phrase_ids"].shape == inputs["attention_mask"].shape
    assert inputs["phrase_mask"].tolist() == [[True, False, False], [True, True, True]]
    padding = inputs["attention_mask"] == 0
    assert padding[0].any() and (inputs["phrase_ids"][padding] == -1).all()
    assert sorted(set(inputs["phrase_ids"][1].tolist())) == [-1, 0, 1, 2]


def test_truncation_drops_phrase_with_warning(processor):
    text = "a dog " * 20 + "and finally a tiny red kite"
    start = text.index("a tiny")
    with pytest.warns(UserWarning, match=r"Phrase 1 'tiny red kite' of narrative 0 .* truncation"):
        inputs = processor(text=text, phrases=[(0, 5), (start + 2, len(text))], max_length=16)
    assert inputs["input_ids"].shape[1] == 16
    assert inputs["phrase_mask"].tolist() == [[True, False]]
    assert (inputs["phrase_ids"] != 1).all()


def test_partially_truncated_phrase_is_kept(processor):
    text = "one two three four five six seven"
    inputs = processor(text=text, phrases=[(text.index("four"), len(text))], max_length=6)
    assert inputs["phrase_mask"].tolist() == [[True]]
    # [CLS] one two three four [SEP]: only "four" of the phrase survives.
    assert (inputs["phrase_ids"][0] == 0).tolist() == [False, False, False, False, True, False]


@pytest.mark.parametrize(
    ("texts", "phrases", "max_length"),
    [
        (TRICKY_TEXT, ["Sunbathers", "a café", "don't", "the unbelievably tall skyscrapers!"], 300),
        (["a dog", "a cat sits on a very soft mat [SEP] here"], [["dog"], ["cat", "a very", "mat [SEP]"]], 300),
        ("a dog " * 20 + "and finally a tiny red kite", [(0, 5), (134, 147)], 16),
        ("one two three four five six seven", [(15, 33)], 6),
    ],
)
def test_phrase_inputs_from_the_offsets_equal_a_call_with_the_phrases(processor, texts, phrases, max_length):
    with warnings.catch_warnings(record=True) as direct_warnings:
        warnings.simplefilter("always")
        direct = processor(text=texts, phrases=phrases, max_length=max_length)
    tokenized = processor(text=texts, max_length=max_length, return_offsets_mapping=True)
    assert "phrase_ids" not in tokenized and tokenized["offset_mapping"].shape == (*tokenized["input_ids"].shape, 2)
    assert (tokenized["offset_mapping"][tokenized["attention_mask"] == 0] == 0).all()
    with warnings.catch_warnings(record=True) as later_warnings:
        warnings.simplefilter("always")
        later = processor.phrase_inputs(texts, phrases, tokenized["offset_mapping"], max_length)
    assert [str(w.message) for w in later_warnings] == [str(w.message) for w in direct_warnings]
    assert bool(direct_warnings) == (max_length == 16)  # the truncated "tiny red kite"
    assert set(later) == {"phrase_ids", "phrase_mask"}
    for key in later:
        assert later[key].dtype == direct[key].dtype and torch.equal(later[key], direct[key])
    torch.testing.assert_close(tokenized["input_ids"], direct["input_ids"], rtol=0, atol=0)


def test_phrase_inputs_name_bad_offsets_and_spans(processor):
    text = "a dog \u200b\u200b and a cat"
    offsets = processor(text=text, return_offsets_mapping=True)["offset_mapping"]
    with pytest.raises(ValueError, match=r"Span \(6, 8\) .* covers no token"):
        processor.phrase_inputs(text, [(6, 8)], offsets)
    with pytest.raises(ValueError, match=r"`offset_mapping` must have shape \(B=1, T, 2\), got \(1, \d+\)"):
        processor.phrase_inputs(text, ["a dog"], offsets[..., 0])
    with pytest.raises(ValueError, match="one list of phrases per narrative"):
        processor.phrase_inputs([text], ["a dog"], offsets)


def test_text_only_and_image_only_calls(processor):
    text_only = processor(text="a dog", phrases=["dog"])
    assert "pixel_values" not in text_only and {"input_ids", "phrase_ids", "phrase_mask"} <= set(text_only)
    image_only = processor(images=Image.new("RGB", (50, 30)))
    assert set(image_only) == {"pixel_values"} and image_only["pixel_values"].shape == (1, 3, 64, 96)
    with pytest.raises(ValueError, match="Give `images`, `text` or both"):
        processor()
    with pytest.raises(ValueError, match="need the narratives"):
        processor(images=Image.new("RGB", (50, 30)), phrases=[(0, 1)])


def test_targets_are_padded_to_the_largest_phrase_count(processor):
    id_map = np.zeros((20, 30, 3), np.uint8)
    id_map[:, :15, 0] = 5  # segment 5 on the left half, 0 elsewhere
    images = [Image.new("RGB", (30, 20)), Image.new("RGB", (30, 20))]
    inputs = processor(
        images=images,
        text=["a dog", "a cat and a mat"],
        phrases=[["dog"], ["cat", "mat"]],
        panoptic_maps=[Image.fromarray(id_map)] * 2,
        phrase_segment_ids=[[[5]], [[5], [0]]],
    )
    mask_labels = inputs["mask_labels"]
    assert mask_labels.shape == (2, 2, 64, 96)
    assert mask_labels[0, 0, :, :48].all() and not mask_labels[0, 0, :, 48:].any()
    assert not mask_labels[0, 1].any()  # padding slot
    assert mask_labels[1, 1, :, 48:].all()
    with pytest.raises(ValueError, match="Narrative 1 has 2 phrases but 1 segment id lists"):
        processor(images=images, text=["a dog", "a cat and a mat"], phrases=[["dog"], ["cat", "mat"]],
                  panoptic_maps=[Image.fromarray(id_map)] * 2, phrase_segment_ids=[[[5]], [[5]]])  # fmt: skip


def test_images_and_texts_must_pair_up(processor):
    with pytest.raises(ValueError, match="2 images for 1 narratives"):
        processor(images=[Image.new("RGB", (8, 8))] * 2, text=["a dog"], phrases=[["dog"]])


def test_return_tensors_np(processor):
    inputs = processor(images=Image.new("RGB", (8, 8)), text="a dog", phrases=["dog"], return_tensors="np")
    assert isinstance(inputs["phrase_ids"], np.ndarray) and isinstance(inputs["pixel_values"], np.ndarray)
    with pytest.raises(ValueError, match="return_tensors"):
        processor(text="a dog", return_tensors="tf")


def test_slow_tokenizer_is_rejected():
    with pytest.raises(ValueError, match="fast tokenizer"):
        EpngProcessor(EpngImageProcessor(), types.SimpleNamespace(is_fast=False))


def test_post_processing_restores_non_square_original_size(processor):
    logits = torch.full((2, 3, 8, 8), -10.0)
    logits[0, 0] = 10.0  # whole image
    logits[0, 2, :, :4] = 10.0  # left half
    logits[1, 1, 2:6, 2:6] = 10.0  # centre block; phrase 0 of image 1 stays empty
    phrase_mask = torch.tensor([[True, False, True], [True, True, False]])
    target_sizes = [(37, 53), (20, 20)]
    results = processor.post_process_grounding(types.SimpleNamespace(mask_logits=logits), target_sizes, phrase_mask)

    first, second = results
    assert first["masks"].shape == (2, 37, 53) and first["masks"].dtype == torch.bool
    assert first["masks"][0].all()
    assert first["masks"][1][:, :26].all() and not first["masks"][1][:, 27:].any()
    torch.testing.assert_close(first["scores"][0], torch.sigmoid(torch.tensor(10.0)))
    assert second["masks"].shape == (2, 20, 20)
    assert not second["masks"][0].any() and second["scores"][0] == 0
    assert second["masks"][1][6:14, 6:14].all() and not second["masks"][1][:3].any()

    as_tensor_sizes = processor.post_process_grounding({"mask_logits": logits}, torch.tensor(target_sizes), phrase_mask)
    assert torch.equal(as_tensor_sizes[0]["masks"], first["masks"])
    all_phrases = processor.post_process_grounding(logits, target_sizes)
    assert all_phrases[0]["masks"].shape == (3, 37, 53)


def test_post_processing_threshold_and_shape_errors(processor):
    logits = torch.zeros(1, 1, 4, 4)  # probability exactly 0.5
    assert processor.post_process_grounding(logits, [(4, 4)])[0]["masks"].all()
    assert not processor.post_process_grounding(logits, [(4, 4)], threshold=0.6)[0]["masks"].any()
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_grounding(logits, [(4, 4), (4, 4)])
    with pytest.raises(ValueError, match="phrase_mask"):
        processor.post_process_grounding(logits, [(4, 4)], phrase_mask=torch.ones(1, 2, dtype=torch.bool))


def test_auto_classes_and_save_load_round_trip(tmp_path, processor):
    from transformers import AutoImageProcessor, AutoProcessor

    import modeling_epng  # noqa: F401  (registers the Auto classes)

    processor.save_pretrained(tmp_path / "processor")
    processor.image_processor.save_pretrained(tmp_path / "image_processor")
    assert not (tmp_path / "processor" / "config.json").exists()

    reloaded = AutoProcessor.from_pretrained(tmp_path / "processor")
    assert type(reloaded) is EpngProcessor
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "processor")) is EpngImageProcessor
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "image_processor")) is EpngImageProcessor

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    call = dict(images=image, text=TRICKY_TEXT, phrases=["a café", "don't"])
    expected, actual = processor(**call), reloaded(**call)
    assert set(actual) == set(expected)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


def test_post_processing_defaults_to_the_models_mask_threshold(tmp_path, tokenizer):
    from transformers import AutoProcessor

    from modeling_epng import EpngConfig
    from training.run_png import build_processor

    config = EpngConfig.tiny(mask_threshold=0.3)
    processor = build_processor(tokenizer, 64, config.mask_threshold)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert reloaded.mask_threshold == 0.3
    logits = torch.full((1, 1, 4, 4), -0.5)  # probability 0.38: a mask at 0.3, none at the default 0.5
    assert reloaded.post_process_grounding(logits, [(4, 4)])[0]["masks"].all()
    assert not reloaded.post_process_grounding(logits, [(4, 4)], threshold=0.5)[0]["masks"].any()
    with pytest.raises(ValueError, match="mask_threshold"):
        EpngProcessor(processor.image_processor, tokenizer, mask_threshold=1.5)


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.7123])
def test_post_processing_equals_the_plain_formula(processor, threshold):
    """Masks and scores equal, bit for bit, `p >= threshold` and the mean of `p` inside, with probabilities exactly
    at the threshold included (logit 0 is probability 0.5)."""
    logits = torch.randn(4, 9, 11, generator=torch.Generator().manual_seed(0)) * 3
    logits[1, :, :5] = 0.0
    logits[2] = -20.0  # an empty mask
    result = processor.post_process_image_grounding(logits, (37, 29), threshold)

    probabilities = torch.nn.functional.interpolate(
        logits.sigmoid()[None], size=(37, 29), mode="bilinear", align_corners=False
    )[0]
    masks = probabilities >= threshold
    scores = torch.where(masks, probabilities, 0.0).sum(dim=(1, 2)) / masks.sum(dim=(1, 2)).clamp(min=1)
    assert masks[1].any() and not masks[2].any()
    assert torch.equal(result["masks"], masks) and torch.equal(result["scores"], scores)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "torch"])
@pytest.mark.parametrize(
    "target_size",
    [(36, 44), (18, 11), (27, 88), (9 * 8, 11 * 5)]  # integer multiples of the masks' 9 x 11: one pass per phase
    + [(37, 29), (100, 23), (5, 7)],  # the others, with the CPU's blocked resize made to take them (5 x 7 shrinks)
)
def test_resizes_other_than_interpolate_match_it_within_a_rounding(processor, target_size, fused, monkeypatch):
    """The per-phase resize of integer multiples and the blocked resize of other large targets (here forced for small
    ones, with blocks of two rows, shorter than the runs of 11 rows that blend the same inputs at 100 / 9), and the
    fused kernel that numba compiles in their place, do not call `F.interpolate`, and give its masks, but for pixels
    within a float32 rounding of the threshold, and its scores to 1e-6."""
    import modeling_epng.mask_resize as mask_resize

    if fused:  # the test environment installs numba (epng[fast]): the kernel must compile there
        assert mask_resize._compiled_fused_kernel() is not None
    else:
        monkeypatch.setattr(mask_resize, "_compiled_fused_kernel", lambda: None)
    interpolate = torch.nn.functional.interpolate
    logits = torch.randn(5, 9, 11, generator=torch.Generator().manual_seed(1)) * 3
    logits[3] = -20.0
    probabilities = interpolate(logits.sigmoid()[None], size=target_size, mode="bilinear", align_corners=False)[0]

    def refuse(*args, **kwargs):
        raise AssertionError("F.interpolate called")

    monkeypatch.setattr(torch.nn.functional, "interpolate", refuse)
    monkeypatch.setattr(mask_resize, "_BLOCKED_RESIZE_MIN_PIXELS", 1)
    monkeypatch.setattr(mask_resize, "_RESIZE_BLOCK_PIXELS", 2 * 5 * target_size[1])
    result = processor.post_process_image_grounding(logits, target_size, 0.5)
    masks = probabilities >= 0.5
    scores = torch.where(masks, probabilities, 0.0).sum(dim=(1, 2)) / masks.sum(dim=(1, 2)).clamp(min=1)
    assert result["masks"].shape == masks.shape and masks.any() and not result["masks"][3].any()
    differing = result["masks"] != masks
    assert ((probabilities - 0.5).abs()[differing] < 1e-6).all()
    torch.testing.assert_close(result["scores"], scores, rtol=0, atol=1e-6)


def test_the_fused_kernel_is_left_out_where_numba_is_missing_or_cannot_compile(monkeypatch):
    """Without numba the torch routes run, silently; with a numba that fails to compile, they run after a warning that
    says so."""
    import sys

    import modeling_epng.mask_resize as mask_resize

    compiled = mask_resize._compiled_fused_kernel
    monkeypatch.setattr(mask_resize, "_compiled_fused_kernel", functools.cache(compiled.__wrapped__))
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    assert mask_resize._compiled_fused_kernel() is None

    class FailingNumba:
        @staticmethod
        def njit(*args, **kwargs):
            raise RuntimeError("no LLVM target")

    mask_resize._compiled_fused_kernel.cache_clear()
    monkeypatch.setitem(sys.modules, "numba", FailingNumba)
    with pytest.warns(RuntimeWarning, match="numba could not compile the fused mask resize.*no LLVM target"):
        assert mask_resize._compiled_fused_kernel() is None
    masks = torch.empty((2, 18, 22), dtype=torch.bool)
    probabilities = torch.rand(2, 9, 11, generator=torch.Generator().manual_seed(0))
    sums, counts = mask_resize.resize_and_threshold(probabilities, masks, 0.5)
    assert torch.equal(counts, masks.sum(dim=(1, 2), dtype=torch.int32))
