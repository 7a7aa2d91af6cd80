"""What the EPNG web app computes, without Gradio: input checks, grounding, the highlighted narrative, the phrase
table and the overlay. `training/app.py` wires these into the page.

Every problem with what a user typed or uploaded raises [`AppInputError`], whose message is written for the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
from PIL import Image, ImageOps
from transformers import pipeline

from modeling_epng.pipeline_epng import TASK, EpngPanopticNarrativeGroundingPipeline
from processing.visualization import distinct_colors, draw_grounding

# 16 megapixels (e.g. 4608 x 3456, a phone photo): the masks of 20 phrases at that size take 320 MB.
DEFAULT_MAX_IMAGE_PIXELS = 16_000_000
# The processor truncates narratives to 300 tokens; a few thousand characters stay well below.
MAX_NARRATIVE_CHARACTERS = 2000


class AppInputError(ValueError):
    """An image, narrative or phrase list the app cannot ground; the message says what to change."""


@dataclass
class GroundedPhrase:
    """One phrase of the narrative and its predicted mask.

    Attributes:
        phrase (`str`): `narrative[start:end]`.
        start (`int`), end (`int`): character span in the narrative (end exclusive).
        score (`float`): mean mask probability inside the mask (0 for an empty mask).
        mask (`np.ndarray` of shape `(H, W)`, bool): the mask at the image's resolution.
    """

    phrase: str
    start: int
    end: int
    score: float
    mask: np.ndarray


def open_image(image: str | Path | Image.Image | None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """The uploaded image as RGB with its EXIF orientation applied; its size is checked before it is decoded."""
    if image is None:
        raise AppInputError("Upload an image first.")
    if not isinstance(image, Image.Image):
        try:
            image = Image.open(image)
        except PIL.Image.DecompressionBombError as error:
            raise AppInputError(f"The image is too large to open safely ({error}).") from error
        except (OSError, ValueError) as error:
            raise AppInputError(f"The uploaded file is not an image that can be read: {error}") from error
    width, height = image.size
    if width * height > max_pixels:
        raise AppInputError(
            f"The image is {width} x {height} pixels ({width * height / 1e6:.1f} megapixels); this app accepts at "
            f"most {max_pixels / 1e6:.1f} megapixels. Downscale the image and upload it again."
        )
    try:
        return ImageOps.exif_transpose(image).convert("RGB")
    except OSError as error:
        raise AppInputError(f"The uploaded image cannot be decoded: {error}") from error


def check_narrative(narrative: str | None) -> str:
    """The narrative, unchanged, if it has words and is not too long."""
    if narrative is None or not narrative.strip():
        raise AppInputError("Type a narrative that describes the image first.")
    if len(narrative) > MAX_NARRATIVE_CHARACTERS:
        raise AppInputError(
            f"The narrative has {len(narrative)} characters; this app grounds at most {MAX_NARRATIVE_CHARACTERS}."
        )
    return narrative


def parse_phrases(phrases_text: str | None) -> list[str]:
    """The phrases typed in the phrase box: one per line or separated by `;`, in narrative order."""
    if not phrases_text:
        return []
    return [phrase.strip() for line in phrases_text.splitlines() for phrase in line.split(";") if phrase.strip()]


class Grounder:
    """The `panoptic-narrative-grounding` pipeline of a model, loaded once; calling it grounds one narrative on one
    image and turns the pipeline's result into [`GroundedPhrase`]s (or an [`AppInputError`]).

    Args:
        grounding_pipeline ([`EpngPanopticNarrativeGroundingPipeline`]): the pipeline.
    """

    def __init__(self, grounding_pipeline: EpngPanopticNarrativeGroundingPipeline):
        self.pipeline = grounding_pipeline

    @classmethod
    def from_pretrained(
        cls, model_name_or_path: str | Path, device: str | None = None, optimize: bool = True
    ) -> Grounder:
        """The pipeline of a folder written by `save_pretrained` or of a Hub repository id; `optimize=False` runs the
        model as loaded instead of after `optimize_for_inference()`."""
        return cls(pipeline(TASK, model=str(model_name_or_path), device=device, optimize=optimize))

    @property
    def default_threshold(self) -> float:
        return float(self.pipeline.model.config.mask_threshold)

    def __call__(
        self, image: Image.Image, narrative: str, phrases: Sequence[str] = (), threshold: float | None = None
    ) -> list[GroundedPhrase]:
        """Ground `phrases` (strings matched left to right in `narrative`), or, when none are given, the noun phrases
        found automatically, on `image`.

        Returns:
            `list[GroundedPhrase]`, one per phrase, in narrative order.
        """
        try:
            results = self.pipeline(image, narrative, phrases=list(phrases) if phrases else "auto", threshold=threshold)
        except (ValueError, ImportError) as error:
            raise AppInputError(str(error)) from error
        if not results:
            raise AppInputError(
                "No noun phrase to ground was found in the narrative: name the things and the stuff you see "
                "(e.g. 'a dog on the grass'), or type the phrases in the phrase box."
            )
        return [
            GroundedPhrase(
                result["phrase"], result["start"], result["end"], result["score"], np.asarray(result["mask"]) > 0
            )
            for result in results
        ]


def phrase_label(index: int) -> str:
    """The label of phrase `index` in the highlighted narrative, the table and the switches."""
    return str(index + 1)


def phrase_colors(count: int) -> list[str]:
    """One `#rrggbb` colour per phrase, the colours its mask has in the overlay."""
    return ["#{:02x}{:02x}{:02x}".format(*color) for color in distinct_colors(count)]


def highlighted_narrative(narrative: str, phrases: Sequence[GroundedPhrase]) -> list[tuple[str, str | None]]:
    """The narrative cut into `(text, label)` pieces: each phrase with its label, the text between with `None`.
    The pieces join back into the narrative."""
    pieces: list[tuple[str, str | None]] = []
    position = 0
    for index, phrase in sorted(enumerate(phrases), key=lambda item: item[1].start):
        if phrase.start > position:
            pieces.append((narrative[position : phrase.start], None))
        pieces.append((narrative[phrase.start : phrase.end], phrase_label(index)))
        position = phrase.end
    if position < len(narrative):
        pieces.append((narrative[position:], None))
    return pieces


TABLE_HEADERS = ["#", "phrase", "characters", "score", "mask area (%)"]


def phrase_table(phrases: Sequence[GroundedPhrase]) -> list[list]:
    """One row per phrase: label, text, character span, score and the share of the image its mask covers."""
    return [
        [
            phrase_label(index),
            phrase.phrase,
            f"{phrase.start}-{phrase.end}",
            round(phrase.score, 3),
            round(100.0 * float(phrase.mask.mean()), 1),
        ]
        for index, phrase in enumerate(phrases)
    ]


def render_overlay(
    image: Image.Image, narrative: str, phrases: Sequence[GroundedPhrase], shown: Sequence[int] | None = None
) -> Image.Image:
    """The image with the masks of the `shown` phrases (indices; all when `None`) blended in their colours, beside
    the narrative with those phrases written in the same colours."""
    colors = distinct_colors(len(phrases))
    indices = range(len(phrases)) if shown is None else sorted({int(index) for index in shown})
    masks = np.stack([phrases[i].mask for i in indices]) if indices else np.zeros((0, image.height, image.width), bool)
    # The text is drawn in pixels of the figure, so it grows with the image to stay readable when the page scales.
    font_size = max(14, image.width // 40)
    return draw_grounding(
        image,
        narrative,
        [(phrases[i].start, phrases[i].end) for i in indices],
        masks,
        colors=[colors[i] for i in indices],
        text_width=max(image.width, 20 * font_size),
        font_size=font_size,
    )


__all__ = [
    "AppInputError",
    "GroundedPhrase",
    "Grounder",
    "check_narrative",
    "highlighted_narrative",
    "open_image",
    "parse_phrases",
    "phrase_colors",
    "phrase_table",
    "render_overlay",
]
