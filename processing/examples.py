"""Examples for the web app: images with a narrative and its noun phrases, read from a benchmark in the PNG format
(e.g. the demo's synthetic validation split) or from a small `examples.json` folder, which a Space carries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

EXAMPLES_FILE = "examples.json"


@dataclass
class Example:
    """An image with a narrative and the phrases an annotator grounded in it."""

    image: str
    narrative: str
    phrases: list[str]


def load_examples(folder: str | Path, limit: int = 4, split: str = "val2017") -> list[Example]:
    """Examples from a folder with an `examples.json` (a list of `{image, narrative, phrases}`, images relative to
    the folder), or from a benchmark root in the PNG format (e.g. the demo's `png_synthetic/`: the first `limit`
    narratives of `split` with their noun phrases). A folder without either gives no example."""
    folder = Path(folder)
    listing = folder / EXAMPLES_FILE
    if listing.is_file():
        records = json.loads(listing.read_text(encoding="utf-8"))
        return [Example(str(folder / r["image"]), r["narrative"], list(r["phrases"])) for r in records[:limit]]
    narratives_file = folder / "annotations" / f"png_coco_{split}.json"
    panoptic_file = folder / "annotations" / f"panoptic_{split}.json"
    if not (narratives_file.is_file() and panoptic_file.is_file()):
        return []
    file_names = {
        str(image["id"]): image["file_name"]
        for image in json.loads(panoptic_file.read_text(encoding="utf-8"))["images"]
    }
    examples = []
    for narrative in json.loads(narratives_file.read_text(encoding="utf-8"))[:limit]:
        phrases = [segment["utterance"] for segment in narrative["segments"] if segment["noun"]]
        image = folder / "images" / split / file_names[str(narrative["image_id"])]
        examples.append(Example(str(image), narrative["caption"], phrases))
    return examples


def example_files(examples: Sequence[Example]) -> dict[str, str | Path]:
    """The files of an `examples.json` folder holding `examples` (read back by [`load_examples`]): relative path ->
    the image file to copy, or the text of `examples.json`."""
    files: dict[str, str | Path] = {}
    records = []
    for example in examples:
        relative = f"images/{Path(example.image).name}"
        files[relative] = Path(example.image)
        records.append({"image": relative, "narrative": example.narrative, "phrases": example.phrases})
    files[EXAMPLES_FILE] = json.dumps(records, indent=2)
    return files


def write_examples(examples: Sequence[Example], folder: str | Path) -> list[str]:
    """Copy the examples' images into `folder` and list them in its `examples.json`. Returns the written paths,
    relative to `folder`."""
    folder = Path(folder)
    files = example_files(examples)
    for relative, source in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            (folder / relative).write_bytes(source.read_bytes())
        else:
            (folder / relative).write_text(source, encoding="utf-8")
    return list(files)


__all__ = ["EXAMPLES_FILE", "Example", "example_files", "load_examples", "write_examples"]
