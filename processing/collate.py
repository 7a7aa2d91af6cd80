"""The one path from PNG dataset examples to model inputs, shared by training and evaluation.

A dataset example (a row of the 🤗 PNG dataset) holds: `image` (PIL), `image_id` (str), `narrative_index` (int),
`caption` (str), `width`/`height` (int), `phrases` (list of {`text`, `start`, `end`, `segment_ids`, `is_plural`,
`is_thing`}), `panoptic_map` (PIL RGB, id = R + 256·G + 256²·B) and `segments_info` (list of {`id`, ...}).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature

from modeling_epng.processing_epng import EpngProcessor

METADATA_KEYS = ("original_sizes", "phrase_is_thing", "phrase_is_plural", "image_ids", "narrative_indices")
"""Keys of [`EpngCollator`]'s output that are not model inputs; pop them (see [`pop_metadata`]) before
`model(**batch)`."""


def as_records(value: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """
    A list of structs as a list of dicts. Depending on the `datasets` version and feature type, a list of structs
    comes back either as a list of dicts or as a dict of lists; both are accepted.

    Args:
        value (`list[dict]` or `dict[str, list]`): The list of structs.

    Returns:
        `list[dict]`
    """
    if isinstance(value, Mapping):
        columns = list(value)
        length = len(value[columns[0]]) if columns else 0
        return [{column: value[column][row] for column in columns} for row in range(length)]
    return [dict(record) for record in value]


def pop_metadata(batch: dict[str, Any]) -> dict[str, Any]:
    """
    Remove the evaluation metadata ([`METADATA_KEYS`]) from a collated batch, leaving only model inputs.

    Args:
        batch (`dict`): The output of [`EpngCollator`]; modified in place.

    Returns:
        `dict`: the removed metadata.
    """
    return {key: batch.pop(key) for key in METADATA_KEYS if key in batch}


def _map_size(panoptic_map: Image.Image | np.ndarray | torch.Tensor) -> tuple[int, int]:
    """`(H, W)` of a panoptic map without decoding it."""
    if isinstance(panoptic_map, Image.Image):
        return panoptic_map.height, panoptic_map.width
    return int(panoptic_map.shape[0]), int(panoptic_map.shape[1])


class EpngCollator:
    r"""
    Collates PNG dataset examples into a batch of model inputs, targets and evaluation metadata. It is picklable
    (safe in DataLoader workers) and can be used as a `Trainer`'s `data_collator` (then set
    `remove_unused_columns=False` in the training arguments, so the Trainer keeps the example columns, and
    `model_inputs_only=True`, so no metadata reaches `model.forward`).

    Output keys:
        - model inputs: `pixel_values` `(B, 3, H, W)`, `input_ids`, `attention_mask`, `phrase_ids` `(B, T)`,
          `phrase_mask` `(B, P)`, and `mask_labels` boolean `(B, P, H, W)` at the model input size when
          `return_targets`;
        - metadata ([`METADATA_KEYS`], absent with `model_inputs_only`): `original_sizes` long `(B, 2)` (the
          `(H, W)` at which ground truth is scored), `phrase_is_thing` and `phrase_is_plural` bool `(B, P)`,
          `image_ids` (list of str), `narrative_indices` long `(B,)`.

    Ground-truth masks at original resolution are not part of the batch (they would have to be kept for the whole
    split); the evaluation's `training.evaluation.GroundingEvalCollator` adds what builds them, per example.

    Args:
        processor ([`EpngProcessor`]):
            The processor (image processor + fast tokenizer).
        return_targets (`bool`, *optional*, defaults to `True`):
            Whether to build `mask_labels` from the panoptic maps.
        model_inputs_only (`bool`, *optional*, defaults to `False`):
            Whether to leave the metadata out of the batch.
        max_length (`int`, *optional*, defaults to 300):
            Token budget of a narrative (see [`EpngProcessor.__call__`]).
    """

    def __init__(
        self,
        processor: EpngProcessor,
        return_targets: bool = True,
        model_inputs_only: bool = False,
        max_length: int = 300,
    ):
        self.processor = processor
        self.return_targets = return_targets
        self.model_inputs_only = model_inputs_only
        self.max_length = max_length

    @staticmethod
    def _phrases(example: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The example's phrases, each checked against the caption (a wrong offset would silently shift the
        token ↔ phrase mapping)."""
        phrases = as_records(example["phrases"])
        caption = example["caption"]
        for phrase in phrases:
            if caption[phrase["start"] : phrase["end"]] != phrase["text"]:
                raise ValueError(
                    f"Phrase {phrase['text']!r} of image {example['image_id']} narrative "
                    f"{example['narrative_index']} does not match caption[{phrase['start']}:{phrase['end']}] = "
                    f"{caption[phrase['start'] : phrase['end']]!r}."
                )
        return phrases

    @staticmethod
    def _known_segment_ids(example: Mapping[str, Any]) -> list[int]:
        return [int(segment["id"]) for segment in as_records(example["segments_info"])]

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> BatchFeature:
        """
        Args:
            examples (`list[dict]`): PNG dataset examples (see the module docstring).

        Returns:
            [`BatchFeature`] with the keys listed in the class docstring.
        """
        phrases = [self._phrases(example) for example in examples]
        target_kwargs = {}
        if self.return_targets:
            for example in examples:
                map_size = _map_size(example["panoptic_map"])
                if map_size != (example["height"], example["width"]):
                    raise ValueError(
                        f"Panoptic map of image {example['image_id']} is {map_size} (H, W) but the example says "
                        f"({example['height']}, {example['width']})."
                    )
            target_kwargs = {
                "panoptic_maps": [example["panoptic_map"] for example in examples],
                "phrase_segment_ids": [[phrase["segment_ids"] for phrase in narrative] for narrative in phrases],
                "known_segment_ids": [self._known_segment_ids(example) for example in examples],
            }
        batch = self.processor(
            images=[example["image"] for example in examples],
            text=[example["caption"] for example in examples],
            phrases=[[(phrase["start"], phrase["end"]) for phrase in narrative] for narrative in phrases],
            max_length=self.max_length,
            return_original_sizes=True,
            **target_kwargs,
        )

        image_sizes = batch.pop("original_sizes")
        for example, image_size in zip(examples, image_sizes, strict=True):
            # Catches images whose EXIF orientation disagrees with the annotation (the masks would be rotated).
            if tuple(image_size) != (example["height"], example["width"]):
                raise ValueError(
                    f"Image {example['image_id']} is {tuple(image_size)} (H, W) after EXIF orientation but the "
                    f"example says ({example['height']}, {example['width']})."
                )
        if self.model_inputs_only:
            return batch

        num_phrase_slots = batch["phrase_mask"].shape[1]
        phrase_is_thing = torch.zeros(len(examples), num_phrase_slots, dtype=torch.bool)
        phrase_is_plural = torch.zeros(len(examples), num_phrase_slots, dtype=torch.bool)
        for index, narrative in enumerate(phrases):
            phrase_is_thing[index, : len(narrative)] = torch.tensor([bool(p["is_thing"]) for p in narrative])
            phrase_is_plural[index, : len(narrative)] = torch.tensor([bool(p["is_plural"]) for p in narrative])
        batch["original_sizes"] = torch.tensor([[example["height"], example["width"]] for example in examples])
        batch["phrase_is_thing"] = phrase_is_thing
        batch["phrase_is_plural"] = phrase_is_plural
        batch["image_ids"] = [str(example["image_id"]) for example in examples]
        batch["narrative_indices"] = torch.tensor([int(example["narrative_index"]) for example in examples])
        return batch


__all__ = ["METADATA_KEYS", "EpngCollator", "as_records", "pop_metadata"]
