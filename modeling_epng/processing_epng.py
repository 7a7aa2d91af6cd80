# Copyright 2026 The EPNG Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Processor of EPNG: image processor + fast BERT tokenizer, phrase spans → `phrase_ids`, and post-processing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .configuration_epng import EpngConfig
from .mask_resize import resize_and_threshold
from .phrase_extraction import extract_phrase_spans
from .phrase_spans import (
    PhraseSpec,
    assign_phrases_to_tokens,
    check_phrase_nesting,
    is_integer,
    resolve_phrase_spans,
    token_phrase_ids,
)

# Post-processing refuses target sizes above PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, about
# 13377 x 13377): an image that large cannot be opened by default anyway, and a typo such as 50000 x 50000 would
# otherwise allocate gigabytes per phrase.
MAX_TARGET_PIXELS = 178_956_970
# Phrases are resized in chunks of at most this many output pixels, bounding the float32 intermediate at 128 MiB.
_RESIZE_CHUNK_PIXELS = 2**25


def _check_max_length(max_length: int, tokenizer) -> None:
    """Refuse a token budget the tokenizer's model cannot embed (its position embeddings end there)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if not is_integer(max_length) or max_length < 1:
        raise ValueError(f"`max_length` must be a positive integer, got {max_length!r}.")
    # Tokenizers without a known limit report a huge sentinel (transformers' VERY_LARGE_INTEGER).
    if limit is not None and limit < 10**9 and max_length > limit:
        raise ValueError(
            f"`max_length={max_length}` exceeds the {limit} tokens the text encoder can embed "
            f"(tokenizer.model_max_length, its max_position_embeddings); use max_length <= {limit}."
        )


def _check_target_size(target_size, max_target_pixels: int | None) -> tuple[int, int]:
    """`(height, width)` as ints; `ValueError` unless it is a pair of positive integers within the pixel budget."""
    if isinstance(target_size, (torch.Tensor, np.ndarray)):
        target_size = target_size.tolist()
    if not isinstance(target_size, (tuple, list)) or len(target_size) != 2 or not all(map(is_integer, target_size)):
        raise ValueError(f"A target size must be a (height, width) pair of integers, got {target_size!r}.")
    height, width = (int(side) for side in target_size)
    if height < 1 or width < 1:
        raise ValueError(f"A target size (height, width) must be positive, got {(height, width)}.")
    if max_target_pixels is not None and height * width > max_target_pixels:
        raise ValueError(
            f"Target size (height, width) = {(height, width)} has {height * width} pixels, above the limit of "
            f"{max_target_pixels} (max_target_pixels); check that it is the original image size, or pass "
            "max_target_pixels=None."
        )
    return height, width


class EpngProcessor(ProcessorMixin):
    r"""
    Processor of EPNG: an [`EpngImageProcessor`] and a fast BERT tokenizer. It turns images, narratives and their
    phrase spans into the model inputs, builds mask targets from panoptic maps, and turns mask logits back into
    binary masks at the original image resolution.

    Args:
        image_processor ([`EpngImageProcessor`]):
            The image processor.
        tokenizer ([`PreTrainedTokenizerFast`]):
            A fast tokenizer (its offset mapping assigns tokens to phrases), e.g. BERT-base-uncased.
        mask_threshold (`float`, *optional*, defaults to `EpngConfig.mask_threshold`):
            The default threshold of the post-processing. A processor built for a model takes its
            `config.mask_threshold` (as the training and conversion scripts do), and `save_pretrained` keeps it in
            `processor_config.json`.
    """

    def __init__(
        self, image_processor=None, tokenizer=None, mask_threshold: float = EpngConfig.mask_threshold, **kwargs
    ):
        if tokenizer is not None and not getattr(tokenizer, "is_fast", False):
            raise ValueError("EpngProcessor needs a fast tokenizer: phrases are mapped to tokens by offset mapping.")
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"`mask_threshold` must be in (0, 1), got {mask_threshold}.")
        self.mask_threshold = float(mask_threshold)
        super().__init__(image_processor, tokenizer, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask", "phrase_ids", "phrase_mask"]

    def __call__(
        self,
        images: Any | None = None,
        text: str | Sequence[str] | None = None,
        phrases: Sequence[PhraseSpec] | Sequence[Sequence[PhraseSpec]] | str | None = None,
        panoptic_maps: Any | None = None,
        phrase_segment_ids: Sequence[Sequence[int]] | Sequence[Sequence[Sequence[int]]] | None = None,
        known_segment_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        return_tensors: str = "pt",
        max_length: int = 300,
        padding: bool | str = "longest",
        return_original_sizes: bool = False,
        return_offsets_mapping: bool = False,
        spacy_model: str | None = None,
        **image_processor_kwargs,
    ) -> BatchFeature:
        r"""
        Prepare model inputs (and optionally mask targets) for one narrative or a batch.

        Args:
            images (image or list of images, *optional*):
                One image per narrative (see [`EpngImageProcessor`] for the accepted forms).
            text (`str` or `list[str]`, *optional*):
                The narrative(s). A single string makes a batch of one, and then `phrases`, `panoptic_maps`,
                `phrase_segment_ids` and `known_segment_ids` are given for that one narrative (not wrapped in a list).
            phrases (`list[tuple[int, int] | str]` per narrative, *optional*):
                The grounded phrases of each narrative, as `(char_start, char_end)` spans or as strings matched left
                to right (see [`resolve_phrase_spans`]). Phrase `i` is slot `i` of `phrase_mask` / `mask_labels`.
                `"auto"` finds the groundable noun phrases (see [`extract_phrase_spans`]; needs spaCy) and returns their
                spans as `phrase_spans`.
            panoptic_maps (panoptic map or list of them, *optional*):
                Per image, its panoptic map at original resolution; with `phrase_segment_ids`, builds `mask_labels`.
            phrase_segment_ids (`list[list[int]]` per narrative, *optional*):
                Per phrase, the panoptic segment ids whose union is its mask.
            known_segment_ids (`list[int]` per narrative, *optional*):
                The valid segment ids of each map (e.g. from `segments_info`); defaults to the ids in the map.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"` for PyTorch tensors or `"np"` for NumPy arrays.
            max_length (`int`, *optional*, defaults to 300):
                Narratives are truncated to this many tokens (special tokens included). A phrase that loses all its
                tokens is dropped from `phrase_mask` (its slot stays), with a warning that names it.
            padding (`bool` or `str`, *optional*, defaults to `"longest"`):
                Tokenizer padding strategy (`"longest"` or `"max_length"`).
            return_original_sizes (`bool`, *optional*, defaults to `False`):
                Also return `original_sizes` (list of `(H, W)` per image, for [`post_process_grounding`]).
            return_offsets_mapping (`bool`, *optional*, defaults to `False`):
                Also return `offset_mapping`, long `(B, T, 2)`: the character range of every token, (0, 0) for
                special and padding tokens; [`phrase_inputs`] maps phrases onto it later.
            spacy_model (`str`, *optional*):
                The installed spaCy English pipeline that `phrases="auto"` parses with; defaults to the small one.
            image_processor_kwargs (*optional*):
                Per-call overrides passed to the image processor (e.g. `size`).

        Returns:
            [`BatchFeature`] with, as present: `pixel_values` float `(B, 3, H, W)`; `input_ids`, `attention_mask`
            `(B, T)`; `phrase_ids` long `(B, T)` (phrase index of each token, -1 for none); `phrase_mask` bool
            `(B, P)` (P = largest phrase count of the batch); `mask_labels` boolean `(B, P, H, W)` (zeros in
            padding slots); `original_sizes`; `phrase_spans` (with `phrases="auto"`: per narrative, the list of
            `(char_start, char_end)` of its phrases).
        """
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"`return_tensors` must be 'pt' or 'np', got {return_tensors!r}.")
        if text is None and images is None:
            raise ValueError("Give `images`, `text` or both.")
        has_targets = panoptic_maps is not None or phrase_segment_ids is not None
        if text is None and (phrases is not None or has_targets):
            raise ValueError("`phrases` and mask targets need the narratives in `text`.")
        if has_targets and (images is None or phrases is None):
            raise ValueError("Mask targets need `images` and `phrases` besides `panoptic_maps`/`phrase_segment_ids`.")

        automatic_phrases = isinstance(phrases, str)
        if automatic_phrases:
            if phrases != "auto":
                raise ValueError(f"`phrases` must be 'auto' or the phrases of each narrative, got {phrases!r}.")
            phrases = extract_phrase_spans(text, spacy_model)
        if isinstance(text, str):
            text = [text]
            phrases = None if phrases is None else [phrases]
            phrase_segment_ids = None if phrase_segment_ids is None else [phrase_segment_ids]
            known_segment_ids = None if known_segment_ids is None else [known_segment_ids]
            if panoptic_maps is not None and not isinstance(panoptic_maps, (list, tuple)):
                panoptic_maps = [panoptic_maps]
        if phrases is not None and not automatic_phrases:
            check_phrase_nesting(phrases)
        _check_max_length(max_length, self.tokenizer)

        data: dict[str, Any] = {}
        if automatic_phrases:
            data["phrase_spans"] = phrases
        if text is not None:
            data.update(self._encode_text(list(text), phrases, max_length, padding, return_offsets_mapping))
        if images is not None:
            if phrase_segment_ids is not None:
                for index, (spans, segment_ids) in enumerate(zip(phrases, phrase_segment_ids, strict=True)):
                    if len(spans) != len(segment_ids):
                        raise ValueError(
                            f"Narrative {index} has {len(spans)} phrases but {len(segment_ids)} segment id lists."
                        )
            image_inputs = self.image_processor(
                images,
                panoptic_maps=panoptic_maps,
                phrase_segment_ids=phrase_segment_ids,
                known_segment_ids=known_segment_ids,
                return_tensors="pt",
                **image_processor_kwargs,
            )
            if text is not None and len(image_inputs["original_sizes"]) != len(text):
                raise ValueError(f"Got {len(image_inputs['original_sizes'])} images for {len(text)} narratives.")
            data["pixel_values"] = image_inputs["pixel_values"]
            if return_original_sizes:
                data["original_sizes"] = image_inputs["original_sizes"]
            if "mask_labels" in image_inputs:
                data["mask_labels"] = self._pad_mask_labels(image_inputs["mask_labels"], data["phrase_mask"].shape[1])

        batch = BatchFeature(data, skip_tensor_conversion=["original_sizes", "phrase_spans"])
        return batch.convert_to_tensors("np") if return_tensors == "np" else batch

    def _encode_text(
        self, texts: list[str], phrases, max_length: int, padding: bool | str, return_offsets_mapping: bool = False
    ) -> dict[str, torch.Tensor]:
        """Tokenise the narratives and map every token to its phrase."""
        encoding = self.tokenizer(
            texts,
            padding=padding,
            truncation=True,
            max_length=max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_token_type_ids=False,
            return_tensors="np",  # NumPy for the few small array operations here, faster than torch's
        )
        is_text_token = encoding["attention_mask"].astype(bool) & ~encoding["special_tokens_mask"].astype(bool)
        # Special and padding tokens get (0, 0), which overlaps no phrase span: the offsets alone then tell which
        # tokens a phrase covers, so that phrases found later map onto this tokenisation (`phrase_inputs`).
        offset_mapping = encoding["offset_mapping"] * is_text_token[..., None]
        text_inputs = {key: torch.from_numpy(encoding[key]) for key in ("input_ids", "attention_mask")}
        if return_offsets_mapping:
            text_inputs["offset_mapping"] = torch.from_numpy(offset_mapping)
        if phrases is not None:
            assigned = assign_phrases_to_tokens(texts, phrases, offset_mapping, max_length, stacklevel=4)
            text_inputs.update({key: torch.from_numpy(value) for key, value in assigned.items()})
        return text_inputs

    def phrase_inputs(
        self,
        text: str | Sequence[str],
        phrases: Sequence[PhraseSpec] | Sequence[Sequence[PhraseSpec]],
        offset_mapping: torch.Tensor | np.ndarray,
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        `phrase_ids` and `phrase_mask` of narratives tokenised before their phrases were known, from the
        `offset_mapping` of that tokenisation: equal to what `__call__` with the phrases returns, without tokenising
        again (the pipeline tokenises while the phrases are being parsed).

        Args:
            text (`str` or `list[str]`): the narrative(s), as given to `__call__`.
            phrases: the phrases of each narrative, as `__call__` takes them.
            offset_mapping (`torch.Tensor` or `np.ndarray` of shape `(B, T, 2)`): from
                `__call__(..., return_offsets_mapping=True)`.
            max_length (`int`, *optional*): the `max_length` of that call, named in the truncation warning.

        Returns:
            `dict` with `phrase_ids` long `(B, T)` and `phrase_mask` bool `(B, P)`.
        """
        texts, phrases = ([text], [phrases]) if isinstance(text, str) else (list(text), phrases)
        check_phrase_nesting(phrases)
        offsets = offset_mapping.numpy() if isinstance(offset_mapping, torch.Tensor) else np.asarray(offset_mapping)
        if offsets.ndim != 3 or offsets.shape[0] != len(texts) or offsets.shape[2] != 2:
            raise ValueError(
                f"`offset_mapping` must have shape (B={len(texts)}, T, 2), got {tuple(offsets.shape)}: pass the one "
                "returned with these narratives."
            )
        assigned = assign_phrases_to_tokens(texts, phrases, offsets, max_length, stacklevel=3)
        return {key: torch.from_numpy(value) for key, value in assigned.items()}

    @staticmethod
    def _pad_mask_labels(mask_labels: list[torch.Tensor], num_phrase_slots: int) -> torch.Tensor:
        """Per-image `(P_i, H, W)` targets → `(B, P, H, W)` with zero masks in padding slots."""
        height, width = mask_labels[0].shape[-2:]
        padded = torch.zeros(len(mask_labels), num_phrase_slots, height, width, dtype=torch.bool)
        for index, labels in enumerate(mask_labels):
            padded[index, : labels.shape[0]] = labels
        return padded

    def post_process_image_grounding(
        self,
        mask_logits: torch.Tensor,
        target_size: tuple[int, int],
        threshold: float | None = None,
        max_target_pixels: int | None = MAX_TARGET_PIXELS,
    ) -> dict[str, torch.Tensor]:
        """
        Binary masks of one image at its original resolution: sigmoid, bilinear resize
        (`align_corners=False`) straight to `target_size`, then `probability >= threshold`. Phrases are resized a
        few at a time, so the float32 intermediate stays within 128 MiB whatever their number. A target that is an
        integer multiple of the mask size (an image at the model's input size), and on a CPU any target of a million
        pixels or more (all phrases together), is resized one axis at a time by lerps, within one float32 rounding of
        `F.interpolate` and several times faster; the rest, by `F.interpolate`.

        Args:
            mask_logits (`torch.Tensor` of shape `(P, h, w)`):
                The image's mask logits (before sigmoid), only the phrases to keep.
            target_size (`tuple[int, int]`):
                `(H, W)` of the original image.
            threshold (`float`, *optional*, defaults to `self.mask_threshold`):
                Probability threshold.
            max_target_pixels (`int`, *optional*, defaults to 178956970):
                Largest `H * W` accepted (PIL's default `MAX_IMAGE_PIXELS`); `None` lifts the limit.

        Returns:
            `dict` with `masks`: bool `(P, H, W)`, and `scores`: float `(P,)`, the mean probability inside each
            predicted mask (0 for an empty mask), on the device of `mask_logits`.
        """
        height, width = _check_target_size(target_size, max_target_pixels)
        probabilities = mask_logits.detach().float().sigmoid()
        threshold = self.mask_threshold if threshold is None else threshold
        # The float32 just below the threshold: `p >= threshold` (compared in float32) is `p > below`, which lets
        # `threshold_` zero the probabilities outside the mask in place, in one pass; what it keeps is >= threshold > 0,
        # so the mask is what is non-zero (a cast to bool, several times faster than comparing again).
        below = float(np.nextafter(np.float32(threshold), np.float32(-1.0)))
        num_phrases = probabilities.shape[0]
        masks = torch.empty((num_phrases, height, width), dtype=torch.bool, device=probabilities.device)
        scores = probabilities.new_empty((num_phrases,))
        chunk = max(1, _RESIZE_CHUNK_PIXELS // (height * width))
        for start in range(0, num_phrases, chunk):
            end = start + chunk
            chunk_masks = masks[start:end]
            inside, counts = resize_and_threshold(probabilities[start:end], chunk_masks, below)
            scores[start:end] = inside / counts.clamp(min=1)
        return {"masks": masks, "scores": scores}

    def post_process_grounding(
        self,
        outputs: Any,
        target_sizes: Sequence[tuple[int, int]] | torch.Tensor,
        phrase_mask: torch.Tensor | None = None,
        threshold: float | None = None,
        max_target_pixels: int | None = MAX_TARGET_PIXELS,
    ) -> list[dict[str, torch.Tensor]]:
        """
        Turn the model's mask logits into binary masks at each image's original resolution.

        Images are processed one at a time (see [`post_process_image_grounding`]), so peak memory is that of one
        image's full-resolution probabilities.

        Args:
            outputs (`EpngOutput`, a mapping with `mask_logits`, or a tensor):
                Mask logits of shape `(B, P, H/4, W/4)`.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor` of shape `(B, 2)`):
                `(H, W)` of every original image.
            phrase_mask (`torch.Tensor` of shape `(B, P)`, *optional*):
                True for real phrases; only those are returned. Defaults to all phrases.
            threshold (`float`, *optional*, defaults to `self.mask_threshold`):
                Probability threshold.
            max_target_pixels (`int`, *optional*, defaults to 178956970):
                Largest `H * W` accepted per image (PIL's default `MAX_IMAGE_PIXELS`); `None` lifts the limit.

        Returns:
            `list[dict]`, one per image, with `masks` bool `(P_real, H, W)` and `scores` float `(P_real,)`.
        """
        if isinstance(outputs, torch.Tensor):
            mask_logits = outputs
        elif isinstance(outputs, Mapping):  # EpngOutput is a ModelOutput, hence a mapping
            mask_logits = outputs["mask_logits"]
        else:
            mask_logits = getattr(outputs, "mask_logits", None)
        if not isinstance(mask_logits, torch.Tensor):
            raise TypeError(f"`outputs` needs `mask_logits` (EpngOutput, mapping or tensor), got {type(outputs)}")
        if len(target_sizes) != mask_logits.shape[0]:
            raise ValueError(f"Got {len(target_sizes)} target sizes for a batch of {mask_logits.shape[0]}.")
        if phrase_mask is not None and tuple(phrase_mask.shape) != tuple(mask_logits.shape[:2]):
            raise ValueError(
                f"`phrase_mask` has shape {tuple(phrase_mask.shape)} but the logits have (B, P) = "
                f"{tuple(mask_logits.shape[:2])}."
            )
        checked_sizes = [_check_target_size(size, max_target_pixels) for size in target_sizes]
        results = []
        for index, target_size in enumerate(checked_sizes):
            image_logits = mask_logits[index]
            if phrase_mask is not None:
                image_logits = image_logits[phrase_mask[index].to(device=image_logits.device, dtype=torch.bool)]
            results.append(self.post_process_image_grounding(image_logits, target_size, threshold, max_target_pixels))
        return results


__all__ = ["EpngProcessor", "resolve_phrase_spans", "token_phrase_ids"]
