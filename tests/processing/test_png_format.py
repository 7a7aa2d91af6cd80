"""Tests of the official-format reader: schema, offsets, thing/stuff rule, streaming, and bad-data errors."""

import io
import json
import pickle
import shutil

import PIL.Image
import pytest

from processing import synthetic
from processing.png_errors import (
    CorruptFileError,
    InconsistentAnnotationError,
    MissingFileError,
    PngFormatError,
    UtteranceMismatchError,
)
from processing.png_format import PNG_FEATURES, PngFormatReader, _json_stream, locate_utterances


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("png"), num_train=12, num_val=4, seed=3)


@pytest.fixture
def root(source, tmp_path):
    """A private copy that a test may damage."""
    return shutil.copytree(source, tmp_path / "root")


def _edit_narratives(root, split, edit):
    path = root / "annotations" / f"png_coco_{split}.json"
    narratives = json.loads(path.read_text())
    edit(narratives)
    path.write_text(json.dumps(narratives))


def test_examples_follow_the_schema(source):
    reader = PngFormatReader(source, "train2017")
    examples = list(reader.iter_examples())
    assert len(reader) == len(examples) == 12
    assert not reader.report.counts
    narratives = json.loads((source / "annotations" / "png_coco_train2017.json").read_text())
    for example, narrative in zip(examples, narratives, strict=True):
        assert set(example) == set(PNG_FEATURES)
        assert example["image_id"] == narrative["image_id"]
        assert example["image"]["bytes"][:2] == b"\xff\xd8"  # JPEG
        assert example["panoptic_map"]["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
        grounded = [s for s in narrative["segments"] if s["noun"] and s["segment_ids"]]
        assert [p["text"] for p in example["phrases"]] == [s["utterance"] for s in grounded]
        assert [p["segment_ids"] for p in example["phrases"]] == [[int(i) for i in s["segment_ids"]] for s in grounded]
        assert [p["is_plural"] for p in example["phrases"]] == [s["plural"] for s in grounded]
        for phrase in example["phrases"]:
            assert example["caption"][phrase["start"] : phrase["end"]] == phrase["text"]
        segment_is_thing = {s["id"]: s["is_thing"] for s in example["segments_info"]}
        for phrase in example["phrases"]:
            assert phrase["is_thing"] == segment_is_thing[phrase["segment_ids"][0]]
            assert phrase["is_thing"] == (not any(word in phrase["text"] for word in synthetic.STUFF))
    # the features object accepts the examples as they are
    assert PNG_FEATURES.encode_example(examples[0])["image"]["bytes"] == examples[0]["image"]["bytes"]
    indices = {}
    for example in examples:
        assert example["narrative_index"] == indices.get(example["image_id"], 0)
        indices[example["image_id"]] = example["narrative_index"] + 1
    assert max(indices.values()) >= 2  # some image has several narratives


def test_reading_a_range_matches_the_full_pass(source):
    reader = PngFormatReader(source, "train2017")
    everything = [(e["image_id"], e["narrative_index"], e["caption"]) for e in reader.iter_examples()]
    for start, stop in ((0, 3), (5, 9), (11, 40)):
        part = [(e["image_id"], e["narrative_index"], e["caption"]) for e in reader.iter_examples(start, stop)]
        assert part == everything[start:stop]
    # the reader survives pickling (conversion workers receive it)
    assert len(list(pickle.loads(pickle.dumps(reader)).iter_examples(2, 4))) == 2


def test_locate_utterances_tolerates_whitespace():
    caption = "In  this image we can see\ta red circle.And the sky"
    spans = locate_utterances(caption, ["In this image", "we can see", "a red circle.", "", " And the ", "sky"])
    assert spans[3] is None
    texts = [caption[start:end] for start, end in (spans[i] for i in (0, 1, 2, 4, 5))]
    assert texts == ["In  this image", "we can see", "a red circle.", "And the", "sky"]
    assert locate_utterances("a redcircle", ["a", "red circle"]) == [(0, 1), (2, 11)]
    with pytest.raises(LookupError, match="'blue square'"):
        locate_utterances("a red circle and a blue circle", ["a red circle", "and", "blue square"])
    # search is forward only: an utterance before the current position is not found
    with pytest.raises(LookupError):
        locate_utterances("the sky and the grass", ["the grass", "the sky"])


def test_mixed_thing_and_stuff_phrase_takes_the_last_segment_category(root):
    panoptic = json.loads((root / "annotations" / "panoptic_train2017.json").read_text())
    is_thing_category = {c["id"]: c["isthing"] for c in panoptic["categories"]}
    segments = panoptic["annotations"][0]["segments_info"]
    thing = next(str(s["id"]) for s in segments if is_thing_category[s["category_id"]])
    stuff = next(str(s["id"]) for s in segments if not is_thing_category[s["category_id"]])

    def mix(narratives):
        grounded = [s for s in narratives[0]["segments"] if s["noun"] and s["segment_ids"]]
        grounded[0]["segment_ids"] = [stuff, thing]
        grounded[1]["segment_ids"] = [thing, stuff]

    _edit_narratives(root, "train2017", mix)
    phrases = next(iter(PngFormatReader(root, "train2017")))["phrases"]
    assert [phrases[0]["is_thing"], phrases[1]["is_thing"]] == [True, False]


def test_json_stream_handles_chunk_boundaries(tmp_path):
    values = [{"caption": 'naïve café – ünïcode \u00e9\\"]', "n": 12345678901, "x": [1.5, None, True]}] * 5 + [7, []]
    path = tmp_path / "values.json"
    path.write_text(json.dumps(values, ensure_ascii=False), encoding="utf-8")
    for chunk_chars in (1, 3, 16, 1 << 20):
        with open(path, encoding="utf-8") as file:
            decoded = [value for _, value in _json_stream(file, path, chunk_chars=chunk_chars).array_items()]
        assert decoded == values
    path.write_text('[{"a": 1}, {"a": ')
    with open(path, encoding="utf-8") as file, pytest.raises(PngFormatError, match="values.json"):
        list(_json_stream(file, path, chunk_chars=4).array_items())


def _delete_image(root, image_id):
    (root / "images" / "train2017" / f"{image_id:012d}.jpg").unlink()


def _truncate_image(root, image_id):
    path = root / "images" / "train2017" / f"{image_id:012d}.jpg"
    path.write_bytes(path.read_bytes()[:-400])


def _flip_png_byte(root, image_id):
    path = root / "annotations" / "panoptic_segmentation" / "train2017" / f"{image_id:012d}.png"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _unknown_segment(root, image_id):
    def edit(narratives):
        grounded = next(s for s in narratives[0]["segments"] if s["segment_ids"])
        grounded["segment_ids"].append("1")  # ids below 256 are never generated

    _edit_narratives(root, "train2017", edit)


def _edit_panoptic_json(root, edit):
    path = root / "annotations" / "panoptic_train2017.json"
    panoptic = json.loads(path.read_text())
    edit(panoptic)
    path.write_text(json.dumps(panoptic))


def _segment_not_drawn(root, image_id):
    """Image 1 lists one more segment, never drawn in its PNG; its first narrative grounds a phrase on it."""

    def edit_panoptic(panoptic):
        annotation = next(a for a in panoptic["annotations"] if a["image_id"] == image_id)
        annotation["segments_info"].append({**annotation["segments_info"][0], "id": 255 * 256 * 256})

    def edit_narratives(narratives):
        next(s for s in narratives[0]["segments"] if s["segment_ids"])["segment_ids"] = [str(255 * 256 * 256)]

    _edit_panoptic_json(root, edit_panoptic)
    _edit_narratives(root, "train2017", edit_narratives)


def _duplicate_image_id(root, image_id):
    def edit(panoptic):
        entry = next(image for image in panoptic["images"] if image["id"] == image_id)
        panoptic["images"].append({**entry, "file_name": "000000000002.jpg"})

    _edit_panoptic_json(root, edit)


@pytest.mark.parametrize(
    "damage, error_class, reason, file_name",
    [
        (_delete_image, MissingFileError, "missing_image", "000000000001.jpg"),
        (_truncate_image, CorruptFileError, "corrupt_image", "000000000001.jpg"),
        (_flip_png_byte, CorruptFileError, "corrupt_panoptic_png", "000000000001.png"),
        (_unknown_segment, InconsistentAnnotationError, "unknown_segment_id", "png_coco_train2017.json"),
        (_segment_not_drawn, InconsistentAnnotationError, "segment_not_in_panoptic_png", "000000000001.png"),
        (_duplicate_image_id, InconsistentAnnotationError, "duplicate_image_id", "panoptic_train2017.json"),
    ],
)
def test_bad_data_errors_name_the_file_and_narrative(root, damage, error_class, reason, file_name):
    damage(root, 1)
    reader = PngFormatReader(root, "train2017")
    with pytest.raises(error_class) as raised:
        list(reader.iter_examples(strict=True))
    error = raised.value
    assert isinstance(error, ValueError)
    assert (error.reason, error.image_id, error.narrative_index, error.entry) == (reason, "1", 0, 0)
    assert file_name in str(error) and "narrative 0 of image '1'" in str(error)
    copy = pickle.loads(pickle.dumps(error))  # crosses process boundaries intact
    assert type(copy) is error_class and str(copy) == str(error) and copy.reason == reason
    # non-strict: the narrative is skipped and recorded
    reader = PngFormatReader(root, "train2017")
    kept = list(reader.iter_examples())
    assert reader.report.counts[reason] == 12 - len(kept) >= 1
    assert file_name in reader.report.examples[reason][0]


def test_missing_file_error_is_a_file_not_found_error(root):
    (root / "annotations" / "panoptic_segmentation" / "train2017" / "000000000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="missing_panoptic_png"):
        list(PngFormatReader(root, "train2017").iter_examples(strict=True))
    shutil.rmtree(root / "annotations" / "panoptic_segmentation")
    (root / "annotations" / "png_coco_val2017.json").unlink()
    with pytest.raises(FileNotFoundError, match="png_coco_val2017.json"):
        PngFormatReader(root, "val2017")


def test_utterance_mismatch_and_empty_narratives(root):
    def edit(narratives):
        narratives[0]["caption"] = narratives[0]["caption"].rsplit(" ", 1)[0]  # drop the last word
        for segment in narratives[1]["segments"]:
            segment["noun"] = False

    _edit_narratives(root, "train2017", edit)
    reader = PngFormatReader(root, "train2017")
    assert len(list(reader.iter_examples())) == 10
    assert reader.report.counts == {"utterance_mismatch": 1, "no_grounded_phrase": 1}
    assert reader.report.num_errors == 1
    with pytest.raises(UtteranceMismatchError, match="not found in the caption"):
        list(PngFormatReader(root, "train2017").iter_examples(strict=True))


def test_missing_panoptic_annotation_and_size_mismatch(root):
    path = root / "annotations" / "panoptic_train2017.json"
    panoptic = json.loads(path.read_text())
    panoptic["images"][0]["width"] += 1
    panoptic["annotations"].pop(1)
    path.write_text(json.dumps(panoptic))
    reader = PngFormatReader(root, "train2017")
    list(reader.iter_examples())
    assert reader.report.counts["size_mismatch"] >= 1
    assert reader.report.counts["missing_panoptic_annotation"] >= 1
    assert "image id 2 has no annotation" in reader.report.examples["missing_panoptic_annotation"][0]


def test_example_image_matches_its_declared_size(source):
    example = next(iter(PngFormatReader(source, "val2017")))
    with PIL.Image.open(io.BytesIO(example["image"]["bytes"])) as image:
        assert image.size == (example["width"], example["height"])
    assert isinstance(example["image"]["bytes"], bytes) and example["image"]["path"].endswith(".jpg")


def test_duplicate_image_id_error_names_the_repeats(root):
    _duplicate_image_id(root, 1)
    _edit_panoptic_json(root, lambda panoptic: panoptic["annotations"].append(panoptic["annotations"][0]))
    with pytest.raises(InconsistentAnnotationError, match="image id 1 has 2 image entries and 2 annotations"):
        list(PngFormatReader(root, "train2017").iter_examples(strict=True))


@pytest.mark.parametrize(
    "section, file_name, problem",
    [
        ("images", "../../../outside.jpg", "leaves its folder"),
        ("images", "/etc/passwd", "absolute path"),
        ("images", "C:\\Windows\\win.ini", "absolute path"),
        ("annotations", "sub/../../x.png", "leaves its folder"),
        ("images", "", "not a non-empty string"),
    ],
)
def test_file_names_leaving_the_root_are_refused(root, section, file_name, problem):
    (root.parent / "outside.jpg").write_bytes((root / "images" / "train2017" / "000000000001.jpg").read_bytes())

    def edit(panoptic):
        panoptic[section][0]["file_name"] = file_name

    _edit_panoptic_json(root, edit)
    with pytest.raises(PngFormatError, match=problem) as raised:
        PngFormatReader(root, "train2017")
    assert "panoptic_train2017.json" in str(raised.value) and "image id 1" in str(raised.value)
