"""The web app's logic without a browser: grounding, highlighted spans, overlay switches, examples, input messages."""

import gradio as gr
import numpy as np
import pytest
from app_testing import save_tiny_model
from PIL import Image

from training.app import GroundingHandlers, build_demo
from training.app_backend import (
    AppInputError,
    Grounder,
    highlighted_narrative,
    open_image,
    parse_phrases,
    phrase_table,
    render_overlay,
)

NARRATIVE = "In this picture we can see a red circle and a blue square. The red circle is above the sky."
PHRASES = "a red circle\na blue square; The red circle\nthe sky"


@pytest.fixture(scope="module")
def grounder(tmp_path_factory, minilm_path):
    return Grounder.from_pretrained(save_tiny_model(tmp_path_factory.mktemp("tiny_model"), minilm_path))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "scene.png"
    pixels = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture
def handlers(grounder):
    return GroundingHandlers(grounder)


def test_parse_phrases_splits_lines_and_semicolons():
    assert parse_phrases(PHRASES) == ["a red circle", "a blue square", "The red circle", "the sky"]
    assert parse_phrases(" ; \n") == [] and parse_phrases(None) == []


def test_grounding_gives_one_mask_per_phrase_at_the_image_size(grounder, image_file):
    phrases = grounder(open_image(image_file), NARRATIVE, parse_phrases(PHRASES))
    assert [phrase.phrase for phrase in phrases] == parse_phrases(PHRASES)
    for phrase in phrases:
        assert NARRATIVE[phrase.start : phrase.end] == phrase.phrase
        assert phrase.mask.shape == (50, 70) and phrase.mask.dtype == bool
        assert 0.0 <= phrase.score <= 1.0
    # The repeated "red circle" is matched in order: the second occurrence comes after the first.
    assert phrases[2].start > phrases[0].end
    # The random model predicts probabilities near 0.5: a threshold of 0.01 keeps every pixel, and the table says so.
    everything = grounder(open_image(image_file), NARRATIVE, ["the sky"], threshold=0.01)
    assert everything[0].mask.all() and phrase_table(everything)[0][4] == 100.0


def test_automatic_phrases_when_none_are_typed(handlers, image_file):
    _, _, table, switches, state = handlers.ground(image_file, NARRATIVE, "  ", 0.5)
    phrases = [row[1] for row in table]
    # spaCy's noun chunks without the narrator ("we") and the framing phrase ("this picture")
    assert phrases == ["a red circle", "a blue square", "The red circle", "the sky"]
    assert all(NARRATIVE[p.start : p.end] == p.phrase for p in state["phrases"])
    assert state["phrases"][2].start == NARRATIVE.index("The red circle")
    assert len(switches.choices) == 4


def test_highlighted_pieces_rebuild_the_narrative_with_labelled_phrases(grounder, image_file):
    phrases = grounder(open_image(image_file), NARRATIVE, parse_phrases(PHRASES))
    pieces = highlighted_narrative(NARRATIVE, phrases)
    assert "".join(text for text, _ in pieces) == NARRATIVE
    labelled = [(text, label) for text, label in pieces if label is not None]
    assert labelled == [(phrase.phrase, str(index + 1)) for index, phrase in enumerate(phrases)]


def test_ground_handler_returns_all_outputs(handlers, image_file):
    highlighted, overlay, table, switches, state = handlers.ground(image_file, NARRATIVE, PHRASES, 0.5)
    assert [row[:2] for row in table] == [["1", "a red circle"], ["2", "a blue square"], ["3", "The red circle"]] + [
        ["4", "the sky"]
    ]
    for row in table:
        start, end = (int(side) for side in row[2].split("-"))
        assert NARRATIVE[start:end] == row[1]
    assert set(highlighted.color_map) == {"1", "2", "3", "4"}
    assert len(set(highlighted.color_map.values())) == 4
    assert switches.value == [0, 1, 2, 3]
    assert [value for _, value in switches.choices] == [0, 1, 2, 3]
    # The overlay is the image (left) beside the narrative panel.
    assert overlay.height >= 50 and overlay.width > 70
    assert len(state["phrases"]) == 4


def test_switching_phrases_off_redraws_the_overlay(grounder, image_file):
    image = open_image(image_file)
    phrases = grounder(image, NARRATIVE, ["a red circle"], threshold=0.01)  # the whole image
    state = {"image": image, "narrative": NARRATIVE, "phrases": phrases}
    shown = np.asarray(GroundingHandlers.redraw([0], state))[:50, :70]
    hidden = np.asarray(GroundingHandlers.redraw([], state))[:50, :70]
    assert np.array_equal(hidden, np.asarray(image))
    assert not np.array_equal(shown, hidden)
    assert np.array_equal(shown, np.asarray(render_overlay(image, NARRATIVE, phrases))[:50, :70])
    assert GroundingHandlers.redraw([0], None) is None


@pytest.mark.parametrize(
    "image, narrative, phrases, message",
    [
        (None, NARRATIVE, PHRASES, "Upload an image first"),
        ("image", "   ", PHRASES, "Type a narrative"),
        ("image", "In this picture we can see the left side.", "", "No noun phrase to ground was found"),
        ("image", NARRATIVE, "a green triangle", "Phrase 'a green triangle' not found"),
        ("image", "x" * 2001, "x", "at most 2000"),
    ],
)
def test_bad_input_is_a_readable_message(handlers, image_file, image, narrative, phrases, message):
    with pytest.raises(gr.Error) as error:
        handlers.ground(image_file if image == "image" else image, narrative, phrases, 0.5)
    assert message in error.value.message
    assert "Traceback" not in error.value.message


def test_huge_and_unreadable_images_are_refused(grounder, image_file, tmp_path):
    with pytest.raises(gr.Error, match=r"70 x 50 pixels .* at most 0.0 megapixels. Downscale"):
        GroundingHandlers(grounder, max_image_pixels=1000).ground(image_file, NARRATIVE, PHRASES, 0.5)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    with pytest.raises(AppInputError, match="not an image that can be read"):
        open_image(not_an_image)


def test_a_failing_model_gives_one_line_not_a_traceback(handlers, image_file, monkeypatch):
    def broken_grounder(image, narrative, phrases, threshold):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(handlers, "grounder", broken_grounder)
    with pytest.raises(gr.Error) as error:
        handlers.ground(image_file, NARRATIVE, PHRASES, 0.5)
    assert error.value.message == "Grounding failed: RuntimeError: out of memory"


def test_demo_page_has_the_inputs_outputs_and_examples(grounder, tmp_path):
    from processing.synthetic import generate

    root = generate(tmp_path / "synthetic", num_train=1, num_val=2, seed=0)
    demo = build_demo(grounder, examples_dir=root)
    element_ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert {"image-input", "narrative-input", "ground-button", "overlay", "phrase-table", "phrase-switches"} <= (
        element_ids
    )
    assert any(type(block).__name__ == "Dataset" for block in demo.blocks.values())  # the examples


@pytest.mark.parametrize("flags, optimized", [([], True), (["--no_optimize"], False)])
def test_app_runs_the_fast_path_unless_told_not_to(tmp_path, minilm_path, monkeypatch, flags, optimized):
    import training.app as app

    built = {}
    monkeypatch.setattr(app, "build_demo", lambda grounder, *args: built.setdefault("grounder", grounder))
    monkeypatch.setattr(app, "launch", lambda *args: None)
    app.main(["--model_name_or_path", str(save_tiny_model(tmp_path / "model", minilm_path)), *flags])
    assert (getattr(built["grounder"].pipeline.model, "inference_settings", None) is not None) == optimized
