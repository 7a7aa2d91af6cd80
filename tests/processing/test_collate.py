"""EpngCollator on hand-made PNG dataset examples."""

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_epng.image_processing_epng import EpngImageProcessor
from modeling_epng.processing_epng import EpngProcessor
from processing.collate import METADATA_KEYS, EpngCollator, as_records, pop_metadata

MODEL_INPUT_KEYS = {"pixel_values", "input_ids", "attention_mask", "phrase_ids", "phrase_mask"}
GRASS_ID, DOG_ID, CAT_ID = 3226010, 11, 300  # 3226010 needs all three RGB bytes


def panoptic_png(id_map):
    rgb = np.stack([id_map % 256, (id_map // 256) % 256, id_map // 65536], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def make_example(image_id="1", narrative_index=0, height=20, width=30, phrases_as_columns=False):
    """Bottom half grass, a dog in the top-left quarter and a cat in the top-right quarter."""
    id_map = np.full((height, width), GRASS_ID, np.int64)
    id_map[: height // 2, : width // 2] = DOG_ID
    id_map[: height // 2, width // 2 :] = CAT_ID
    caption = "Two animals, a dog and a cat, play on the grass."
    phrases = [
        {"text": "Two animals", "segment_ids": [DOG_ID, CAT_ID], "is_plural": True, "is_thing": True},
        {"text": "a dog", "segment_ids": [DOG_ID], "is_plural": False, "is_thing": True},
        {"text": "the grass", "segment_ids": [GRASS_ID], "is_plural": False, "is_thing": False},
    ]
    for phrase in phrases:
        phrase["start"] = caption.index(phrase["text"])
        phrase["end"] = phrase["start"] + len(phrase["text"])
    segments_info = [{"id": i, "category_id": 1, "iscrowd": 0, "is_thing": i != GRASS_ID, "area": 1, "bbox": [0] * 4}
                     for i in (GRASS_ID, DOG_ID, CAT_ID)]  # fmt: skip
    if phrases_as_columns:  # the dict-of-lists form some `datasets` versions return
        phrases = {key: [phrase[key] for phrase in phrases] for key in phrases[0]}
        segments_info = {key: [segment[key] for segment in segments_info] for key in segments_info[0]}
    return {
        "image": Image.new("RGB", (width, height), (90, 120, 30)),
        "image_id": image_id,
        "narrative_index": narrative_index,
        "caption": caption,
        "width": width,
        "height": height,
        "phrases": phrases,
        "panoptic_map": panoptic_png(id_map),
        "segments_info": segments_info,
    }


def make_short_example():
    example = make_example(image_id="2", narrative_index=3, height=24, width=16)
    example["caption"] = "A cat."
    example["phrases"] = [
        {"text": "A cat", "start": 0, "end": 5, "segment_ids": [CAT_ID], "is_plural": False, "is_thing": True}
    ]
    return example


@pytest.fixture
def collator(tokenizer):
    return EpngCollator(EpngProcessor(EpngImageProcessor(size={"height": 64, "width": 96}), tokenizer))


def test_collates_model_inputs_targets_and_metadata(collator):
    batch = collator([make_example(phrases_as_columns=True), make_short_example()])
    assert set(batch) == MODEL_INPUT_KEYS | {"mask_labels"} | set(METADATA_KEYS)
    assert batch["pixel_values"].shape == (2, 3, 64, 96)
    assert batch["phrase_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["phrase_is_plural"].tolist() == [[True, False, False], [False, False, False]]
    assert batch["phrase_is_thing"].tolist() == [[True, True, False], [True, False, False]]
    assert batch["original_sizes"].tolist() == [[20, 30], [24, 16]]
    assert batch["image_ids"] == ["1", "2"] and batch["narrative_indices"].tolist() == [0, 3]

    animals, dog, grass = batch["mask_labels"][0]
    assert animals[:32].all() and not animals[32:].any()  # plural: dog + cat = top half
    assert dog[:32, :48].all() and not dog[:, 48:].any() and not dog[32:].any()
    assert grass[32:].all() and not grass[:32].any()
    assert batch["mask_labels"][1, 0].any() and not batch["mask_labels"][1, 1:].any()

    tokens = collator.processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    phrase_ids = batch["phrase_ids"][0].tolist()
    assert [token for token, phrase in zip(tokens, phrase_ids, strict=True) if phrase == 2] == ["the", "grass"]


def test_model_inputs_only_and_pop_metadata(collator):
    examples = [make_example()]
    trainer_collator = EpngCollator(collator.processor, model_inputs_only=True)
    assert set(trainer_collator(examples)) == MODEL_INPUT_KEYS | {"mask_labels"}
    batch = collator(examples)
    metadata = pop_metadata(batch)
    assert set(metadata) == set(METADATA_KEYS) and set(batch) == MODEL_INPUT_KEYS | {"mask_labels"}
    no_targets = EpngCollator(collator.processor, return_targets=False)(examples)
    assert "mask_labels" not in no_targets and "phrase_is_thing" in no_targets


def test_collator_is_picklable(collator):
    examples = [make_example(), make_short_example()]
    restored = pickle.loads(pickle.dumps(collator))
    expected, actual = collator(examples), restored(examples)
    for key in ("pixel_values", "input_ids", "phrase_ids", "mask_labels"):
        assert torch.equal(actual[key], expected[key]), key


def test_works_as_dataloader_collate_fn(collator):
    loader = torch.utils.data.DataLoader([make_example(), make_short_example()] * 2, batch_size=2, collate_fn=collator)
    batches = list(loader)
    assert len(batches) == 2 and batches[1]["phrase_mask"].shape == (2, 3)


def test_as_records_accepts_both_layouts():
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert as_records(rows) == rows
    assert as_records({"a": [1, 2], "b": ["x", "y"]}) == rows
    assert as_records({}) == []


def test_phrase_offsets_must_match_caption(collator):
    example = make_example()
    example["phrases"][1]["start"] += 1
    with pytest.raises(ValueError, match="'a dog' of image 1 narrative 0 does not match"):
        collator([example])


def test_unknown_segment_id_raises(collator):
    example = make_example()
    example["phrases"][1]["segment_ids"] = [4242]
    with pytest.raises(ValueError, match="4242"):
        collator([example])


def test_exif_rotated_image_that_disagrees_with_annotation_raises(collator):
    example = make_example()
    exif = example["image"].getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 30x20 instead of 20x30
    buffer = io.BytesIO()
    example["image"].save(buffer, format="PNG", exif=exif.tobytes())
    example["image"] = Image.open(buffer)
    with pytest.raises(ValueError, match=r"Image 1 is \(30, 20\) \(H, W\) after EXIF orientation"):
        collator([example])


def test_panoptic_map_size_must_match_example(collator):
    example = make_example()
    example["height"] = 21
    with pytest.raises(ValueError, match=r"Panoptic map of image 1 is \(20, 30\)"):
        collator([example])


def test_narrative_without_phrases(collator):
    example = make_short_example()
    example["phrases"] = []
    alone = collator([example])
    assert alone["phrase_mask"].shape == (1, 0) and alone["mask_labels"].shape == (1, 0, 64, 96)
    assert (alone["phrase_ids"] == -1).all()
    mixed = collator([example, make_example()])
    assert mixed["phrase_mask"].tolist() == [[False] * 3, [True] * 3]
    assert not mixed["mask_labels"][0].any()
