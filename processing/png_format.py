"""Reader for the official Panoptic Narrative Grounding (PNG) benchmark files.

The benchmark of González et al. (ICCV 2021) stores, for a split such as ``train2017``::

    ROOT/images/{split}/<file_name>                                COCO images
    ROOT/annotations/panoptic_{split}.json                          COCO panoptic json
    ROOT/annotations/panoptic_segmentation/{split}/<id:012d>.png    panoptic PNGs (id = R + 256·G + 256²·B)
    ROOT/annotations/png_coco_{split}.json                          narratives

[`PngFormatReader`] turns these files into one example per narrative, following [`PNG_FEATURES`]. It streams:
the narratives file is decoded one narrative at a time (it is never loaded whole), the panoptic json is kept as
a compact per-image index, and image/PNG bytes are read for one example at a time. The panoptic PNG of an image
is the ``file_name`` of its panoptic annotation (``<id:012d>.png`` when absent).

Decisions that the rest of the project relies on:

- A *grounded phrase* is a segment with ``noun`` true and a non-empty ``segment_ids``; nouns without segments and
  glue words do not become phrases. Narratives without any grounded phrase are skipped (reason
  ``"no_grounded_phrase"``), never an error.
- ``is_plural`` is the ``plural`` flag of the annotation.
- ``is_thing`` is the ``isthing`` flag of the category of the phrase's **last** listed segment. For phrases whose
  segments are all things or all stuff (the normal case) this is simply "thing"/"stuff"; for the rare mixed
  phrases it reproduces the reference PNG evaluation code, which overwrites the phrase category segment by
  segment, so that thing/stuff AR subsets stay comparable with published numbers.
- Character offsets: utterances are located in order by searching the caption forward from the end of the
  previous one, tolerating extra or missing whitespace inside and around an utterance. ``text`` is the matched
  caption slice, so ``caption[start:end] == text`` always holds (it differs from the raw utterance only in
  whitespace). An utterance that cannot be found is an ``"utterance_mismatch"``.
- Bad data raises a [`PngFormatError`] subclass whose message names the file and the narrative (image id, index
  of the narrative among that image's narratives, entry number in ``png_coco_{split}.json``). In non-strict
  iteration the narrative is skipped and recorded in a [`SkipReport`] instead.
"""

from __future__ import annotations

import io
import json
import re
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import PIL.Image
from datasets import Features, Image, List, Value

from .json_stream import JsonStream
from .png_checks import duplicated_ids, panoptic_segment_ids, unsafe_file_name_problem
from .png_errors import (
    ERROR_CLASSES,
    PngFormatError,
    SkipReport,
)

PNG_FEATURES = Features(
    {
        "image": Image(),
        "image_id": Value("string"),
        "narrative_index": Value("int32"),
        "caption": Value("string"),
        "width": Value("int32"),
        "height": Value("int32"),
        "phrases": List(
            {
                "text": Value("string"),
                "start": Value("int32"),
                "end": Value("int32"),
                "segment_ids": List(Value("int64")),
                "is_plural": Value("bool"),
                "is_thing": Value("bool"),
            }
        ),
        "panoptic_map": Image(),
        "segments_info": List(
            {
                "id": Value("int64"),
                "category_id": Value("int64"),
                "iscrowd": Value("int64"),
                "is_thing": Value("bool"),
                "area": Value("int64"),
                "bbox": List(Value("float64")),
            }
        ),
    }
)
"""Schema of one PNG example (one narrative).

Both ``Image`` columns hold ``{"bytes": file bytes, "path": bare file name}``; the bytes are what is stored (note that
`Features.encode_example` keeps a path instead of the bytes if a file of that name exists in the working directory).
"""


class _PanopticImage(NamedTuple):
    """Compact per-image record of the panoptic json (the full json is never kept in memory)."""

    file_name: str
    width: int
    height: int
    panoptic_file_name: str | None
    segments_json: str | None  # [[id, category_id, iscrowd, area, [x, y, w, h]], ...] as compact json


class NarrativeLocations(NamedTuple):
    """Where each narrative starts in the narratives file, and its index among the narratives of its image.

    Attributes:
        offsets (`array('q')` of shape `(num_narratives,)`): byte offset of each narrative's json object.
        narrative_indices (`array('l')` of shape `(num_narratives,)`): 0, 1, … over narratives of the same image,
            in file order; stored here because a reader starting mid-file cannot count earlier narratives.
    """

    offsets: array
    narrative_indices: array


_NON_SPACE = re.compile(r"\S")


def _json_stream(file, path: Path, **kwargs) -> JsonStream:
    return JsonStream(file, lambda detail: PngFormatError(detail, path=path), **kwargs)


def _load_panoptic_index(path: Path) -> tuple[dict[int, bool], dict[int, _PanopticImage], dict[int, str]]:
    """Reads `panoptic_{split}.json` into `(isthing per category id, compact record per image id, duplicated image
    ids)`; the last maps each image id listed more than once to what repeats it.

    Raises:
        [`PngFormatError`] for a malformed entry, or a `file_name` that is absolute or contains `..`.
    """
    images, annotations, is_thing = {}, {}, {}
    image_ids, annotation_image_ids = [], []

    def checked_file_name(file_name, what):
        problem = unsafe_file_name_problem(file_name)
        if problem is not None:
            raise PngFormatError(f"{what}: {problem}; file names must be relative to their folder", path=path)
        return file_name

    def add_image(entry):
        image_id = int(entry["id"])
        image_ids.append(image_id)
        file_name = checked_file_name(entry["file_name"], f"image entry of image id {image_id}")
        images[image_id] = (file_name, int(entry["width"]), int(entry["height"]))

    def add_annotation(entry):
        image_id = int(entry["image_id"])
        annotation_image_ids.append(image_id)
        file_name = entry.get("file_name")
        if file_name is not None:
            checked_file_name(file_name, f"annotation of image id {image_id}")
        segments = [
            [int(s["id"]), int(s["category_id"]), int(s.get("iscrowd", 0)), int(s["area"]), list(s["bbox"])]
            for s in entry["segments_info"]
        ]
        annotations[image_id] = (file_name, json.dumps(segments, separators=(",", ":")))

    def add_category(entry):
        is_thing[int(entry["id"])] = bool(entry["isthing"])

    callbacks = {"images": add_image, "annotations": add_annotation, "categories": add_category}
    with open(path, encoding="utf-8") as file:
        try:
            _json_stream(file, path).object_members(callbacks.get)
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, PngFormatError):
                raise
            raise PngFormatError(f"malformed panoptic json entry: {error!r}", path=path) from error
    records = {}
    for image_id, (file_name, width, height) in images.items():
        panoptic_file_name, segments_json = annotations.get(image_id, (None, None))
        records[image_id] = _PanopticImage(file_name, width, height, panoptic_file_name, segments_json)
    duplicates = {image_id: f"{count} image entries" for image_id, count in duplicated_ids(image_ids).items()}
    for image_id, count in duplicated_ids(annotation_image_ids).items():
        duplicates[image_id] = f"{duplicates[image_id]} and " if image_id in duplicates else ""
        duplicates[image_id] += f"{count} annotations"
    return is_thing, records, duplicates


def locate_utterances(caption: str, utterances: list[str]) -> list[tuple[int, int] | None]:
    """Character span of each utterance in `caption`, searching forward from the end of the previous one.

    Whitespace inside and around an utterance may differ from the caption (extra or missing spaces).

    Returns:
        `list` with one `(start, end)` per utterance (`None` for an empty utterance), such that
        `caption[start:end]` equals the utterance up to whitespace.

    Raises:
        `LookupError` naming the first utterance that cannot be found.
    """
    spans, position = [], 0
    for utterance in utterances:
        words = utterance.split()
        if not words:
            spans.append(None)
            continue
        stripped = " ".join(words)
        match_start = _NON_SPACE.search(caption, position)
        # Fast path (the normal case): the utterance follows the previous one, separated by whitespace only.
        if match_start and caption.startswith(stripped, match_start.start()):
            start = match_start.start()
            end = start + len(stripped)
        else:
            match = re.compile(r"\s*".join(map(re.escape, words))).search(caption, position)
            if match is None:
                raise LookupError(f"utterance {utterance!r} not found in the caption after character {position}")
            start, end = match.span()
        spans.append((start, end))
        position = end
    return spans


def _read_verified_image(path: Path, kind: str, fail) -> tuple[bytes, tuple[int, int], str]:
    """Reads an image file and checks that it decodes, without keeping its pixels.

    Args:
        kind (`str`): ``"image"`` or ``"panoptic_png"`` (selects the skip reasons).
        fail (`Callable`): builds the error to raise from `(reason, detail, path)`.

    Returns:
        `(file bytes, (width, height), PIL mode)`.
    """
    name = kind.replace("_", " ")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise fail(f"missing_{kind}", f"{name} not found", path) from None
    except OSError as error:
        raise fail(f"corrupt_{kind}", f"cannot read {name}: {error}", path) from None
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            size, mode, image_format = image.size, image.mode, image.format
            image.verify()  # checks PNG chunk CRCs; a no-op for JPEG, hence the reduced decode below
        if image_format == "JPEG":
            with PIL.Image.open(io.BytesIO(data)) as image:
                # Decoding at 1/8 scale still walks the whole entropy-coded stream (so truncation is detected)
                # while allocating 64x fewer pixels.
                image.draft(mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
                image.load()
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, struct.error, ...)
        raise fail(f"corrupt_{kind}", f"cannot decode {name}: {error}", path) from None
    return data, size, mode


class PngFormatReader:
    """Streams the examples of one split of the official PNG benchmark (see the module docstring).

    Args:
        root (`str` or `Path`): benchmark root, holding ``images/`` and ``annotations/``.
        split (`str`): split folder name, e.g. ``"train2017"`` or ``"val2017"``.

    Raises:
        `FileNotFoundError` if a json file of the split is missing; [`PngFormatError`] if it is not valid JSON.

    Example:
        ```python
        reader = PngFormatReader("data/png", "val2017")
        for example in reader.iter_examples():  # dicts following PNG_FEATURES
            ...
        print(reader.report.format())  # what was skipped and why
        ```
    """

    def __init__(self, root, split: str):
        self.root = Path(root)
        self.split = split
        annotations = self.root / "annotations"
        self.narratives_path = annotations / f"png_coco_{split}.json"
        self.panoptic_json_path = annotations / f"panoptic_{split}.json"
        self.panoptic_dir = annotations / "panoptic_segmentation" / split
        self.images_dir = self.root / "images" / split
        for path in (self.narratives_path, self.panoptic_json_path):
            if not path.is_file():
                raise FileNotFoundError(f"PNG benchmark file not found: {path} (split {split!r}, root {self.root})")
        self._category_is_thing, self._images, self._duplicate_image_ids = _load_panoptic_index(self.panoptic_json_path)
        self._drawn_segment_ids: tuple[Path, set[int]] | None = None  # of the last panoptic PNG read
        self._locations: NarrativeLocations | None = None
        self.report = SkipReport()

    def locate_narratives(self) -> NarrativeLocations:
        """Scans the narratives file once (cached); needed to start reading at any narrative."""
        if self._locations is None:
            offsets, narrative_indices, seen = array("q"), array("l"), Counter()
            # latin-1 maps bytes 1:1 to characters, so stream offsets are byte offsets usable with `seek`; the
            # only field read here, image_id, is ASCII.
            with open(self.narratives_path, encoding="latin-1") as file:
                for offset, narrative in _json_stream(file, self.narratives_path).array_items():
                    image_id = str(narrative.get("image_id")) if isinstance(narrative, dict) else None
                    offsets.append(offset)
                    narrative_indices.append(seen[image_id])
                    seen[image_id] += 1
            self._locations = NarrativeLocations(offsets, narrative_indices)
        return self._locations

    def __len__(self) -> int:
        """Number of narratives in the file (before skipping)."""
        return len(self.locate_narratives().offsets)

    def __iter__(self) -> Iterator[dict]:
        return self.iter_examples()

    def iter_examples(
        self, start: int = 0, stop: int | None = None, *, strict: bool = False, report: SkipReport | None = None
    ) -> Iterator[dict]:
        """Yields the examples of narratives `start` to `stop` (file order), one at a time.

        Args:
            start, stop (`int`): range of narrative entries in the narratives file (`stop=None`: to the end).
            strict (`bool`): raise the first [`PngFormatError`] instead of skipping the narrative.
            report ([`SkipReport`], *optional*): where skipped narratives are recorded (default: `self.report`).

        Yields:
            `dict` following [`PNG_FEATURES`].
        """
        report = self.report if report is None else report
        locations = self.locate_narratives()
        stop = len(locations.offsets) if stop is None else min(stop, len(locations.offsets))
        if start >= stop:
            return
        with open(self.narratives_path, "rb") as raw:
            raw.seek(locations.offsets[start])
            text = io.TextIOWrapper(raw, encoding="utf-8")
            narratives = _json_stream(text, self.narratives_path).array_items(opened=True)
            # range first: zip stops before pulling a narrative past `stop` from the stream.
            for entry, (_, narrative) in zip(range(start, stop), narratives, strict=False):
                narrative_index = locations.narrative_indices[entry]
                try:
                    example = self.build_example(narrative, entry, narrative_index)
                except PngFormatError as error:
                    if strict:
                        raise
                    report.record(error.reason, str(error))
                    continue
                if example is None:
                    image_id = narrative.get("image_id")
                    report.record(
                        "no_grounded_phrase",
                        f"{self.narratives_path}: narrative {narrative_index} of image {image_id!r} (entry #{entry})",
                    )
                    continue
                yield example

    def build_example(self, narrative: Any, entry: int, narrative_index: int) -> dict | None:
        """Validates one narrative entry and builds its example.

        Args:
            narrative: the decoded json entry ``{image_id, caption, segments}``.
            entry (`int`): its position in the narratives file; narrative_index (`int`): its index among the
                narratives of its image.

        Returns:
            `dict` following [`PNG_FEATURES`], or `None` when the narrative has no grounded phrase.

        Raises:
            [`PngFormatError`] subclass naming the file and the narrative.
        """
        image_id = str(narrative.get("image_id")) if isinstance(narrative, dict) else None

        def fail(reason, detail, path):
            location = dict(image_id=image_id, narrative_index=narrative_index, entry=entry)
            return ERROR_CLASSES[reason](detail, path=path, reason=reason, **location)

        try:
            caption, segments = narrative["caption"], narrative["segments"]
            utterances = [segment["utterance"] for segment in segments]
            if not isinstance(caption, str) or not all(isinstance(u, str) for u in utterances):
                raise TypeError("caption and utterances must be strings")
            image_key = int(image_id)
            grounded = [
                (position, [int(i) for i in segment["segment_ids"]], bool(segment.get("plural", False)))
                for position, segment in enumerate(segments)
                if segment.get("noun") and segment.get("segment_ids")
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise fail("malformed_narrative", f"malformed narrative: {error!r}", self.narratives_path) from None
        if image_key in self._duplicate_image_ids:
            detail = (
                f"image id {image_id} has {self._duplicate_image_ids[image_key]}: which one holds its file and "
                "segments is ambiguous"
            )
            raise fail("duplicate_image_id", detail, self.panoptic_json_path)
        record = self._images.get(image_key)
        if record is None or record.segments_json is None:
            missing = "image entry" if record is None else "annotation (segments_info)"
            raise fail("missing_panoptic_annotation", f"image id {image_id} has no {missing}", self.panoptic_json_path)
        segments_info = self._segments_info(record, fail)
        is_thing_by_segment = {segment["id"]: segment["is_thing"] for segment in segments_info}
        try:
            spans = locate_utterances(caption, utterances)
        except LookupError as error:
            raise fail("utterance_mismatch", str(error), self.narratives_path) from None

        phrases = []
        for position, segment_ids, is_plural in grounded:
            unknown = [i for i in segment_ids if i not in is_thing_by_segment]
            if unknown:
                detail = (
                    f"segment ids {unknown} of utterance {utterances[position]!r} are not in the segments_info of "
                    f"image {image_id} in {self.panoptic_json_path.name}"
                )
                raise fail("unknown_segment_id", detail, self.narratives_path)
            if spans[position] is None:
                raise fail("utterance_mismatch", "a grounded utterance is empty", self.narratives_path)
            start, end = spans[position]
            phrases.append(
                {
                    "text": caption[start:end],
                    "start": start,
                    "end": end,
                    "segment_ids": segment_ids,
                    "is_plural": is_plural,
                    "is_thing": is_thing_by_segment[segment_ids[-1]],  # reference rule, see module docstring
                }
            )
        if not phrases:
            return None

        image_path = self.images_dir / record.file_name
        panoptic_name = record.panoptic_file_name or f"{image_key:012d}.png"
        panoptic_path = self.panoptic_dir / panoptic_name
        image_bytes, image_size, _ = _read_verified_image(image_path, "image", fail)
        panoptic_bytes, panoptic_size, panoptic_mode = _read_verified_image(panoptic_path, "panoptic_png", fail)
        if panoptic_mode != "RGB":
            raise fail("corrupt_panoptic_png", f"panoptic PNG has mode {panoptic_mode}, expected RGB", panoptic_path)
        if image_size != panoptic_size or image_size != (record.width, record.height):
            detail = (
                f"sizes (width, height) differ: image {image_size}, panoptic PNG {panoptic_size}, "
                f"panoptic json {(record.width, record.height)}"
            )
            raise fail("size_mismatch", detail, image_path)
        self._check_segments_drawn(phrases, panoptic_path, panoptic_bytes, fail)
        return {
            "image": {"bytes": image_bytes, "path": record.file_name},
            "image_id": image_id,
            "narrative_index": narrative_index,
            "caption": caption,
            "width": image_size[0],
            "height": image_size[1],
            "phrases": phrases,
            "panoptic_map": {"bytes": panoptic_bytes, "path": panoptic_name},
            "segments_info": segments_info,
        }

    def _check_segments_drawn(self, phrases: list[dict], panoptic_path: Path, panoptic_bytes: bytes, fail) -> None:
        """Fails when a phrase's segment id is drawn nowhere in the panoptic PNG: its mask would be empty."""
        if self._drawn_segment_ids is None or self._drawn_segment_ids[0] != panoptic_path:
            self._drawn_segment_ids = (panoptic_path, panoptic_segment_ids(panoptic_bytes))
        drawn = self._drawn_segment_ids[1]
        absent = sorted({i for phrase in phrases for i in phrase["segment_ids"]} - drawn)
        if absent:
            detail = f"segment ids {absent} are in segments_info but drawn nowhere in the panoptic PNG"
            raise fail("segment_not_in_panoptic_png", detail, panoptic_path)

    def _segments_info(self, record: _PanopticImage, fail) -> list[dict]:
        segments_info = []
        for segment_id, category_id, iscrowd, area, bbox in json.loads(record.segments_json):
            if category_id not in self._category_is_thing:
                detail = f"category id {category_id} of segment {segment_id} is not in the categories"
                raise fail("unknown_category", detail, self.panoptic_json_path)
            segments_info.append(
                {
                    "id": segment_id,
                    "category_id": category_id,
                    "iscrowd": iscrowd,
                    "is_thing": self._category_is_thing[category_id],
                    "area": area,
                    "bbox": [float(v) for v in bbox],
                }
            )
        return segments_info
