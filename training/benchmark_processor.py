"""Processor section of the EPNG benchmark (`training/benchmark.py --processor`): `EpngProcessor` samples/s per
data-loading worker on synthetic COCO-sized samples (JPEG photo, RGB-encoded panoptic PNG, narrative with phrases)."""

from __future__ import annotations

import io
import math
import statistics
import time

import numpy as np
import torch

from training.offline_text_encoder import offline_text_encoder_path

TRAINING_TARGET, INFERENCE_TARGET = 100, 500
"""The GPU targets in images/s: training at 640 px (with mask targets), inference at batch 32 (without)."""


def synthetic_coco_sample(index: int, width: int, height: int, num_phrases: int) -> dict:
    """A COCO-like sample: a textured JPEG (about 140 KB at 640 x 480, as `processing.synthetic --image_style coco`
    paints), an RGB-encoded panoptic PNG and a ~200-token narrative whose phrases each name one panoptic segment."""
    from PIL import Image

    from processing.synthetic_coco import textured_image

    rng = np.random.default_rng(index)
    segment_ids = rng.choice(np.arange(1, 256**2), size=num_phrases + 4, replace=False)
    labels = np.zeros((height, width), dtype=np.int64)  # index into segment_ids + 1 (0: the background)
    for position in range(len(segment_ids)):  # overlapping rectangles, each a segment with its own texture
        top, left = rng.integers(0, height - 16), rng.integers(0, width - 16)
        bottom, right = top + rng.integers(8, height // 2), left + rng.integers(8, width // 2)
        labels[top:bottom, left:right] = position + 1
    image = textured_image(labels, rng.uniform(40, 215, (len(segment_ids) + 1, 3)).tolist(), rng)
    id_map = np.concatenate([[0], segment_ids])[labels]
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
        "segment_ids": present,
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
    try:
        tokenizer_path = offline_text_encoder_path(tokenizer_path)
    except ImportError:
        reason = "no offline fast BERT tokenizer: pass --tokenizer FOLDER or install epng[demo]"
        return {"section": "processor", "status": "skipped", "reason": reason}
    processor = EpngProcessor(
        image_processor=EpngImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True),
    )
    width, height = sample_size
    samples = [synthetic_coco_sample(index, width, height, num_phrases) for index in range(num_samples)]

    def process(sample, with_targets=True):
        targets = {}
        if with_targets:  # as the training collator passes them; known ids come from segments_info
            targets = {
                "panoptic_maps": Image.open(io.BytesIO(sample["png"])),
                "phrase_segment_ids": sample["phrase_segment_ids"],
                "known_segment_ids": sample["segment_ids"],
            }
        return processor(
            images=Image.open(io.BytesIO(sample["jpeg"])), text=sample["text"], phrases=sample["phrases"], **targets
        )

    def measure(with_targets):
        for sample in samples[:warmup]:
            process(sample, with_targets)
        latencies, cpu_ms = [], []
        for sample in samples:
            start, cpu_start = time.perf_counter(), time.process_time()
            process(sample, with_targets)
            latencies.append((time.perf_counter() - start) * 1000)
            cpu_ms.append((time.process_time() - cpu_start) * 1000)
        return latencies, cpu_ms

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        latencies, cpu_ms = measure(with_targets=True)
        _, inference_cpu_ms = measure(with_targets=False)
    finally:
        torch.set_num_threads(threads)
    # CPU time, unlike the wall clock, does not count the time other processes of a shared machine hold the core:
    # it gives the rate of a worker that has a core to itself.
    training_rate, inference_rate = 1000.0 / statistics.mean(cpu_ms), 1000.0 / statistics.mean(inference_cpu_ms)
    return {
        "section": "processor",
        "status": "ok",
        "reason": None,
        "image_size": [width, height],
        "jpeg_kb": float(np.mean([len(sample["jpeg"]) for sample in samples])) / 1e3,
        "tokens": len(processor.tokenizer(samples[0]["text"]).input_ids),
        "num_phrases": num_phrases,
        "latency_ms": statistics.median(latencies),
        "latencies_ms": latencies,
        "cpu_ms_per_sample": statistics.mean(cpu_ms),
        "cpu_ms_per_sample_without_targets": statistics.mean(inference_cpu_ms),
        "samples_per_s_per_worker_cpu": training_rate,
        "samples_per_s_per_worker_cpu_without_targets": inference_rate,
        "workers_for_training_target": math.ceil(TRAINING_TARGET / training_rate),
        "workers_for_inference_target": math.ceil(INFERENCE_TARGET / inference_rate),
        "samples_per_s_per_worker": 1000.0 * len(latencies) / sum(latencies),
    }
