"""Quality of the automatic noun phrases on annotated narratives, run as `python -m training.evaluate_phrases`.

    python -m training.evaluate_phrases tests/fixtures/localized_narratives.json

The file lists narratives with, per narrative, the phrases an annotator would ground (`groundable`) and the narrator,
framing and position phrases it contains (`framing`), each as text in order of appearance. Printed:

* recall: the share of groundable phrases that a returned phrase matches. A returned phrase matches when it ends on
  the same character (the head noun) and lies inside the annotated one, so "goggles" matches "skiing goggles" but
  "a group" does not match "a group of people"; `exact_recall` counts identical spans only.
* framing_share: the share of returned phrases that overlap a framing or position phrase.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path

from modeling_epng.phrase_extraction import extract_phrase_spans


def locate_phrases(text: str, phrases: Sequence[str]) -> list[tuple[int, int]]:
    """Spans of `phrases` in `text`, each the first whole-word match after the previous one."""
    spans, search_from = [], 0
    for phrase in phrases:
        match = re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)").search(text, search_from)
        if match is None:
            raise ValueError(f"{phrase!r} is not a whole-word match of {text!r} after character {search_from}")
        spans.append(match.span())
        search_from = match.end()
    return spans


def _matches(returned: tuple[int, int], expected: tuple[int, int]) -> bool:
    return returned[1] == expected[1] and returned[0] >= expected[0]


def evaluate_phrase_extraction(annotations: dict, spacy_model: str | None = None) -> dict:
    """
    Recall of the groundable phrases and share of framing/position phrases among the returned ones.

    Args:
        annotations (`dict`): `{"narratives": [{"narrative", "groundable", "framing"}, ...]}`.
        spacy_model (`str`, *optional*): spaCy pipeline to parse with (see `load_spacy_pipeline`).

    Returns:
        `dict` with `recall`, `exact_recall`, `framing_share`, the counts, and `missed` / `framing_returned` (the
        phrase texts, for inspection).
    """
    narratives = annotations["narratives"]
    all_returned = extract_phrase_spans([entry["narrative"] for entry in narratives], spacy_model)
    counts = {"num_narratives": len(narratives), "num_groundable": 0, "num_framing": 0, "num_returned": 0}
    recalled = exact = framing_returned_count = 0
    missed, framing_returned = [], []
    for entry, returned in zip(narratives, all_returned, strict=True):
        text = entry["narrative"]
        groundable = locate_phrases(text, entry["groundable"])
        framing = locate_phrases(text, entry["framing"])
        counts["num_groundable"] += len(groundable)
        counts["num_framing"] += len(framing)
        counts["num_returned"] += len(returned)
        for span in groundable:
            if any(_matches(candidate, span) for candidate in returned):
                recalled += 1
                exact += span in returned
            else:
                missed.append(text[span[0] : span[1]])
        for start, end in returned:
            if any(start < framing_end and framing_start < end for framing_start, framing_end in framing):
                framing_returned_count += 1
                framing_returned.append(text[start:end])
    return {
        "recall": recalled / max(counts["num_groundable"], 1),
        "exact_recall": exact / max(counts["num_groundable"], 1),
        "framing_share": framing_returned_count / max(counts["num_returned"], 1),
        **counts,
        "missed": missed,
        "framing_returned": framing_returned,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("annotations_file", help="JSON file of annotated narratives (see above).")
    parser.add_argument("--spacy_model", default=None, help="installed spaCy English pipeline (default: the small one)")
    args = parser.parse_args(argv)
    annotations = json.loads(Path(args.annotations_file).read_text(encoding="utf-8"))
    result = evaluate_phrase_extraction(annotations, args.spacy_model)
    print(
        f"{result['num_narratives']} narratives, {result['num_groundable']} groundable and {result['num_framing']} "
        f"framing/position phrases, {result['num_returned']} returned\n"
        f"recall of groundable phrases: {result['recall']:.3f} (exact spans: {result['exact_recall']:.3f})\n"
        f"framing/position share of returned phrases: {result['framing_share']:.3f}"
    )
    if result["missed"]:
        print(f"missed: {result['missed']}")
    if result["framing_returned"]:
        print(f"framing/position returned: {result['framing_returned']}")
    return result


if __name__ == "__main__":
    main()
