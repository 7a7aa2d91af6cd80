"""Hard synthetic PNG scenes (`python -m processing.synthetic --difficulty hard`), in the same official format.

Where the easy scenes (`processing.synthetic`) name every group by a unique colour + shape, these scenes are
cluttered so that locality and phrase-pixel consistency matter:

- 7-12 things, most of them instances of two or three repeated kinds (e.g. four red circles), so colour and shape
  alone do not say which; a phrase tells instances apart only by position ("the leftmost red circle", "the red
  circles on the left"), size ("the small red circle") or relation to a unique landmark thing ("the red circle to
  the left of the blue square");
- plural phrases ground groups spread across the image ("the four red circles") or the part of a group in one half
  ("the two triangles at the bottom", possibly of several colours);
- small things (down to 14 px across in 160-320 px images) next to big ones;
- three or four stuff regions: a top band, a middle band, and a bottom band that is often split into a left and a
  right part ("the water on the right").

Every phrase is unambiguous by construction: a description is used only when the things it matches, with a margin
at every boundary, are exactly the ones it grounds. Generation is deterministic for a seed.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageDraw

from .synthetic import IMAGE_SIZES, THING_COLOURS, THING_SHAPES, _apart, draw_thing, random_segment_ids

# name -> (category id, RGB, band)
HARD_STUFF = {
    "sky": (101, (140, 200, 240), "top"),
    "wall": (104, (165, 145, 125), "top"),
    "trees": (105, (30, 90, 45), "middle"),
    "fence": (106, (120, 95, 70), "middle"),
    "grass": (102, (75, 115, 50), "bottom"),
    "water": (103, (45, 115, 135), "bottom"),
    "sand": (107, (210, 190, 140), "bottom"),
    "road": (108, (95, 95, 100), "bottom"),
}
HARD_CATEGORIES = [
    {"id": category_id, "name": name, "supercategory": "shape", "isthing": 1, "color": [128, 128, 128]}
    for name, category_id in THING_SHAPES.items()
] + [
    {"id": category_id, "name": name, "supercategory": "stuff", "isthing": 0, "color": list(rgb)}
    for name, (category_id, rgb, _) in HARD_STUFF.items()
]
_SMALL_HALF_SIZE, _BIG_HALF_SIZE = (7, 11), (15, 22)  # pixels, inclusive ranges
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_MARGIN = 0.08  # fraction of the image side that separates "left of" from "right of", halves, extremes
_EXTREMES = {  # word -> (coordinate, sign): the thing with the extreme value of sign * coordinate
    "leftmost": ("cx", -1),
    "rightmost": ("cx", 1),
    "topmost": ("cy", -1),
    "lowest": ("cy", 1),
}
_HALVES = {"on the left": ("cx", -1), "on the right": ("cx", 1), "at the top": ("cy", -1), "at the bottom": ("cy", 1)}
_RELATIONS = {"to the left of": ("cx", -1), "to the right of": ("cx", 1), "above": ("cy", -1), "below": ("cy", 1)}
_UNGROUNDED_NOUNS = ["a shadow", "a reflection", "the light"]


def draw_hard_scene(rng: np.random.Generator) -> dict:
    """Random layout: stuff regions and things of repeated and unique kinds, placed without overlap."""
    width, height = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    names = {band: [n for n, (_, _, b) in HARD_STUFF.items() if b == band] for band in ("top", "middle", "bottom")}
    first_row = int(height * rng.uniform(0.25, 0.4))
    second_row = int(height * rng.uniform(0.5, 0.65))
    regions = [
        {"name": str(rng.choice(names["top"])), "box": (0, 0, width, first_row), "where": "at the top"},
        {"name": str(rng.choice(names["middle"])), "box": (0, first_row, width, second_row), "where": "in the middle"},
    ]
    bottom = [str(name) for name in rng.permutation(names["bottom"])[:2]]
    if rng.random() < 0.6:
        split_column = int(width * rng.uniform(0.35, 0.65))
        regions.append({"name": bottom[0], "box": (0, second_row, split_column, height), "where": "on the left"})
        regions.append({"name": bottom[1], "box": (split_column, second_row, width, height), "where": "on the right"})
    else:
        regions.append({"name": bottom[0], "box": (0, second_row, width, height), "where": "at the bottom"})

    kinds = [(colour, shape) for colour in THING_COLOURS for shape in THING_SHAPES]
    order = rng.permutation(len(kinds))
    num_repeated, num_unique = int(rng.integers(2, 4)), int(rng.integers(1, 4))
    counts = [int(rng.integers(2, 5)) for _ in range(num_repeated)] + [1] * num_unique
    things, placed = [], []
    for kind_index, count in zip(order, counts, strict=False):
        colour, shape = kinds[kind_index]
        for _ in range(count):
            for _ in range(200):
                big = rng.random() < 0.4
                low, high = _BIG_HALF_SIZE if big else _SMALL_HALF_SIZE
                half = int(rng.integers(low, high + 1))
                cx = int(rng.integers(half + 2, width - half - 2))
                cy = int(rng.integers(half + 2, height - half - 2))
                box = (cx - half, cy - half, cx + half, cy + half)
                if all(_apart(box, other, gap=3) for other in placed):
                    placed.append(box)
                    things.append({"colour": colour, "shape": shape, "cx": cx, "cy": cy, "half": half, "big": big})
                    break
    return {"width": width, "height": height, "regions": regions, "things": things}


def render_hard_scene(scene: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Rasterises a hard scene into (image, panoptic PNG array, segments_info); fills `segment_id` of every thing
    and region in `scene`. Same conventions as `processing.synthetic` (random 24-bit ids, JPEG noise)."""
    width, height = scene["width"], scene["height"]
    labels = PIL.Image.new("L", (width, height), 0)
    draw = PIL.ImageDraw.Draw(labels)
    colours, categories = [], []
    for region in scene["regions"]:
        x0, y0, x1, y1 = region["box"]
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=len(colours))
        region["index"] = len(colours)
        category_id, rgb, _ = HARD_STUFF[region["name"]]
        colours.append(rgb)
        categories.append(category_id)
    for thing in scene["things"]:
        index = len(colours)
        draw_thing(draw, thing["shape"], thing["cx"], thing["cy"], thing["half"], index)
        thing["index"] = index
        colours.append(THING_COLOURS[thing["colour"]])
        categories.append(THING_SHAPES[thing["shape"]])
    labels = np.asarray(labels)

    segment_ids = random_segment_ids(len(colours), rng)
    ids = np.array(segment_ids, dtype=np.int64)[labels]
    panoptic = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)
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
    for item in scene["regions"] + scene["things"]:
        item["segment_id"] = segment_ids[item["index"]]
    return image, panoptic, segments_info


def _kind_words(colour: str | None, shape: str, count: int) -> str:
    noun = shape if count == 1 else f"{shape}s"
    return noun if colour is None else f"{colour} {noun}"


def _count_phrase(words: str, count: int, rng: np.random.Generator) -> str:
    if count == 1:
        return f"the {words}"
    if count in _NUMBER_WORDS and rng.random() < 0.7:
        return f"the {_NUMBER_WORDS[count]} {words}"
    return f"all the {words}"


def thing_descriptions(scene: dict, rng: np.random.Generator) -> list[tuple[str, list[dict]]]:
    """Every unambiguous description of the scene's things as (phrase, grounded things)."""
    things, side = scene["things"], {"cx": scene["width"], "cy": scene["height"]}
    kinds = sorted({(t["colour"], t["shape"]) for t in things} | {(None, t["shape"]) for t in things}, key=str)
    unique = [t for t in things if sum((o["colour"], o["shape"]) == (t["colour"], t["shape"]) for o in things) == 1]
    descriptions = []
    for colour, shape in kinds:
        members = [t for t in things if t["shape"] == shape and colour in (None, t["colour"])]
        if colour is not None or len({t["colour"] for t in members}) > 1:
            descriptions.append((_count_phrase(_kind_words(colour, shape, len(members)), len(members), rng), members))
        if colour is None or len(members) < 2:
            continue  # instances are told apart within a colour + shape kind
        for word, (axis, sign) in _EXTREMES.items():
            values = sorted((sign * t[axis] for t in members), reverse=True)
            if values[0] - values[1] > _MARGIN * side[axis]:
                target = max(members, key=lambda t: sign * t[axis])
                descriptions.append((f"the {word} {colour} {shape}", [target]))
        for word in ("small", "big"):
            target = [t for t in members if (word == "big") == t["big"]]
            if len(target) == 1:
                descriptions.append((f"the {word} {colour} {shape}", target))
        for landmark in unique:
            if landmark["shape"] == shape and landmark["colour"] == colour:
                continue
            for word, (axis, sign) in _RELATIONS.items():
                offsets = [sign * (t[axis] - landmark[axis]) for t in members]
                margin = _MARGIN * side[axis]
                if sum(o > margin for o in offsets) == 1 and all(o > margin or o < -margin for o in offsets):
                    target = [t for t, o in zip(members, offsets, strict=True) if o > margin]
                    name = f"the {landmark['colour']} {landmark['shape']}"
                    descriptions.append((f"the {colour} {shape} {word} {name}", target))
    for colour, shape in kinds:
        members = [t for t in things if t["shape"] == shape and colour in (None, t["colour"])]
        for word, (axis, sign) in _HALVES.items():
            offsets = [sign * (t[axis] - side[axis] / 2) for t in members]
            margin = _MARGIN * side[axis]
            target = [t for t, o in zip(members, offsets, strict=True) if o > margin]
            if target and len(target) < len(members) and all(abs(o) > margin for o in offsets):
                words = _kind_words(colour, shape, len(target))
                descriptions.append((f"{_count_phrase(words, len(target), rng)} {word}", target))
    return descriptions


def hard_narrative(scene: dict, rng: np.random.Generator) -> list[dict]:
    """One narrative as the official list of segments ``{utterance, segment_ids, plural, noun}``."""

    def glue(text):
        return {"utterance": text, "segment_ids": [], "plural": False, "noun": False}

    def grounded(text, items):
        ids = [str(item["segment_id"]) for item in items]
        return {"utterance": text, "segment_ids": ids, "plural": len(ids) > 1, "noun": True}

    descriptions = thing_descriptions(scene, rng)
    # A random order that favours single things (most of them told apart from things of the same kind); every set of
    # things is described once.
    ranked = sorted(range(len(descriptions)), key=lambda i: rng.random() + (len(descriptions[i][1]) > 1) * 0.3)
    chosen, seen = [], set()
    for index in ranked:
        text, items = descriptions[index]
        key = tuple(sorted(id(item) for item in items))
        if key not in seen and len(chosen) < 8:
            seen.add(key)
            chosen.append((text, items))
    opening = [glue("In this picture we can see")]
    sentences = []
    for number, (text, items) in enumerate(chosen):
        if number < 2:
            opening += [grounded(text, items), glue("and" if number == 0 and len(chosen) > 1 else "in the picture.")]
            continue
        plural = len(items) > 1
        template = rng.integers(3)
        if template == 0:
            sentences.append([glue("There are" if plural else "There is"), grounded(text, items), glue("here.")])
        elif template == 1:
            sentences.append([glue("We can also notice"), grounded(text, items), glue("in this image.")])
        else:
            pronoun = grounded("they" if plural else "it", items)  # coreference: grounded like the phrase before
            size = "small" if all(not t["big"] for t in items) else "bright"
            sentences.append([glue("I can see"), grounded(text, items), glue("and"), pronoun])
            sentences[-1].append(glue(f"{'look' if plural else 'looks'} {size}."))
    regions = [scene["regions"][i] for i in rng.permutation(len(scene["regions"]))]
    for region in regions[: int(rng.integers(2, len(regions) + 1))]:
        text = f"the {region['name']}"
        if rng.random() < 0.6:
            text += f" {region['where']}"
        sentences.append([glue("In the background we can see"), grounded(text, [region]), glue("in this image.")])
    if rng.random() < 0.3:
        noun = str(rng.choice(_UNGROUNDED_NOUNS))
        sentences.append([glue("We can also see"), grounded(noun, []), glue("on the ground.")])
    order = rng.permutation(len(sentences))
    return opening + [segment for i in order for segment in sentences[i]]
