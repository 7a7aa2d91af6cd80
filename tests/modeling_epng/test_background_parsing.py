"""Automatic phrases parsed in a child process while the text encoder runs: same spans, same masks, fallbacks."""

import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from app_testing import save_tiny_model
from transformers import pipeline

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding
from modeling_epng.background_parsing import BackgroundPhraseParser, background_phrase_parser
from modeling_epng.image_processing_epng import EpngImageProcessor
from modeling_epng.phrase_extraction import clear_phrase_cache, extract_phrase_spans
from modeling_epng.processing_epng import EpngProcessor

FIXTURE = Path(__file__).parents[1] / "fixtures" / "localized_narratives.json"


def narratives():
    return [entry["narrative"] for entry in json.loads(FIXTURE.read_text())["narratives"]]


@pytest.fixture
def parser():
    parser = background_phrase_parser()
    assert parser.wait_until_ready(timeout=120), "the child process did not load spaCy"
    return parser


def test_child_finds_the_spans_of_the_process(parser):
    for text in narratives():
        clear_phrase_cache()
        pending = parser.submit(text)
        assert pending is not None
        assert pending.result() == extract_phrase_spans(text)


@pytest.mark.parametrize("max_length", [300, 12])
def test_child_maps_the_phrases_onto_the_tokens_as_the_processor_does(parser, tokenizer, max_length):
    """Given the offsets of a tokenisation, the child returns the phrase of every token as the processor maps them;
    where a phrase covers no token (truncated at 12 tokens), it leaves the mapping to the caller."""
    processor = EpngProcessor(EpngImageProcessor(size={"height": 64, "width": 64}), tokenizer)
    unmapped = 0
    for text in narratives()[:8]:
        offsets = processor(text=text, max_length=max_length, return_offsets_mapping=True)["offset_mapping"]
        clear_phrase_cache()
        pending = parser.submit(text, offsets[0].tolist())
        spans = pending.result()
        token_phrase_ids = pending.token_phrase_ids()
        with warnings.catch_warnings(record=True) as truncation_warnings:
            warnings.simplefilter("always")
            expected = processor.phrase_inputs(text, spans, offsets, max_length)
        if truncation_warnings:
            assert token_phrase_ids is None and not expected["phrase_mask"].all()
            unmapped += 1
        else:
            assert token_phrase_ids == expected["phrase_ids"][0].tolist() and expected["phrase_mask"].all()
    assert unmapped == (8 if max_length == 12 else 0)
    assert parser.submit(narratives()[0]).token_phrase_ids() is None  # no offsets, no mapping


def test_the_child_of_the_default_pipelines_leaves_torch_out(parser):
    maps = Path(f"/proc/{parser.pid}/maps")
    if not maps.is_file():
        pytest.skip("needs /proc to see the child's libraries")
    assert "libtorch" not in maps.read_text()


def test_concurrent_submissions_get_their_own_spans(parser):
    texts = narratives()[:6]
    expected = {text: extract_phrase_spans(text) for text in texts}
    results, errors = {}, []

    def ground(text):
        try:
            results[text] = parser.submit(text).result()
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=ground, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == expected


def test_a_pipeline_that_cannot_be_loaded_leaves_the_parse_to_the_process():
    parser = background_phrase_parser("no_such_spacy_pipeline")
    assert not parser.wait_until_ready(timeout=120) and not parser.loaded
    assert parser.submit("a dog on the grass") is None
    assert background_phrase_parser("no_such_spacy_pipeline") is parser  # not started again in vain
    with pytest.raises(OSError, match="no_such_spacy_pipeline"):
        extract_phrase_spans("a dog on the grass", "no_such_spacy_pipeline")


def test_no_python_to_start_leaves_the_parse_to_the_process(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.executable", str(tmp_path / "no-python"))
    parser = BackgroundPhraseParser()
    assert not parser.wait_until_ready(timeout=1) and parser.pid is None
    assert parser.submit("a dog") is None
    parser.close()


def test_a_dead_child_falls_back_and_is_replaced(parser):
    text = " ".join(narratives()[:4])
    clear_phrase_cache()
    pending = parser.submit(text)
    parser._process.kill()
    assert pending.result() == extract_phrase_spans(text)  # answered by the child or, after its death, here
    parser._process.wait()
    for _ in range(100):
        if parser.submit(text) is None:
            break
        threading.Event().wait(0.05)
    assert not parser.ready
    replacement = background_phrase_parser()
    assert replacement is not parser and replacement.wait_until_ready(timeout=120)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, minilm_path):
    return save_tiny_model(tmp_path_factory.mktemp("background") / "epng-tiny", minilm_path)


def _count_calls(model):
    calls = []
    get_token_features = model.get_token_features

    def counted(*args, **kwargs):
        calls.append(1)
        return get_token_features(*args, **kwargs)

    model.get_token_features = counted
    return calls


@pytest.mark.parametrize("optimize", [False, True])
def test_pipeline_masks_equal_those_of_a_parse_in_process(model_folder, parser, optimize, monkeypatch):
    grounder = pipeline("panoptic-narrative-grounding", model=str(model_folder), device="cpu", optimize=optimize)
    calls = _count_calls(grounder.model)
    mapped_here = []
    phrase_inputs = grounder.processor.phrase_inputs
    monkeypatch.setattr(
        grounder.processor, "phrase_inputs", lambda *a, **k: mapped_here.append(1) or phrase_inputs(*a, **k)
    )
    tokenized = []
    tokenize = type(grounder.processor.tokenizer).__call__
    monkeypatch.setattr(
        type(grounder.processor.tokenizer), "__call__", lambda *a, **k: tokenized.append(1) or tokenize(*a, **k)
    )
    image = np.random.default_rng(3).integers(0, 256, size=(48, 80, 3), dtype=np.uint8)
    for text in narratives()[:3]:
        clear_phrase_cache()
        background = grounder(image, text, parse_in_background=True)
        assert len(tokenized) == 1  # the phrases found meanwhile are mapped onto the first tokenisation
        clear_phrase_cache()
        in_process = grounder(image, text, parse_in_background=False)
        tokenized.clear()
        assert [(r["start"], r["end"], r["score"]) for r in background] == [
            (r["start"], r["end"], r["score"]) for r in in_process
        ]
        for ours, theirs in zip(background, in_process, strict=True):
            np.testing.assert_array_equal(np.asarray(ours["mask"]), np.asarray(theirs["mask"]))
    assert len(calls) == 3  # the background path ran, once per narrative
    assert not mapped_here  # the child mapped the phrases onto the tokens


def test_truncation_drops_phrases_in_the_background_as_in_the_process(model_folder, parser):
    grounder = pipeline("panoptic-narrative-grounding", model=str(model_folder), device="cpu")
    calls = _count_calls(grounder.model)
    image = np.random.default_rng(5).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    text = narratives()[0]
    results = {}
    for background in (True, False):
        clear_phrase_cache()
        with pytest.warns(UserWarning, match="lost all its tokens to truncation at max_length=12"):
            results[background] = grounder(image, text, max_length=12, parse_in_background=background)
    assert len(calls) == 1
    assert 0 < len(results[True]) < len(extract_phrase_spans(text))
    assert [(r["start"], r["end"], r["score"]) for r in results[True]] == [
        (r["start"], r["end"], r["score"]) for r in results[False]
    ]


def test_batches_parse_in_process(model_folder, parser):
    grounder = pipeline("panoptic-narrative-grounding", model=str(model_folder), device="cpu")
    calls = _count_calls(grounder.model)
    image = np.random.default_rng(4).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    texts = narratives()[3:5]
    clear_phrase_cache()
    batched = grounder([(image, text) for text in texts], batch_size=2, parse_in_background=True)
    assert not calls
    assert [[(r["start"], r["end"]) for r in result] for result in batched] == [
        extract_phrase_spans(text) for text in texts
    ]


@pytest.mark.parametrize("optimize", [False, True])
def test_forward_from_token_features_equals_the_plain_forward(optimize):
    torch.manual_seed(0)
    model = EpngForPanopticNarrativeGrounding(EpngConfig.tiny()).eval()
    if optimize:
        model.optimize_for_inference(dtype="bf16")
    input_ids = torch.randint(1, 100, (2, 9))
    phrase_ids = torch.tensor([[-1, 0, 0, 1, -1, 2, 2, 2, -1], [-1, 1, 1, 0, 0, -1, -1, -1, -1]])
    inputs = {"pixel_values": torch.randn(2, 3, 64, 64), "input_ids": input_ids, "phrase_ids": phrase_ids}
    with torch.inference_mode():
        plain = model(**inputs).mask_logits
        token_features = model.get_token_features(input_ids)
        from_features = model(**inputs, token_features=token_features).mask_logits
        with pytest.raises(ValueError, match="token_features must have shape"):
            model(**inputs, token_features=token_features[:, :5])
    assert token_features.shape[:2] == input_ids.shape
    torch.testing.assert_close(from_features, plain, rtol=0, atol=0)
