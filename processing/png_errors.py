"""Errors and skip bookkeeping of the PNG benchmark reader: what can be wrong with a narrative, the exception raised
for it in strict mode, and the per-reason counts kept when bad narratives are skipped instead."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

SKIP_REASONS = {
    "no_grounded_phrase": "the narrative has no noun segment with segment ids (skipped, not an error)",
    "malformed_narrative": "a narrative entry lacks image_id/caption/segments or has non-integer segment ids",
    "missing_panoptic_annotation": "the image id has no image entry or no annotation in panoptic_{split}.json",
    "duplicate_image_id": "the image id has several image entries or annotations in panoptic_{split}.json",
    "unknown_segment_id": "a segment id is absent from that image's segments_info in panoptic_{split}.json",
    "unknown_category": "a segment's category_id is absent from the categories of panoptic_{split}.json",
    "utterance_mismatch": "an utterance cannot be found in the caption after the previous utterance",
    "missing_image": "the image file does not exist",
    "missing_panoptic_png": "the panoptic PNG does not exist",
    "corrupt_image": "the image file cannot be read or decoded",
    "corrupt_panoptic_png": "the panoptic PNG cannot be read or decoded, or is not RGB",
    "size_mismatch": "image, panoptic PNG and panoptic json disagree on the image size",
    "segment_not_in_panoptic_png": "a phrase's segment id is in segments_info but drawn nowhere in the panoptic PNG",
}
"""Every reason a narrative can be skipped for, with its meaning (used in reports and the dataset card)."""


def _rebuild_error(cls, detail, location):
    return cls(detail, **location)


class PngFormatError(ValueError):
    """Bad benchmark data. The message names the file at fault and, when known, the narrative.

    Attributes:
        reason (`str`): key of [`SKIP_REASONS`] (or ``"malformed_json"`` for an unparsable json file).
        detail (`str`): what is wrong, without the location.
        path (`str`): the file at fault.
        image_id (`str`, *optional*), narrative_index (`int`, *optional*): the narrative (index among the
            narratives of that image), entry (`int`, *optional*): position of the narrative in the narratives file.
    """

    reason = "malformed_json"

    def __init__(self, detail, *, path, reason=None, image_id=None, narrative_index=None, entry=None):
        self.detail, self.path, self.reason = detail, str(path), reason or self.reason
        self.image_id, self.narrative_index, self.entry = image_id, narrative_index, entry
        location = f"file {self.path}"
        if image_id is not None:
            location += f"; narrative {narrative_index} of image {image_id!r} (entry #{entry} of the narratives file)"
        super().__init__(f"{detail} [{self.reason}; {location}]")

    def __reduce__(self):
        # Exceptions are pickled through `args` by default, which would lose the keyword-only location when a
        # conversion worker process sends the error back to the main process.
        location = {key: getattr(self, key) for key in ("path", "reason", "image_id", "narrative_index", "entry")}
        return _rebuild_error, (type(self), self.detail, location)


class MissingFileError(PngFormatError, FileNotFoundError):
    """An image or panoptic PNG named by the annotations does not exist."""


class CorruptFileError(PngFormatError):
    """An image or panoptic PNG exists but cannot be read or decoded."""


class InconsistentAnnotationError(PngFormatError):
    """The narrative and the panoptic json disagree (unknown image/segment/category, sizes, malformed entry)."""


class UtteranceMismatchError(PngFormatError):
    """An utterance of the narrative cannot be located in its caption."""


ERROR_CLASSES = {
    **dict.fromkeys(("missing_image", "missing_panoptic_png"), MissingFileError),
    **dict.fromkeys(("corrupt_image", "corrupt_panoptic_png"), CorruptFileError),
    **dict.fromkeys(("malformed_narrative", "missing_panoptic_annotation"), InconsistentAnnotationError),
    **dict.fromkeys(("unknown_segment_id", "unknown_category", "size_mismatch"), InconsistentAnnotationError),
    **dict.fromkeys(("duplicate_image_id", "segment_not_in_panoptic_png"), InconsistentAnnotationError),
    "utterance_mismatch": UtteranceMismatchError,
}
"""The exception class raised for each reason of [`SKIP_REASONS`] that is bad data."""


@dataclass
class SkipReport:
    """Counts of skipped narratives per reason, with the first few messages of each reason.

    Args:
        max_examples (`int`): how many messages to keep per reason.
    """

    max_examples: int = 3
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def record(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self.max_examples:
            kept.append(message)

    def merge(self, other: SkipReport) -> None:
        for reason, count in other.counts.items():
            self.counts[reason] += count
            kept = self.examples.setdefault(reason, [])
            kept.extend(other.examples.get(reason, [])[: self.max_examples - len(kept)])

    @property
    def num_errors(self) -> int:
        """Skipped narratives that were bad data (everything except ``no_grounded_phrase``)."""
        return sum(count for reason, count in self.counts.items() if reason != "no_grounded_phrase")

    def format(self) -> str:
        """Human-readable multi-line summary; empty string when nothing was skipped."""
        lines = []
        for reason, count in sorted(self.counts.items()):
            lines.append(f"  {reason}: {count} ({SKIP_REASONS.get(reason, '')})")
            lines.extend(f"    e.g. {message}" for message in self.examples.get(reason, []))
        return "\n".join(lines)
