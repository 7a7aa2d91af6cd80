"""PNG evaluation: per-phrase IoU at the original image resolution, streamed, Average Recall per subset.

Shared by the Trainer (`EpngTrainer.evaluate`), `training/evaluate_png.py` and the demo. Ground truth travels with
each batch as the image's decoded panoptic id map plus each phrase's segment ids, so masks are never kept for more
than one batch, and a phrase's ground-truth mask is built only when it is scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from modeling_epng.image_processing_epng import decode_panoptic_map, segment_union_masks
from processing.collate import EpngCollator, as_records, pop_metadata

from .metrics import PhraseIouAccumulator, mask_iou

GROUND_TRUTH_KEY = "ground_truth"


class GroundingEvalCollator:
    """`EpngCollator` output plus, under `ground_truth`, one `(id_map (H, W) int64, [segment ids per phrase])`
    pair per example, for scoring at the original resolution.

    Args:
        collator: the training collator (with metadata, i.e. `model_inputs_only=False`).
    """

    def __init__(self, collator: EpngCollator):
        if collator.model_inputs_only:
            raise ValueError("GroundingEvalCollator needs an EpngCollator with model_inputs_only=False")
        self.collator = collator

    def __call__(self, examples: Sequence[Mapping[str, Any]]):
        batch = self.collator(examples)
        batch[GROUND_TRUTH_KEY] = [
            (
                decode_panoptic_map(example["panoptic_map"]),
                [list(phrase["segment_ids"]) for phrase in as_records(example["phrases"])],
            )
            for example in examples
        ]
        return batch


@torch.no_grad()
def evaluate_grounding(
    model,
    dataloader,
    post_process,
    accelerator=None,
    threshold: float | None = None,
    description: str = "Evaluating",
) -> tuple[PhraseIouAccumulator, float | None]:
    """Score every grounded phrase of the dataloader's examples.

    Args:
        model: an `EpngForPanopticNarrativeGrounding` (put in eval mode here).
        dataloader: yields batches from a `GroundingEvalCollator` (already prepared by `accelerator` if any).
        post_process: `processor.post_process_image_grounding` (mask logits (P, h, w) -> masks at the original
            size).
        accelerator: gathers the per-phrase IoUs across processes, each phrase exactly once; `None` for one process.
        threshold: probability threshold; defaults to `model.config.mask_threshold`.

    Returns:
        The gathered `PhraseIouAccumulator` and the mean loss over batches (None if the batches had no targets).
        A phrase whose tokens were all truncated away is scored with an empty prediction (IoU 0), as the benchmark
        still counts it.
    """
    threshold = model.config.mask_threshold if threshold is None else threshold
    was_training = model.training
    model.eval()
    accumulator = PhraseIouAccumulator()
    losses = []
    is_main = accelerator is None or accelerator.is_local_main_process
    device = next(model.parameters()).device
    for batch in tqdm(dataloader, desc=description, disable=not is_main):
        ground_truth = batch.pop(GROUND_TRUTH_KEY)
        metadata = pop_metadata(batch)
        inputs = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
        outputs = model(**inputs)
        if outputs.loss is not None:
            losses.append(outputs.loss.item())
        for index, (id_map, phrase_segment_ids) in enumerate(ground_truth):
            num_phrases = len(phrase_segment_ids)
            if num_phrases == 0:
                continue
            predicted = post_process(outputs.mask_logits[index, :num_phrases], id_map.shape, threshold)["masks"]
            predicted = predicted.cpu() & inputs["phrase_mask"][index, :num_phrases].cpu()[:, None, None]
            ious = mask_iou(predicted, torch.from_numpy(segment_union_masks(id_map, phrase_segment_ids)))
            accumulator.add(
                ious,
                metadata["phrase_is_thing"][index, :num_phrases],
                metadata["phrase_is_plural"][index, :num_phrases],
                [metadata["image_ids"][index]] * num_phrases,
                [int(metadata["narrative_indices"][index])] * num_phrases,
                list(range(num_phrases)),
            )
    accumulator.gather(accelerator)
    model.train(was_training)
    return accumulator, (float(np.mean(losses)) if losses else None)


def write_evaluation_artifacts(accumulator: PhraseIouAccumulator, output_dir: str | Path, prefix: str = "eval"):
    """Write `<prefix>_phrase_ious.csv` and the recall-IoU curves `<prefix>_recall_iou.png` into `output_dir`."""
    output_dir = Path(output_dir)
    csv_path = accumulator.write_csv(output_dir / f"{prefix}_phrase_ious.csv")
    plot_path = accumulator.plot_recall_curves(output_dir / f"{prefix}_recall_iou.png")
    return csv_path, plot_path
