"""The `panoptic-narrative-grounding` pipeline: outputs, given phrases, batching, threshold, image forms, dtype."""

import functools
import http.server
import threading

import numpy as np
import pytest
import torch
from app_testing import save_tiny_model
from PIL import Image
from transformers import pipeline

from modeling_epng import EpngForPanopticNarrativeGrounding
from modeling_epng.phrase_extraction import extract_phrase_spans

NARRATIVE = "In this image we can see a dog and a red ball on the grass. It is sleeping."


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, minilm_path):
    """A tiny random EPNG with its processor (MiniLM tokenizer, 64x64 inputs), saved by `save_pretrained`."""
    return save_tiny_model(tmp_path_factory.mktemp("pipeline") / "epng-tiny", minilm_path)


@pytest.fixture(scope="module")
def grounder(model_folder):
    return pipeline("panoptic-narrative-grounding", model=str(model_folder), device="cpu")


def random_image(height=50, width=70, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def expected_grounding(grounder, image, narrative, spans, threshold):
    """Processor → model → post-processing by hand, for comparison."""
    inputs = grounder.processor(images=image, text=narrative, phrases=spans, return_original_sizes=True)
    original_sizes = inputs.pop("original_sizes")
    with torch.no_grad():
        outputs = grounder.model(**inputs)
    return grounder.processor.post_process_grounding(outputs, original_sizes, inputs["phrase_mask"], threshold)[0]


def test_automatic_phrases_shapes_and_scores(grounder):
    image = random_image()
    results = grounder(image, NARRATIVE)

    spans = extract_phrase_spans(NARRATIVE)
    assert [(result["start"], result["end"]) for result in results] == spans
    assert [result["phrase"] for result in results] == ["a dog", "a red ball", "the grass", "It"]
    expected = expected_grounding(grounder, image, NARRATIVE, spans, grounder.model.config.mask_threshold)
    for result, mask, score in zip(results, expected["masks"], expected["scores"], strict=True):
        assert set(result) == {"phrase", "start", "end", "score", "mask"}
        assert NARRATIVE[result["start"] : result["end"]] == result["phrase"]
        assert result["mask"].mode == "L" and result["mask"].size == (70, 50)
        mask_array = np.asarray(result["mask"])
        assert set(np.unique(mask_array)) <= {0, 255}
        np.testing.assert_array_equal(mask_array == 255, mask.numpy())
        assert result["score"] == pytest.approx(float(score), abs=1e-6)
        assert 0.0 <= result["score"] <= 1.0


def test_score_is_the_mean_probability_inside_the_mask(grounder):
    image = random_image(seed=1)
    result = grounder(image, NARRATIVE, phrases=["a red ball"])[0]
    inputs = grounder.processor(images=image, text=NARRATIVE, phrases=["a red ball"])
    with torch.no_grad():
        logits = grounder.model(**inputs).mask_logits[0, :1]
    probabilities = torch.nn.functional.interpolate(logits.sigmoid()[None], size=(50, 70), mode="bilinear")[0, 0]
    mask = np.asarray(result["mask"]) == 255
    assert mask.any()
    assert result["score"] == pytest.approx(float(probabilities.numpy()[mask].mean()), abs=1e-5)


def test_given_phrases_are_respected(grounder):
    image = random_image()
    start = NARRATIVE.index("dog and")
    results = grounder(image, NARRATIVE, phrases=["the grass", (start, start + 3), "It"])

    assert [(r["phrase"], r["start"], r["end"]) for r in results] == [
        ("the grass", NARRATIVE.index("the grass"), NARRATIVE.index("the grass") + 9),
        ("dog", start, start + 3),
        ("It", NARRATIVE.index("It"), NARRATIVE.index("It") + 2),
    ]
    with pytest.raises(ValueError, match="'a cat' not found"):
        grounder(image, NARRATIVE, phrases=["a cat"])


def test_batch_equals_one_by_one(grounder):
    pairs = [
        (random_image(seed=2), "a cat sits on a sofa."),
        (random_image(40, 30, seed=3), NARRATIVE),
        (random_image(seed=4), "two people walk on the road next to a car, a bus and some trees"),
        (random_image(seed=5), "In this image we can see the top."),  # no phrase at all
    ]
    batched = grounder(pairs, batch_size=3)
    singles = [grounder(image, narrative) for image, narrative in pairs]

    assert len(batched) == len(pairs) and batched[3] == []
    for batch_result, single_result in zip(batched, singles, strict=True):
        assert [r["phrase"] for r in batch_result] == [r["phrase"] for r in single_result]
        for batch_phrase, single_phrase in zip(batch_result, single_result, strict=True):
            np.testing.assert_array_equal(np.asarray(batch_phrase["mask"]), np.asarray(single_phrase["mask"]))
            assert batch_phrase["score"] == pytest.approx(single_phrase["score"], abs=1e-5)
    images, narratives = zip(*pairs, strict=True)
    as_lists = grounder(list(images), list(narratives), batch_size=2)
    assert [[r["phrase"] for r in result] for result in as_lists] == [[r["phrase"] for r in s] for s in singles]
    with_phrases = grounder([{"image": images[0], "narrative": narratives[0], "phrases": ["a sofa"]}])
    assert [r["phrase"] for r in with_phrases[0]] == ["a sofa"]


def test_threshold_defaults_to_the_config(model_folder):
    image = random_image()
    areas = {}
    for threshold in (0.3, 0.7):
        model = EpngForPanopticNarrativeGrounding.from_pretrained(model_folder, mask_threshold=threshold)
        grounder = pipeline("panoptic-narrative-grounding", model=model, processor=str(model_folder), device="cpu")
        default = grounder(image, NARRATIVE)
        explicit = grounder(image, NARRATIVE, threshold=threshold)
        for a, b in zip(default, explicit, strict=True):
            np.testing.assert_array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))
        areas[threshold] = sum(int((np.asarray(result["mask"]) > 0).sum()) for result in default)
    assert areas[0.3] > areas[0.7]
    with pytest.raises(ValueError, match=r"`threshold` must be in \(0, 1\)"):
        grounder(image, NARRATIVE, threshold=1.5)


def test_image_as_path_url_pil_or_array(grounder, tmp_path):
    array = random_image()
    Image.fromarray(array).save(tmp_path / "image.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/image.png"
        forms = [array, Image.fromarray(array), str(tmp_path / "image.png"), url]
        results = [grounder(image, NARRATIVE, phrases=["a dog", "the grass"], timeout=10) for image in forms]
    finally:
        server.shutdown()
        server.server_close()
    for result in results[1:]:
        for a, b in zip(results[0], result, strict=True):
            np.testing.assert_array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))
            assert a["score"] == pytest.approx(b["score"], abs=1e-6)


@pytest.mark.parametrize("dtype_keyword", ["dtype", "torch_dtype"])  # torch_dtype: transformers' older name
def test_dtype_and_device(model_folder, dtype_keyword):
    grounder = pipeline(
        "panoptic-narrative-grounding", model=str(model_folder), device="cpu", **{dtype_keyword: torch.bfloat16}
    )
    assert grounder.model.dtype == torch.bfloat16 and grounder.device == torch.device("cpu")
    results = grounder(random_image(), NARRATIVE, phrases=["a dog"])
    assert results[0]["mask"].size == (70, 50) and 0.0 <= results[0]["score"] <= 1.0


def test_bad_inputs_name_the_problem(grounder):
    image = random_image()
    with pytest.raises(ValueError, match="non-empty string"):
        grounder(image, "   ")
    with pytest.raises(ValueError, match="as many images as narratives"):
        grounder([image, image], ["a dog"])
    with pytest.raises(ValueError, match="one phrase list per narrative"):
        grounder([(image, "a dog")], phrases=["a dog"])
    for parse_in_background in (False, True):
        with pytest.raises(ValueError, match="Give an image"):
            grounder(None, "a dog on the grass", parse_in_background=parse_in_background)
    with pytest.raises(TypeError, match="Unknown arguments.*'thresold'"):
        grounder(image, "a dog", thresold=0.3)


def test_inference_fast_path_is_on_by_default(grounder, model_folder):
    assert grounder.model.inference_settings is not None
    plain = pipeline("panoptic-narrative-grounding", model=str(model_folder), device="cpu", optimize=False)
    assert getattr(plain.model, "inference_settings", None) is None
    image = random_image()
    fast, slow = grounder(image, NARRATIVE), plain(image, NARRATIVE)
    assert [r["phrase"] for r in fast] == [r["phrase"] for r in slow]
    for a, b in zip(fast, slow, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=2e-2)
        disagreement = (np.asarray(a["mask"]) != np.asarray(b["mask"])).mean()
        assert disagreement < 0.05


def test_cpu_forward_equals_the_base_forward_without_its_device_walk(grounder, monkeypatch):
    from transformers import Pipeline

    model_inputs = grounder.preprocess({"image": random_image(), "narrative": NARRATIVE, "phrases": "auto"})
    expected = Pipeline.forward(grounder, model_inputs)

    def no_walk(*args, **kwargs):
        raise AssertionError("the CPU forward walked its inputs or outputs")

    monkeypatch.setattr(grounder, "_ensure_tensor_on_device", no_walk)
    outputs = grounder.forward(model_inputs)
    assert outputs.keys() == expected.keys()
    torch.testing.assert_close(outputs["mask_logits"], expected["mask_logits"], rtol=0, atol=0)
    assert outputs["mask_logits"].is_inference()
    assert outputs["spans"] == expected["spans"] and outputs["original_size"] == expected["original_size"]
