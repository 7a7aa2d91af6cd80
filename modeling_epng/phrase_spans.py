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
"""Phrases of a narrative as character spans, and the phrase each token belongs to: the text side of
[`EpngProcessor`], shared with the pipeline. NumPy only (no torch), so that the phrase parser's child process, which
runs without torch, maps its phrases onto a tokenisation with the same code."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

PhraseSpec = tuple[int, int] | str

_SNIPPET_LENGTH = 40


def is_integer(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _snippet(text: str) -> str:
    return text if len(text) <= _SNIPPET_LENGTH else text[:_SNIPPET_LENGTH] + "..."


def resolve_phrase_spans(text: str, phrases: Sequence[PhraseSpec], narrative_index: int = 0) -> list[tuple[int, int]]:
    """
    Turn one narrative's phrases into validated character spans.

    Args:
        text (`str`):
            The narrative.
        phrases (`list[tuple[int, int] | str]`):
            Per phrase, a `(char_start, char_end)` span (end exclusive) or the phrase's text. A text is searched
            for from the end of the previous phrase onwards, so repeated words match in order of appearance.
        narrative_index (`int`, *optional*, defaults to 0):
            Index of the narrative in its batch, used in error messages.

    Returns:
        `list[tuple[int, int]]`: one span per phrase, in the given order.

    Raises:
        `ValueError`: a phrase text not found, or a span that is empty, whitespace only, outside the text or
        overlapping another span. The message names the narrative (batch index and snippet) and the span.
    """
    where = f"narrative {narrative_index} ({_snippet(text)!r})"
    spans = []
    search_from = 0
    for phrase in phrases:
        if isinstance(phrase, str):
            start = text.find(phrase, search_from) if phrase else -1
            if start < 0:
                raise ValueError(f"Phrase {phrase!r} not found in {where} after character {search_from}.")
            span = (start, start + len(phrase))
        else:
            if len(phrase) != 2:
                raise ValueError(f"Span {phrase!r} of {where} must be a (char_start, char_end) pair.")
            if not all(is_integer(offset) for offset in phrase):
                raise ValueError(f"Span {tuple(phrase)!r} of {where} must hold integer character offsets.")
            span = (int(phrase[0]), int(phrase[1]))
            if not 0 <= span[0] <= span[1] <= len(text):
                raise ValueError(f"Span {span} is outside {where}, which has {len(text)} characters.")
            if span[0] == span[1]:
                raise ValueError(f"Span {span} of {where} is empty.")
        if not text[span[0] : span[1]].strip():
            raise ValueError(f"Span {span} of {where} covers only whitespace.")
        spans.append(span)
        search_from = span[1]

    ordered = sorted(spans)
    for previous, current in zip(ordered, ordered[1:], strict=False):
        if current[0] < previous[1]:
            raise ValueError(f"Spans {previous} and {current} of {where} overlap.")
    return spans


def _holds_sequences(phrase) -> bool:
    return isinstance(phrase, (list, tuple)) and any(isinstance(item, (str, list, tuple)) for item in phrase)


def check_phrase_nesting(phrases) -> None:
    """Raise `ValueError` unless `phrases` holds one list of phrases (strings or spans) per narrative; the spans
    themselves are checked by [`resolve_phrase_spans`]."""
    for index, narrative in enumerate(phrases):
        if isinstance(narrative, str) or (
            isinstance(narrative, (list, tuple)) and narrative and all(is_integer(item) for item in narrative)
        ):
            raise ValueError(
                f"`phrases` must hold one list of phrases per narrative, but item {index} is the phrase "
                f"{narrative!r}: for a batch `text=[t0, t1]` pass `phrases=[[phrases of t0], [phrases of t1]]` "
                "(a single narrative `text=t0` takes `phrases=[phrases of t0]`)."
            )
        if not isinstance(narrative, (list, tuple)) or any(map(_holds_sequences, narrative)):
            raise ValueError(
                f"`phrases` item {index} must be a list of phrase strings or (char_start, char_end) spans, got "
                f"{narrative!r}: lists nested one level too deep?"
            )


def token_phrase_ids(
    offsets: np.ndarray, is_text_token: np.ndarray | None, spans: Sequence[tuple[int, int]]
) -> np.ndarray:
    """
    Index of the phrase each token belongs to: the token's character range overlaps the phrase's span.

    Args:
        offsets (`np.ndarray` of shape `(T, 2)`): Character range of every token (fast tokenizer offset mapping).
        is_text_token (`np.ndarray` of shape `(T,)`, *optional*): False for special and padding tokens; `None` where
            their offsets are (0, 0), which overlap no span.
        spans (`list[tuple[int, int]]`): The phrase spans; they must not overlap.

    Returns:
        `np.ndarray` of shape `(T,)`, int64: phrase index, or -1 for tokens outside every phrase. A token that
        straddles two spans (a phrase boundary inside a word piece) goes to the first.
    """
    if not spans:
        return np.full(len(offsets), -1, dtype=np.int64)
    span_array = np.asarray(spans, dtype=np.int64)
    overlaps = (offsets[:, None, 0] < span_array[None, :, 1]) & (offsets[:, None, 1] > span_array[None, :, 0])
    if is_text_token is not None:
        overlaps &= is_text_token[:, None]
    return np.where(overlaps.any(axis=1), overlaps.argmax(axis=1), -1).astype(np.int64)


def assign_phrases_to_tokens(
    texts: Sequence[str], phrases, offsets: np.ndarray, max_length: int | None, stacklevel: int
) -> dict[str, np.ndarray]:
    """`phrase_ids` int64 `(B, T)` and `phrase_mask` bool `(B, P)` of narratives from their token offsets (`(B, T, 2)`,
    (0, 0) for special and padding tokens); `ValueError` for a phrase that covers no token, a warning (at
    `stacklevel`) for one that truncation to `max_length` left without tokens."""
    if len(phrases) != len(texts):
        raise ValueError(f"Got {len(phrases)} phrase lists for {len(texts)} narratives.")
    all_spans = [
        resolve_phrase_spans(text, narrative, index)
        for index, (text, narrative) in enumerate(zip(texts, phrases, strict=True))
    ]
    num_phrase_slots = max((len(spans) for spans in all_spans), default=0)
    phrase_ids = np.full(offsets.shape[:2], -1, dtype=np.int64)
    phrase_mask = np.zeros((len(texts), num_phrase_slots), dtype=bool)
    for index, (text, spans) in enumerate(zip(texts, all_spans, strict=True)):
        phrase_ids[index] = token_phrase_ids(offsets[index], None, spans)
        has_tokens = np.zeros(len(spans), dtype=bool)
        has_tokens[phrase_ids[index][phrase_ids[index] >= 0]] = True
        phrase_mask[index, : len(spans)] = has_tokens
        kept_text_end = int(offsets[index][:, 1].max(initial=0))
        for phrase_index in np.flatnonzero(~has_tokens):
            start, end = spans[phrase_index]
            if start < kept_text_end:  # not truncated: the span holds only characters the tokenizer drops
                raise ValueError(
                    f"Span {(start, end)} ({text[start:end]!r}) of narrative {index} ({_snippet(text)!r}) "
                    "covers no token."
                )
            warnings.warn(
                f"Phrase {phrase_index} {text[start:end]!r} of narrative {index} ({_snippet(text)!r}) lost all "
                f"its tokens to truncation at max_length={max_length}; it is masked out of `phrase_mask`.",
                UserWarning,
                stacklevel=stacklevel,
            )
    return {"phrase_ids": phrase_ids, "phrase_mask": phrase_mask}


__all__ = ["PhraseSpec", "assign_phrases_to_tokens", "check_phrase_nesting", "resolve_phrase_spans", "token_phrase_ids"]
