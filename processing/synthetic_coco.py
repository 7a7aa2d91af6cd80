"""COCO-like images for the synthetic benchmark (``python -m processing.synthetic --image_style coco``).

The plain synthetic images are small (160–320 px) and nearly flat, so their JPEGs are a few KB and decode in well
under a millisecond: they say nothing about the cost of converting or loading COCO, whose train2017 JPEGs are
640 px on the long side and about 160 KB on average. This module scales a synthetic scene to 640 px on its long side
and paints every segment with its own multi-scale texture (smooth shading, mid-size blotches, fine detail and
grain), which gives JPEGs of about 150 KB at quality 90 that take as long to decode as photos of that size. The
panoptic PNG is drawn from the same scaled layout, so it matches the image pixel for pixel.
"""

from __future__ import annotations

import numpy as np
import PIL.Image

IMAGE_STYLES = ("plain", "coco")
"""``plain``: the small flat images of the default benchmark; ``coco``: 640 px textured images (this module)."""
COCO_LONG_SIDE = 640
# Texture octaves: (cell size in pixels, amplitude in grey levels): shading, blotches, detail.
_OCTAVES = ((64, 40.0), (16, 25.0), (4, 18.0))
_GRAIN_RANGE = (12.0, 20.0)  # per-pixel noise std: sets the JPEG size (about 130-170 KB at quality 90)


def coco_scene(scene: dict) -> dict:
    """`scene` (from the plain generator) scaled so that its long side is `COCO_LONG_SIDE` pixels.

    Image size, stuff boundary and every thing's centre and half size are scaled by the same factor, so things
    keep their relative layout and stay apart.
    """
    factor = COCO_LONG_SIDE / max(scene["width"], scene["height"])
    groups = [
        {
            **group,
            "things": [
                {**thing, **{key: round(thing[key] * factor) for key in ("cx", "cy", "half")}}
                for thing in group["things"]
            ],
        }
        for group in scene["groups"]
    ]
    return {
        **scene,
        "width": round(scene["width"] * factor),
        "height": round(scene["height"] * factor),
        "split_row": round(scene["split_row"] * factor),
        "groups": groups,
    }


def _noise_field(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth noise of shape `(height, width)` (float32, about unit variance) varying over `cell` pixels."""
    coarse = rng.normal(0.0, 1.0, (height // cell + 3, width // cell + 3)).astype(np.float32)
    size = (coarse.shape[1] * cell, coarse.shape[0] * cell)
    smooth = np.asarray(PIL.Image.fromarray(coarse, mode="F").resize(size, PIL.Image.BICUBIC))
    return smooth[cell : cell + height, cell : cell + width]


def textured_image(labels: np.ndarray, colours: list, rng: np.random.Generator) -> np.ndarray:
    """Paint each segment of a label map with its own texture.

    Args:
        labels (`np.ndarray` of shape `(height, width)`, integer): segment index per pixel.
        colours (`list` of `(r, g, b)`): base colour per segment index.
        rng: the generator's random state.

    Returns:
        `np.ndarray` of shape `(height, width, 3)`, uint8: base colour with a random tint per segment, plus the
        shared noise octaves weighted per segment (so neighbouring segments differ in texture, not only in colour),
        plus per-pixel grain.
    """
    height, width = labels.shape
    num_segments = len(colours)
    image = np.asarray(colours, dtype=np.float32)[labels]
    image *= rng.uniform(0.85, 1.15, (num_segments, 3)).astype(np.float32)[labels]
    for cell, amplitude in _OCTAVES:
        weight = rng.uniform(0.3, 1.0, num_segments).astype(np.float32) * amplitude
        image += (weight[labels] * _noise_field(rng, height, width, cell))[..., None]
    grain = rng.uniform(*_GRAIN_RANGE)
    image += rng.normal(0.0, grain, (height, width, 3)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)
