"""`--image_style coco` of the synthetic generator: COCO-sized, textured JPEGs of realistic byte size, with panoptic
PNGs that match them and convert like the plain benchmark."""

import json

import numpy as np
import PIL.Image
import pytest

from processing import synthetic
from processing.png_format import PngFormatReader


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("coco"), num_train=4, num_val=1, seed=3, image_style="coco")


def test_images_are_coco_sized_textured_jpegs_of_realistic_size(root):
    panoptic = json.loads((root / "annotations" / "panoptic_train2017.json").read_text())
    sizes = []
    for image_entry, annotation in zip(panoptic["images"], panoptic["annotations"], strict=True):
        path = root / "images" / "train2017" / image_entry["file_name"]
        sizes.append(path.stat().st_size)
        with PIL.Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert max(image.size) == 640 and min(image.size) >= 360
            assert image.size == (image_entry["width"], image_entry["height"])
            pixels = np.asarray(image).astype(np.float64)
        panoptic_path = root / "annotations" / "panoptic_segmentation" / "train2017" / annotation["file_name"]
        with PIL.Image.open(panoptic_path) as panoptic_png:
            assert panoptic_png.size == image.size
            rgb = np.asarray(panoptic_png.convert("RGB")).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
        for segment in annotation["segments_info"]:
            inside = ids == segment["id"]
            assert inside.sum() == segment["area"]
            # textured, not a flat colour plus JPEG noise: every segment varies a lot inside
            assert pixels[inside].std(axis=0).mean() > 10, segment
    assert 100_000 < np.mean(sizes) < 250_000, sizes  # COCO train2017: about 160 KB per JPEG


def test_coco_style_converts_like_the_plain_benchmark(root):
    reader = PngFormatReader(root, "train2017")
    examples = list(reader.iter_examples(strict=True))
    assert len(examples) == 4 and not reader.report.counts
    assert all(len(example["image"]["bytes"]) > 50_000 for example in examples)


def test_unknown_image_style_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="image_style"):
        synthetic.generate(tmp_path / "x", num_train=1, num_val=1, image_style="photo")
