"""Synthetic Panoptic Narrative Grounding benchmark, written in the official on-disk format.

This is the project's embedded default dataset (demo, tests, CPU smoke training). Each image is small and
non-square (160–320 px per side, JPEG) with two stuff bands (sky or wall above, grass or water below) and 2–5
things (circle, square, triangle in red, green, blue or yellow, small or big). Narratives come from a small
grammar and cover every annotation pattern of the real benchmark:

- singular thing phrases named by colour + shape, with optional size and position words ("a big red circle on
  the left", "the blue square");
- plural phrases for groups of identical things ("two red circles": all their segment ids, ``plural`` true);
- coreference: a pronoun ("it"/"they") grounded to the segments of the phrase just before it;
- stuff phrases ("the sky", "green grass at the bottom");
- a noun without a segment (``noun`` true, empty ``segment_ids``: "a shadow") and glue words (``noun`` false).

Grounding is learnable from the words: within an image each (colour, shape) pair names exactly one group of
things, so colour and shape words alone determine a thing phrase's segments; stuff names are unique per image.
Panoptic ids are random 24-bit values (most need all three PNG channels), so id decoding is really exercised.
Generation is deterministic for a seed.

``--difficulty hard`` writes cluttered scenes instead (``processing.synthetic_hard``), in the same format.

CLI: ``python -m processing.synthetic --output_dir ROOT [--train 400] [--val 100] [--seed 0] [--image_style coco]
[--difficulty hard]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

from .synthetic_coco import IMAGE_STYLES, coco_scene, textured_image

THING_SHAPES = {"circle": 1, "square": 2, "triangle": 3}  # name -> category id
THING_COLOURS = {"red": (215, 40, 40), "green": (40, 185, 60), "blue": (40, 80, 225), "yellow": (240, 205, 40)}
# name -> (category id, RGB, band): stuff fills the top or the bottom band of the image.
STUFF = {
    "sky": (101, (140, 200, 240), "top"),
    "wall": (104, (165, 145, 125), "top"),
    "grass": (102, (75, 115, 50), "bottom"),
    "water": (103, (45, 115, 135), "bottom"),
}
CATEGORIES = [
    {"id": category_id, "name": name, "supercategory": "shape", "isthing": 1, "color": [128, 128, 128]}
    for name, category_id in THING_SHAPES.items()
] + [
    {"id": category_id, "name": name, "supercategory": "stuff", "isthing": 0, "color": list(rgb)}
    for name, (category_id, rgb, _) in STUFF.items()
]
IMAGE_SIZES = [(224, 160), (160, 224), (256, 192), (192, 256), (320, 240), (240, 320), (288, 176), (176, 288)]
SPLITS = {"train2017": 1, "val2017": 500_001}  # split -> first image id (ids are unique across splits)

_SMALL_HALF_SIZE, _BIG_HALF_SIZE = (10, 16), (22, 30)  # pixels, inclusive ranges
_NUMBER_WORDS = {2: "two", 3: "three"}
_STUFF_PHRASES = {
    "sky": ["the sky", "the blue sky", "a clear sky"],
    "wall": ["a wall", "the wall", "a brown wall"],
    "grass": ["green grass", "the grass", "some grass"],
    "water": ["the water", "some water", "calm water"],
}
_UNGROUNDED_NOUNS = ["a shadow", "a reflection", "the light"]


def _apart(box: tuple, other: tuple, gap: int = 4) -> bool:
    """Whether two `(x0, y0, x1, y1)` boxes are separated by more than `gap` pixels (things never touch)."""
    return box[0] > other[2] + gap or box[2] < other[0] - gap or box[1] > other[3] + gap or box[3] < other[1] - gap


def draw_thing(draw: PIL.ImageDraw.ImageDraw, shape: str, cx: int, cy: int, half: int, fill: int) -> None:
    """Draw a circle, square or triangle of half-size `half` centred on `(cx, cy)` into a label image."""
    box = [cx - half, cy - half, cx + half, cy + half]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)


def random_segment_ids(count: int, rng: np.random.Generator) -> list[int]:
    """`count` distinct random 24-bit segment ids: most need the G and B channels, so decoders are really tested."""
    segment_ids: list[int] = []
    while len(segment_ids) < count:
        candidate = int(rng.integers(256, 1 << 24))
        if candidate not in segment_ids:
            segment_ids.append(candidate)
    return segment_ids


def _draw_scene(rng: np.random.Generator) -> dict:
    """Random layout: image size, two stuff bands and groups of identical things placed without overlap."""
    width, height = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    top = str(rng.choice(["sky", "wall"]))
    bottom = str(rng.choice(["grass", "water"]))
    split_row = int(height * rng.uniform(0.35, 0.65))

    num_things = int(rng.integers(2, 6))
    pairs = [(colour, shape) for colour in THING_COLOURS for shape in THING_SHAPES]
    groups, remaining = [], num_things
    for pair_index in rng.permutation(len(pairs)):
        if remaining == 0:
            break
        count = 1
        if remaining >= 2 and rng.random() < 0.3:
            count = 3 if remaining >= 3 and rng.random() < 0.25 else 2
        colour, shape = pairs[pair_index]
        groups.append({"colour": colour, "shape": shape, "things": [None] * count})
        remaining -= count

    placed = []  # (x0, y0, x1, y1) boxes, kept apart by a small gap
    for group in groups:
        for slot in range(len(group["things"])):
            for _ in range(100):
                big = rng.random() < 0.5
                low, high = _BIG_HALF_SIZE if big else _SMALL_HALF_SIZE
                half = int(rng.integers(low, high + 1))
                cx = int(rng.integers(half + 2, width - half - 2))
                cy = int(rng.integers(half + 2, height - half - 2))
                box = (cx - half, cy - half, cx + half, cy + half)
                if all(_apart(box, other) for other in placed):
                    placed.append(box)
                    group["things"][slot] = {"cx": cx, "cy": cy, "half": half, "big": big}
                    break
        group["things"] = [thing for thing in group["things"] if thing is not None]
    groups = [group for group in groups if group["things"]]
    return {"width": width, "height": height, "top": top, "bottom": bottom, "split_row": split_row, "groups": groups}


def _render(
    scene: dict, rng: np.random.Generator, image_style: str = "plain"
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Rasterises a scene; `image_style="coco"` paints textured segments (`processing.synthetic_coco`).

    Returns:
        image (`np.ndarray` of shape `(height, width, 3)`, uint8), panoptic (`np.ndarray` of shape
        `(height, width, 3)`, uint8, id = R + 256·G + 256²·B) and the COCO `segments_info` list. Each group and
        stuff band also gets `segment_ids` filled in `scene`.
    """
    width, height = scene["width"], scene["height"]
    labels = PIL.Image.new("L", (width, height), 0)  # local segment index per pixel
    draw = PIL.ImageDraw.Draw(labels)
    draw.rectangle([0, scene["split_row"], width, height], fill=1)  # index 0: top band, 1: bottom band
    colours = [STUFF[scene["top"]][1], STUFF[scene["bottom"]][1]]
    categories = [STUFF[scene["top"]][0], STUFF[scene["bottom"]][0]]
    for group in scene["groups"]:
        for thing in group["things"]:
            index = len(colours)
            draw_thing(draw, group["shape"], thing["cx"], thing["cy"], thing["half"], index)
            thing["index"] = index
            colours.append(THING_COLOURS[group["colour"]])
            categories.append(THING_SHAPES[group["shape"]])
    labels = np.asarray(labels)

    segment_ids = random_segment_ids(len(colours), rng)
    id_table = np.array(segment_ids, dtype=np.int64)
    ids = id_table[labels]
    panoptic = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)
    if image_style == "coco":
        image = textured_image(labels, colours, rng)
    else:
        noise = rng.normal(0.0, 6.0, size=(height, width, 3))
        image = np.clip(np.array(colours, dtype=np.float64)[labels] + noise, 0, 255).astype(np.uint8)

    areas = np.bincount(labels.ravel(), minlength=len(colours))
    segments_info = []
    for index, (segment_id, category_id) in enumerate(zip(segment_ids, categories, strict=True)):
        rows = np.flatnonzero((labels == index).any(axis=1))
        cols = np.flatnonzero((labels == index).any(axis=0))
        bbox = [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
        segments_info.append(
            {"id": segment_id, "category_id": category_id, "iscrowd": 0, "bbox": bbox, "area": int(areas[index])}
        )
    scene["stuff_ids"] = {scene["top"]: segment_ids[0], scene["bottom"]: segment_ids[1]}
    for group in scene["groups"]:
        group["segment_ids"] = [segment_ids[thing["index"]] for thing in group["things"]]
    return image, panoptic, segments_info


def _position_words(thing: dict, width: int, height: int) -> str:
    if thing["cx"] < width / 3:
        return "on the left"
    if thing["cx"] > 2 * width / 3:
        return "on the right"
    if thing["cy"] < height / 3:
        return "at the top"
    if thing["cy"] > 2 * height / 3:
        return "at the bottom"
    return "in the middle"


def _group_phrase(group: dict, scene: dict, rng: np.random.Generator) -> str:
    """Noun phrase naming a group: colour and shape always, size and position words sometimes."""
    count = len(group["things"])
    if count > 1:
        article = "the " if rng.random() < 0.3 else ""
        return f"{article}{_NUMBER_WORDS[count]} {group['colour']} {group['shape']}s"
    thing = group["things"][0]
    words = [str(rng.choice(["a", "the"]))]
    if rng.random() < 0.4:
        words.append("big" if thing["big"] else "small")
    words += [group["colour"], group["shape"]]
    if rng.random() < 0.5:
        words.append(_position_words(thing, scene["width"], scene["height"]))
    return " ".join(words)


def _narrative(scene: dict, rng: np.random.Generator) -> list[dict]:
    """One narrative as the official list of segments ``{utterance, segment_ids, plural, noun}``."""

    def glue(text):
        return {"utterance": text, "segment_ids": [], "plural": False, "noun": False}

    def group_ref(group, text=None):
        return {
            "utterance": text or _group_phrase(group, scene, rng),
            "segment_ids": [str(i) for i in group["segment_ids"]],
            "plural": len(group["segment_ids"]) > 1,
            "noun": True,
        }

    def stuff_ref(name, with_position):
        text = str(rng.choice(_STUFF_PHRASES[name]))
        if with_position:
            text += " at the top" if STUFF[name][2] == "top" else " at the bottom"
        return {"utterance": text, "segment_ids": [str(scene["stuff_ids"][name])], "plural": False, "noun": True}

    groups = [scene["groups"][i] for i in rng.permutation(len(scene["groups"]))]
    first = groups[:2] if len(groups) > 1 and rng.random() < 0.6 else groups[:1]
    if len(first) == 2:
        opening = [glue("In this image we can see"), group_ref(first[0]), glue("and"), group_ref(first[1])]
        opening.append(glue("in the picture."))
    else:
        opening = [glue("In this picture I can see"), group_ref(first[0]), glue("in the foreground.")]

    sentences = []
    for index, group in enumerate(groups[len(first) :]):
        other = groups[index % len(first)]  # an already-mentioned group
        template = rng.integers(3)
        if template == 0:
            sentences.append([glue("There is" if len(group["things"]) == 1 else "There are"), group_ref(group)])
            sentences[-1] += [glue("near"), group_ref(other), glue("in this image.")]
        elif template == 1:
            sentences.append([glue("We can also notice"), group_ref(group), glue("here.")])
        else:
            sentences.append([glue("On the other side there is"), group_ref(group), glue("as well.")])
    if rng.random() < 0.5:  # coreference: the pronoun is grounded to the group named just before it
        group = groups[rng.integers(len(groups))]
        plural = len(group["things"]) > 1
        size = "big" if all(thing["big"] for thing in group["things"]) else "small"
        sentences.append(
            [glue("I can also see"), group_ref(group), glue("and"), group_ref(group, "they" if plural else "it")]
            + [glue(f"{'look' if plural else 'looks'} {size}.")]
        )
    if rng.random() < 0.7:
        sentences.append(
            [glue("At the top there is"), stuff_ref(scene["top"], False), glue("and at the bottom there is")]
            + [stuff_ref(scene["bottom"], False), glue("in this picture.")]
        )
    else:
        name = str(rng.choice([scene["top"], scene["bottom"]]))
        sentences.append([glue("In the background there is"), stuff_ref(name, True), glue("in this image.")])
    if rng.random() < 0.3:
        noun = str(rng.choice(_UNGROUNDED_NOUNS))
        sentences.append(
            [glue("We can also see"), {"utterance": noun, "segment_ids": [], "plural": False, "noun": True}]
            + [glue("on the ground.")]
        )
    order = rng.permutation(len(sentences))
    return opening + [segment for i in order for segment in sentences[i]]


def _easy_example(rng: np.random.Generator, image_style: str) -> tuple[dict, np.ndarray, np.ndarray, list, list]:
    """(scene, image, panoptic, segments_info, categories) of one easy scene; `_narrative(scene, rng)` words it."""
    scene = _draw_scene(rng)
    if image_style == "coco":
        scene = coco_scene(scene)
    return scene, *_render(scene, rng, image_style), CATEGORIES


def _hard_example(rng: np.random.Generator, image_style: str) -> tuple[dict, np.ndarray, np.ndarray, list, list]:
    from .synthetic_hard import HARD_CATEGORIES, draw_hard_scene, render_hard_scene  # it imports this module

    scene = draw_hard_scene(rng)
    return scene, *render_hard_scene(scene, rng), HARD_CATEGORIES


def _hard_narrative(scene: dict, rng: np.random.Generator) -> list[dict]:
    from .synthetic_hard import hard_narrative

    return hard_narrative(scene, rng)


DIFFICULTIES = {"easy": (_easy_example, _narrative), "hard": (_hard_example, _hard_narrative)}


def _write_split(
    root: Path, split: str, num_narratives: int, rng: np.random.Generator, image_style: str, difficulty: str
) -> None:
    images_dir = root / "images" / split
    panoptic_dir = root / "annotations" / "panoptic_segmentation" / split
    images_dir.mkdir(parents=True, exist_ok=True)
    panoptic_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, narratives = [], [], []
    image_id = SPLITS[split]
    make_example, make_narrative = DIFFICULTIES[difficulty]
    while len(narratives) < num_narratives:
        scene, image, panoptic, segments_info, categories = make_example(rng, image_style)
        file_name, panoptic_name = f"{image_id:012d}.jpg", f"{image_id:012d}.png"
        PIL.Image.fromarray(image).save(images_dir / file_name, quality=90)
        PIL.Image.fromarray(panoptic).save(panoptic_dir / panoptic_name)
        images.append({"id": image_id, "file_name": file_name, "width": scene["width"], "height": scene["height"]})
        annotations.append({"image_id": image_id, "file_name": panoptic_name, "segments_info": segments_info})
        # Some images get a second, independently worded narrative (as in the real benchmark).
        num_for_image = 2 if num_narratives - len(narratives) >= 2 and rng.random() < 0.25 else 1
        for _ in range(num_for_image):
            segments = make_narrative(scene, rng)
            caption = " ".join(segment["utterance"] for segment in segments)
            narratives.append({"image_id": str(image_id), "caption": caption, "segments": segments})
        image_id += 1
    panoptic_json = {
        "info": {"description": "EPNG synthetic PNG benchmark", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    annotations_dir = root / "annotations"
    (annotations_dir / f"panoptic_{split}.json").write_text(json.dumps(panoptic_json))
    (annotations_dir / f"png_coco_{split}.json").write_text(json.dumps(narratives))


def generate(
    output,
    num_train: int = 400,
    num_val: int = 100,
    seed: int = 0,
    image_style: str = "plain",
    difficulty: str = "easy",
) -> Path:
    """Writes a synthetic benchmark (splits ``train2017`` and ``val2017``) in the official format.

    Args:
        output (`str` or `Path`): benchmark root to create (``images/`` and ``annotations/`` go inside).
        num_train, num_val (`int`): number of narratives per split (images hold one or two narratives each).
        seed (`int`): the same seed always gives the same files.
        image_style (`str`): ``"plain"`` (small flat images) or ``"coco"`` (640 px textured JPEGs of about 150 KB,
            see `processing.synthetic_coco`).
        difficulty (`str`): ``"easy"`` (the scenes described above) or ``"hard"`` (cluttered scenes whose same-kind
            things are told apart by position, size or relation: `processing.synthetic_hard`; plain images only).

    Returns:
        `Path` of the root.
    """
    if image_style not in IMAGE_STYLES:
        raise ValueError(f"image_style must be one of {IMAGE_STYLES}, got {image_style!r}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}")
    if difficulty == "hard" and image_style != "plain":
        raise ValueError(f"difficulty='hard' scenes have plain images only, got image_style={image_style!r}")
    root = Path(output)
    for split_index, (split, count) in enumerate((("train2017", num_train), ("val2017", num_val))):
        _write_split(root, split, count, np.random.default_rng([seed, split_index]), image_style, difficulty)
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="benchmark root to write")
    parser.add_argument("--train", type=int, default=400, help="number of train2017 narratives")
    parser.add_argument("--val", type=int, default=100, help="number of val2017 narratives")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image_style", choices=IMAGE_STYLES, default="plain", help="coco: 640 px textured JPEGs of about 150 KB"
    )
    parser.add_argument("--difficulty", choices=sorted(DIFFICULTIES), default="easy", help="scene family")
    args = parser.parse_args(argv)
    root = generate(
        args.output_dir,
        num_train=args.train,
        num_val=args.val,
        seed=args.seed,
        image_style=args.image_style,
        difficulty=args.difficulty,
    )
    print(
        f"wrote a {args.difficulty} synthetic PNG benchmark ({args.train} train, {args.val} val narratives) to {root}"
    )


if __name__ == "__main__":
    main()
