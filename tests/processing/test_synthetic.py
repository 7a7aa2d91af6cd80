"""Tests of the synthetic benchmark generator: official layout, decodable ids, grammar coverage, learnability."""

import filecmp
import json
import re

import numpy as np
import PIL.Image
import pytest

from processing import synthetic


def _load(root, split):
    annotations = root / "annotations"
    panoptic = json.loads((annotations / f"panoptic_{split}.json").read_text())
    narratives = json.loads((annotations / f"png_coco_{split}.json").read_text())
    return panoptic, narratives


def _decode_ids(path):
    rgb = np.asarray(PIL.Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("synthetic"), num_train=20, num_val=6, seed=0)


def test_official_layout_and_counts(root):
    for split, count in (("train2017", 20), ("val2017", 6)):
        panoptic, narratives = _load(root, split)
        assert len(narratives) == count
        assert {"images", "annotations", "categories"} <= panoptic.keys()
        assert {c["isthing"] for c in panoptic["categories"]} == {0, 1}
        assert len(panoptic["images"]) == len(panoptic["annotations"]) == len({n["image_id"] for n in narratives})
        for image in panoptic["images"]:
            assert (root / "images" / split / image["file_name"]).is_file()
            assert image["file_name"].endswith(".jpg")
            png = root / "annotations" / "panoptic_segmentation" / split / f"{image['id']:012d}.png"
            assert png.is_file()
            assert image["width"] != image["height"]
            assert 160 <= min(image["width"], image["height"]) and max(image["width"], image["height"]) <= 320
        for narrative in narratives:
            assert isinstance(narrative["image_id"], str)
            assert narrative["caption"] == " ".join(s["utterance"] for s in narrative["segments"])
            for segment in narrative["segments"]:
                assert set(segment) == {"utterance", "segment_ids", "plural", "noun"}
                assert all(isinstance(i, str) for i in segment["segment_ids"])
    train_ids = {image["id"] for image in _load(root, "train2017")[0]["images"]}
    val_ids = {image["id"] for image in _load(root, "val2017")[0]["images"]}
    assert not train_ids & val_ids


def test_panoptic_pngs_match_segments_info(root):
    panoptic, _ = _load(root, "train2017")
    is_thing = {c["id"]: c["isthing"] for c in panoptic["categories"]}
    multi_byte = False
    for annotation in panoptic["annotations"]:
        ids = _decode_ids(root / "annotations" / "panoptic_segmentation" / "train2017" / annotation["file_name"])
        segments = annotation["segments_info"]
        assert set(np.unique(ids)) == {s["id"] for s in segments}  # every pixel labelled, no unknown id
        for segment in segments:
            mask = ids == segment["id"]
            assert mask.sum() == segment["area"]
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert segment["bbox"] == [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
            multi_byte |= segment["id"] > 65535
        num_things = sum(is_thing[s["category_id"]] for s in segments)
        assert 2 <= num_things <= 5
        assert len(segments) - num_things == 2  # one top and one bottom stuff band
    assert multi_byte


def test_grammar_covers_every_annotation_pattern(root):
    _, narratives = _load(root, "train2017")
    counts = {"plural": 0, "pronoun": 0, "ungrounded_noun": 0, "glue": 0, "stuff": 0, "position": 0}
    images_with_several_narratives = len(narratives) - len({n["image_id"] for n in narratives})
    for narrative in narratives:
        previous_ids = None
        for segment in narrative["segments"]:
            text, ids = segment["utterance"], segment["segment_ids"]
            if not segment["noun"]:
                counts["glue"] += 1
                assert not ids
                continue
            if not ids:
                counts["ungrounded_noun"] += 1
            elif text in ("it", "they"):
                counts["pronoun"] += 1
                assert ids == previous_ids  # coreference: the group named just before
                assert segment["plural"] == (text == "they")
            elif segment["plural"]:
                counts["plural"] += 1
                assert len(ids) >= 2 and re.match(r"(the )?(two|three) ", text)
            elif any(word in text for word in synthetic.STUFF):
                counts["stuff"] += 1
            counts["position"] += bool(re.search(r"(on the (left|right)|at the (top|bottom)|in the middle)$", text))
            previous_ids = ids
    assert all(count > 0 for count in counts.values()), counts
    assert images_with_several_narratives > 0


def test_colour_and_shape_words_determine_the_segments(root):
    """Learnability: within an image, (colour, shape) names exactly one group, whose pixels have that colour."""
    panoptic, narratives = _load(root, "train2017")
    annotations = {a["image_id"]: a for a in panoptic["annotations"]}
    shape_of = {c["id"]: c["name"] for c in panoptic["categories"] if c["isthing"]}
    for narrative in narratives:
        image_id = int(narrative["image_id"])
        segments = {s["id"]: s for s in annotations[image_id]["segments_info"]}
        image = np.asarray(PIL.Image.open(root / "images" / "train2017" / f"{image_id:012d}.jpg")).astype(float)
        ids_map = _decode_ids(root / "annotations" / "panoptic_segmentation" / "train2017" / f"{image_id:012d}.png")
        for segment in narrative["segments"]:
            words = segment["utterance"].split()
            colours = [w for w in words if w in synthetic.THING_COLOURS]
            shapes = [w.rstrip("s") for w in words if w.rstrip("s") in synthetic.THING_SHAPES]
            if not segment["segment_ids"] or not shapes:
                continue
            ids = [int(i) for i in segment["segment_ids"]]
            assert len(colours) == len(shapes) == 1
            # every thing of this colour and shape in the image is referenced, and nothing else
            same_kind = {
                i
                for i, s in segments.items()
                if shape_of.get(s["category_id"]) == shapes[0]
                and np.abs(image[ids_map == i].mean(0) - synthetic.THING_COLOURS[colours[0]]).max() < 30
            }
            assert same_kind == set(ids)


def test_deterministic_per_seed(tmp_path):
    first = synthetic.generate(tmp_path / "a", num_train=5, num_val=3, seed=7)
    second = synthetic.generate(tmp_path / "b", num_train=5, num_val=3, seed=7)
    other = synthetic.generate(tmp_path / "c", num_train=5, num_val=3, seed=8)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    _, mismatched, errors = filecmp.cmpfiles(first, second, [str(f) for f in files], shallow=False)
    assert not mismatched and not errors
    names = "annotations/png_coco_train2017.json"
    assert (first / names).read_bytes() != (other / names).read_bytes()


def test_cli(tmp_path, capsys):
    synthetic.main(["--output_dir", str(tmp_path / "cli"), "--train", "3", "--val", "2", "--seed", "1"])
    assert len(_load(tmp_path / "cli", "train2017")[1]) == 3
    assert len(_load(tmp_path / "cli", "val2017")[1]) == 2
    assert "3 train, 2 val" in capsys.readouterr().out
