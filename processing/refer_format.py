"""Reader of referring expression segmentation data in the "refer" format (RefCOCO, RefCOCO+, RefCOCOg).

On-disk layout (as distributed with the refer toolkit)::

    ROOT/<dataset>/refs(<split_by>).p   pickle: list of refs
    ROOT/<dataset>/instances.json       COCO instances: images, annotations (polygons or RLE), categories
    ROOT/images/train2014/<file_name>   COCO 2014 train images (default images folder; configurable)

A ref is `{ref_id, ann_id, image_id, split, sentences: [{sent, tokens, sent_id}], category_id?, file_name?}`; its
mask is the segmentation of annotation `ann_id`. Every sentence of a ref is one example (the whole sentence is
the phrase in EPNG's zero-shot evaluation, paper table 4).

The refs pickle holds only plain values (lists, dicts, strings, numbers), which pickle stores without naming any
Python global; a pickle runs code only by calling a global it names (`os.system`, `builtins.exec`, whatever a
`__reduce__` returns). The reader therefore refuses every global unless `allow_pickle=True` says the file is trusted.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pycocotools import mask as coco_mask

# Known (dataset, split_by) pairs and their splits.
REFER_SPLITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("refcoco", "unc"): ("train", "val", "testA", "testB"),
    ("refcoco+", "unc"): ("train", "val", "testA", "testB"),
    ("refcocog", "umd"): ("train", "val", "test"),
    ("refcocog", "google"): ("train", "val"),
}
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
# Splits of the paper's zero-shot evaluation (table 4), in its column order.
EVALUATION_SPLITS = {
    "refcoco": ("val", "testA", "testB"),
    "refcoco+": ("val", "testA", "testB"),
    "refcocog": ("val", "test"),
}


class ReferPickleError(pickle.UnpicklingError, ValueError):
    """A refs pickle names a Python global, which the reader does not load unless told the file is trusted."""


class _PlainValuesUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts, strings, numbers and the like, and refuses every global (module attribute)."""

    def __init__(self, file: BinaryIO, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        raise ReferPickleError(
            f"{self.path} asks to load the Python global {module}.{name}; refused because unpickling a global can "
            "run arbitrary code (refs files hold only plain values: lists, dicts, strings, numbers). If you trust "
            "the file, pass allow_pickle=True (--allow_pickle)."
        )


def load_refs(path: str | Path, allow_pickle: bool = False) -> Any:
    """
    Unpickle a refs file, refusing any Python global (see [`ReferPickleError`]) unless `allow_pickle` is set.

    Args:
        path (`str` or `Path`): the `refs(<split_by>).p` file.
        allow_pickle (`bool`, *optional*, defaults to `False`):
            Unpickle whatever the file holds, globals included. Pickles can run code: only for trusted files.
    """
    path = Path(path)
    with path.open("rb") as file:
        try:
            return pickle.load(file) if allow_pickle else _PlainValuesUnpickler(file, path).load()
        except ReferPickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as error:
            raise ValueError(f"{path} is not a readable pickle (truncated or corrupt?): {error}") from error


REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")
SENTENCE_KEYS = ("sent_id", "sent")


def check_refs(refs: Any, path: str | Path) -> list[dict[str, Any]]:
    """
    Check that unpickled refs have the refer format's shape: a list of dicts, each with `REF_KEYS`, whose
    `sentences` are dicts with `SENTENCE_KEYS`. Raises a `ValueError` naming the file, the ref and what is missing,
    instead of a `KeyError` halfway through a conversion.
    """
    if not isinstance(refs, list):
        raise ValueError(f"{path} holds a {type(refs).__name__}, not the list of refs of the refer format")
    for index, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise ValueError(f"{path}: ref {index} is a {type(ref).__name__}, not a dict")
        missing = [key for key in REF_KEYS if key not in ref]
        if missing:
            raise ValueError(f"{path}: ref {index} (ref_id {ref.get('ref_id')!r}) has no {', '.join(missing)}")
        if not isinstance(ref["sentences"], list):
            raise ValueError(f"{path}: the sentences of ref {ref['ref_id']!r} are not a list")
        for sentence in ref["sentences"]:
            absent = [key for key in SENTENCE_KEYS if not isinstance(sentence, dict) or key not in sentence]
            if absent:
                raise ValueError(f"{path}: a sentence of ref {ref['ref_id']!r} has no {', '.join(absent)}")
    return refs


def resolve_split_by(dataset: str, split_by: str | None = None) -> str:
    """Check `dataset` (and `split_by`, defaulting to the dataset's usual one) against the known refer datasets."""
    if dataset not in DEFAULT_SPLIT_BY:
        raise ValueError(f"unknown refer dataset {dataset!r}; valid datasets: {', '.join(DEFAULT_SPLIT_BY)}")
    split_by = split_by or DEFAULT_SPLIT_BY[dataset]
    if (dataset, split_by) not in REFER_SPLITS:
        valid = [by for name, by in REFER_SPLITS if name == dataset]
        raise ValueError(f"unknown split_by {split_by!r} for {dataset}; valid: {', '.join(valid)}")
    return split_by


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """
    Decode a COCO segmentation into a binary mask.

    Args:
        segmentation (`list` or `dict`): polygons `[[x1, y1, x2, y2, ...], ...]` (merged into one mask), an
            uncompressed RLE `{"size": [h, w], "counts": [int, ...]}` or a compressed RLE (`counts` a `str`/`bytes`).
        height (`int`), width (`int`): image size.

    Returns:
        `np.ndarray` of shape `(height, width)`, bool.
    """
    if isinstance(segmentation, list):
        # A polygon needs 3 points to have an area; pycocotools also mistakes 4-number lists for boxes.
        polygons = [polygon for polygon in segmentation if len(polygon) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and {"size", "counts"} <= segmentation.keys():
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} differs from the image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            rle = coco_mask.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"unsupported segmentation: expected polygons or an RLE dict, got {type(segmentation)}")
    return coco_mask.decode(rle).astype(bool)


class ReferReader:
    """
    Reads one refer dataset (refs pickle + COCO instances) and yields one example per sentence.

    Args:
        refer_root (`str` or `Path`): folder holding `<dataset>/refs(<split_by>).p` and `<dataset>/instances.json`.
        dataset (`str`): `"refcoco"`, `"refcoco+"` or `"refcocog"`.
        split_by (`str`, *optional*): who made the splits; defaults to `unc` (RefCOCO, RefCOCO+) or `umd` (RefCOCOg).
        images_dir (`str` or `Path`, *optional*): folder of the COCO images; defaults to `refer_root/images/train2014`.
        allow_pickle (`bool`, *optional*, defaults to `False`):
            Load a refs pickle that names Python globals (see [`load_refs`]). Pickles can run code: only for trusted
            files.

    Raises:
        [`ReferPickleError`]: the refs pickle names a Python global and `allow_pickle` is not set.
    """

    def __init__(
        self,
        refer_root: str | Path,
        dataset: str,
        split_by: str | None = None,
        images_dir: str | Path | None = None,
        allow_pickle: bool = False,
    ):
        self.dataset = dataset
        self.split_by = resolve_split_by(dataset, split_by)
        self.valid_splits = REFER_SPLITS[(dataset, self.split_by)]
        refer_root = Path(refer_root)
        self.images_dir = Path(images_dir) if images_dir is not None else refer_root / "images" / "train2014"
        self.refs_path = refer_root / dataset / f"refs({self.split_by}).p"
        self.instances_path = refer_root / dataset / "instances.json"
        for path, what in ((self.refs_path, "refs pickle"), (self.instances_path, "COCO instances json")):
            if not path.is_file():
                raise FileNotFoundError(f"{dataset} {what} not found: {path}")
        self.refs: list[dict[str, Any]] = check_refs(load_refs(self.refs_path, allow_pickle), self.refs_path)
        with self.instances_path.open() as file:
            instances = json.load(file)
        self.images = {image["id"]: image for image in instances["images"]}
        self.annotations = {annotation["id"]: annotation for annotation in instances["annotations"]}

    @property
    def evaluation_splits(self) -> tuple[str, ...]:
        """The splits of the paper's zero-shot evaluation that this `split_by` has (RefCOCOg google: only `val`)."""
        return tuple(split for split in EVALUATION_SPLITS[self.dataset] if split in self.valid_splits)

    def check_splits(self, splits: Sequence[str] | None) -> tuple[str, ...]:
        """Validate split names (`None` → every split of the dataset) and return them as a tuple."""
        if splits is None:
            return self.valid_splits
        if isinstance(splits, str):
            splits = [splits]
        unknown = [split for split in splits if split not in self.valid_splits]
        if unknown:
            raise ValueError(
                f"unknown split(s) {unknown} for {self.dataset} ({self.split_by}); "
                f"valid: {', '.join(self.valid_splits)}"
            )
        return tuple(splits)

    def num_examples(self, split: str) -> int:
        """Number of sentences (= examples) in `split`."""
        (split,) = self.check_splits([split])
        return sum(len(ref["sentences"]) for ref in self.refs if ref["split"] == split)

    def _ref_mask(self, ref: dict[str, Any], image: dict[str, Any]) -> np.ndarray:
        annotation = self.annotations.get(ref["ann_id"])
        if annotation is None:
            raise KeyError(f"ref {ref['ref_id']}: annotation {ref['ann_id']} is missing from {self.instances_path}")
        if annotation["image_id"] != ref["image_id"]:
            raise ValueError(
                f"ref {ref['ref_id']} is on image {ref['image_id']} but its annotation {ref['ann_id']} on "
                f"image {annotation['image_id']}"
            )
        return decode_segmentation(annotation["segmentation"], image["height"], image["width"])

    def examples(self, splits: Sequence[str] | str | None = None) -> Iterator[dict[str, Any]]:
        """
        Yield one example per sentence of the refs in `splits` (split by split, refs in pickle order).

        Args:
            splits (`str` or `Sequence[str]`, *optional*): splits to read; defaults to all of the dataset's splits.

        Yields:
            `dict` with `image` (`str`, path of the image file), `file_name` (`str`), `image_id`, `ann_id`,
            `ref_id`, `sent_id`, `category_id` (`int`), `sentence` (`str`, the refer toolkit's cleaned `sent`),
            `mask` (`np.ndarray` of shape `(height, width)`, bool, read-only: one array shared by the sentences of
            a ref), `width`, `height` (`int`) and `split` (`str`).

        Raises:
            `FileNotFoundError`: when an image file is missing from `images_dir`.
        """
        for split in self.check_splits(splits):
            for ref in self.refs:
                if ref["split"] != split:
                    continue
                image = self.images.get(ref["image_id"])
                if image is None:
                    raise KeyError(
                        f"ref {ref['ref_id']}: image {ref['image_id']} is missing from {self.instances_path}"
                    )
                # The ref's own `file_name` names the annotation (…_<ann>.jpg), not the image: use the COCO one.
                image_path = self.images_dir / image["file_name"]
                if not image_path.is_file():
                    raise FileNotFoundError(
                        f"image {image['id']} of ref {ref['ref_id']} not found: {image_path} "
                        "(images_dir must be the folder of the COCO 2014 train images)"
                    )
                mask = self._ref_mask(ref, image)
                mask.setflags(write=False)  # shared by the ref's sentences: an in-place edit would leak across them
                category_id = ref.get("category_id", self.annotations[ref["ann_id"]].get("category_id"))
                for sentence in ref["sentences"]:
                    yield {
                        "image": str(image_path),
                        "file_name": image["file_name"],
                        "image_id": ref["image_id"],
                        "ann_id": ref["ann_id"],
                        "ref_id": ref["ref_id"],
                        "sent_id": sentence["sent_id"],
                        "category_id": category_id,
                        "sentence": sentence["sent"],
                        "mask": mask,
                        "width": image["width"],
                        "height": image["height"],
                        "split": split,
                    }
