"""The automatic phrases on the annotated Localized-Narratives-style narratives shipped in tests/fixtures."""

import json
from pathlib import Path

import pytest

from training.evaluate_phrases import evaluate_phrase_extraction, locate_phrases, main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "localized_narratives.json"


def test_fixture_size():
    narratives = json.loads(FIXTURE.read_text())["narratives"]
    assert len(narratives) >= 12
    assert sum(len(entry["groundable"]) for entry in narratives) >= 70
    assert sum(len(entry["framing"]) for entry in narratives) >= 30


def test_recall_and_framing_share_meet_targets(capsys):
    result = main([str(FIXTURE)])

    assert result["recall"] >= 0.9, result["missed"]
    assert result["framing_share"] <= 0.05, result["framing_returned"]
    printed = capsys.readouterr().out
    assert f"recall of groundable phrases: {result['recall']:.3f}" in printed
    assert f"framing/position share of returned phrases: {result['framing_share']:.3f}" in printed


def test_metrics_count_misses_and_framing():
    annotations = {
        "narratives": [
            {
                "narrative": "In this image we can see skiing goggles and the top of a hill.",
                "groundable": ["skiing goggles", "a hill"],
                "framing": ["this image", "we", "the top"],
            }
        ]
    }
    result = evaluate_phrase_extraction(annotations)
    assert result["num_groundable"] == 2 and result["recall"] == 1.0
    # Annotating "this image" as groundable instead: it is never returned, so recall halves.
    annotations["narratives"][0]["groundable"] = ["this image", "a hill"]
    annotations["narratives"][0]["framing"] = ["skiing goggles"]
    result = evaluate_phrase_extraction(annotations)
    assert result["recall"] == 0.5 and result["missed"] == ["this image"]
    assert result["framing_share"] == pytest.approx(1 / result["num_returned"])


def test_locate_phrases_matches_whole_words_in_order():
    text = "it sits on it"
    assert locate_phrases(text, ["it", "it"]) == [(0, 2), (11, 13)]
    with pytest.raises(ValueError, match="'dog' is not a whole-word match"):
        locate_phrases(text, ["dog"])
