"""Tests of the hard synthetic scenes: official format, clutter, and phrases that ground exactly what they say."""

import json
import re

import datasets
import numpy as np
import PIL.Image
import pytest

from processing import synthetic
from processing.png_dataset import convert

NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
COLOURS = "|".join(synthetic.THING_COLOURS)
SHAPES = "|".join(synthetic.THING_SHAPES)
THING_PHRASE = re.compile(
    rf"^(?:the|all the) (?:(?P<number>{'|'.join(NUMBERS)}) )?(?:(?P<pick>leftmost|rightmost|topmost|lowest|small|big) )?"
    rf"(?:(?P<colour>{COLOURS}) )?(?P<shape>{SHAPES})(?P<plural>s?)"
    r"(?: (?P<half>on the left|on the right|at the top|at the bottom))?"
    rf"(?: (?P<relation>to the left of|to the right of|above|below) the (?P<lcolour>{COLOURS}) (?P<lshape>{SHAPES}))?$"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("hard"), num_train=24, num_val=4, seed=0, difficulty="hard")


def _things_of_image(root, annotation, categories):
    """Every thing segment of an image as {id: (shape, colour, cx, cy, width)} read back from the written files."""
    image_id = annotation["image_id"]
    image = np.asarray(PIL.Image.open(root / "images" / "train2017" / f"{image_id:012d}.jpg")).astype(float)
    rgb = np.asarray(
        PIL.Image.open(root / "annotations" / "panoptic_segmentation" / "train2017" / annotation["file_name"])
    )
    rgb = rgb.astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    things = {}
    for segment in annotation["segments_info"]:
        shape = categories[segment["category_id"]]
        if shape not in synthetic.THING_SHAPES:
            continue
        mean = image[ids == segment["id"]].mean(axis=0)
        colour = min(synthetic.THING_COLOURS, key=lambda c: np.abs(mean - synthetic.THING_COLOURS[c]).sum())
        x, y, width, height = segment["bbox"]
        things[segment["id"]] = (shape, colour, x + width / 2, y + height / 2, width)
    return things


def _interpret(match, things, size):
    """The segment ids a parsed thing phrase denotes, computed independently of the generator."""
    shape, colour = match["shape"], match["colour"]
    members = {i: t for i, t in things.items() if t[0] == shape and colour in (None, t[1])}
    pick = match["pick"]
    if pick in ("leftmost", "rightmost", "topmost", "lowest"):
        axis, sign = {"leftmost": (2, -1), "rightmost": (2, 1), "topmost": (3, -1), "lowest": (3, 1)}[pick]
        return {max(members, key=lambda i: sign * members[i][axis])}
    if pick in ("small", "big"):
        return {i for i, t in members.items() if (t[4] > 27) == (pick == "big")}
    if match["half"]:
        axis, sign = {"on the left": (2, -1), "on the right": (2, 1), "at the top": (3, -1), "at the bottom": (3, 1)}[
            match["half"]
        ]
        return {i for i, t in members.items() if sign * (t[axis] - size[axis - 2] / 2) > 0}
    if match["relation"]:
        (landmark,) = [t for t in things.values() if t[:2] == (match["lshape"], match["lcolour"])]
        axis, sign = {"to the left of": (2, -1), "to the right of": (2, 1), "above": (3, -1), "below": (3, 1)}[
            match["relation"]
        ]
        return {i for i, t in members.items() if sign * (t[axis] - landmark[axis]) > 0}
    return set(members)


def test_official_format_converts_strictly(root, tmp_path):
    convert(root, tmp_path / "converted", strict=True, progress=False)  # strict: any bad narrative raises
    loaded = datasets.load_dataset(str(tmp_path / "converted"))
    assert len(loaded["train"]) == 24 and len(loaded["validation"]) == 4
    assert all(len(phrases) >= 8 for phrases in loaded["train"]["phrases"])


def test_scenes_are_cluttered_with_repeated_kinds_and_several_stuff_regions(root):
    panoptic = json.loads((root / "annotations" / "panoptic_train2017.json").read_text())
    categories = {c["id"]: c["name"] for c in panoptic["categories"]}
    is_thing = {c["id"]: c["isthing"] for c in panoptic["categories"]}
    num_things, small = [], 0
    for annotation in panoptic["annotations"]:
        stuff = [s for s in annotation["segments_info"] if not is_thing[s["category_id"]]]
        assert 3 <= len(stuff) <= 4 and len({s["category_id"] for s in stuff}) == len(stuff)
        things = _things_of_image(root, annotation, categories)
        kinds = [t[:2] for t in things.values()]
        assert max(kinds.count(kind) for kind in kinds) >= 2  # same colour and shape, told apart otherwise
        num_things.append(len(things))
        small += sum(t[4] <= 23 for t in things.values())
    assert min(num_things) >= 5 and np.mean(num_things) >= 7
    assert small >= sum(num_things) / 3


def test_every_thing_phrase_grounds_exactly_what_it_says(root):
    panoptic = json.loads((root / "annotations" / "panoptic_train2017.json").read_text())
    narratives = json.loads((root / "annotations" / "png_coco_train2017.json").read_text())
    categories = {c["id"]: c["name"] for c in panoptic["categories"]}
    annotations = {a["image_id"]: a for a in panoptic["annotations"]}
    sizes = {image["id"]: (image["width"], image["height"]) for image in panoptic["images"]}
    seen = {"pick": 0, "half": 0, "relation": 0, "plural": 0, "spread": 0, "same kind told apart": 0}
    for narrative in narratives:
        image_id = int(narrative["image_id"])
        things = _things_of_image(root, annotations[image_id], categories)
        for segment in narrative["segments"]:
            match = THING_PHRASE.match(segment["utterance"])
            if not segment["noun"] or match is None:
                continue
            grounded = {int(i) for i in segment["segment_ids"]}
            assert grounded == _interpret(match, things, sizes[image_id]), segment["utterance"]
            assert segment["plural"] == (len(grounded) > 1) == bool(match["plural"])
            if match["number"]:
                assert NUMBERS[match["number"]] == len(grounded)
            for key in ("pick", "half", "relation", "plural"):
                seen[key] += bool(match[key])
            same_kind = {i for i, t in things.items() if t[:2] == things[next(iter(grounded))][:2]}
            seen["same kind told apart"] += len(grounded) == 1 and len(same_kind) > 1
            xs = [things[i][2] for i in grounded]
            seen["spread"] += len(grounded) > 1 and max(xs) - min(xs) > sizes[image_id][0] / 2
    assert all(count > 0 for count in seen.values()), seen


def test_deterministic_per_seed_and_cli(tmp_path, capsys):
    first = synthetic.generate(tmp_path / "a", num_train=3, num_val=2, seed=5, difficulty="hard")
    second = synthetic.generate(tmp_path / "b", num_train=3, num_val=2, seed=5, difficulty="hard")
    name = "annotations/png_coco_train2017.json"
    assert (first / name).read_bytes() == (second / name).read_bytes()
    synthetic.main(["--output_dir", str(tmp_path / "cli"), "--train", "3", "--val", "2", "--difficulty", "hard"])
    assert "hard synthetic PNG benchmark" in capsys.readouterr().out
    with pytest.raises(ValueError, match="difficulty"):
        synthetic.generate(tmp_path / "c", num_train=1, num_val=1, difficulty="medium")
