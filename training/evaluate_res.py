"""Zero-shot referring expression segmentation with EPNG (paper table 4).

    python training/evaluate_res.py --model_name_or_path DIR_OR_ID --refer_root ROOT --dataset_name refcoco --split testA
    python -m training.evaluate_res --model_name_or_path DIR --dataset_dir DATASET_DIR --split testB --random_init_row
    accelerate launch training/evaluate_res.py --model_name_or_path DIR --refer_root ROOT --dataset_name refcocog --split test

Every sentence is grounded as one phrase spanning the whole sentence. Each prediction is resized to the original
image, binarised at `--threshold` (0.3 in the reference code) and compared with the referred object's mask; the
table reports mean IoU over sentences, precision at IoU 0.3 / 0.4 / 0.5 and overall IoU, in percent.

Sentences come from the refer files (`--refer_root`, read by `processing.refer_format.ReferReader`) or from a
folder written by `python -m processing.refer_dataset` (`--dataset_dir`). With `--random_init_row` a second row
scores a model of the same config with fresh random weights except the pretrained text encoder (the paper's
"random init" baseline).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm

from modeling_epng import EpngForPanopticNarrativeGrounding, EpngProcessor
from modeling_epng.configuration_epng import check_input_size
from processing.refer_format import ReferReader, resolve_split_by
from training.metrics import SentenceIouAccumulator, format_res_table, mask_intersection_union

logger = logging.getLogger("evaluate_res")

ZERO_SHOT_ROW = "EPNG (zero-shot)"
RANDOM_INIT_ROW = "random init"
# Keys the evaluation reads from each sentence example (ReferReader examples and converted dataset rows).
EXAMPLE_KEYS = ("image", "mask", "sentence", "sent_id")


class SentenceStream(IterableDataset):
    """
    A one-pass iterable of sentence examples (e.g. `ReferReader.examples(split)`) as a torch `IterableDataset`, so
    that a DataLoader can batch it and accelerate can shard it across processes without holding every mask.

    Args:
        examples (`Iterable[dict]`): the sentence examples; a generator can be iterated only once.
        num_examples (`int`, *optional*): their number, when known (gives the progress bar its total).
    """

    def __init__(self, examples: Iterable[Mapping[str, Any]], num_examples: int | None = None):
        self.examples = examples
        self.num_examples = num_examples

    def __iter__(self):
        return iter(self.examples)

    def __len__(self) -> int:
        if self.num_examples is None:
            raise TypeError("this SentenceStream has no known length")
        return self.num_examples


def load_rgb_image(image: str | Path | Image.Image) -> Image.Image:
    """An image path (ReferReader) or a decoded PIL image (🤗 dataset row) → an RGB PIL image."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image.convert("RGB")


class ReferEvalCollator:
    """
    Sentence examples → model inputs, plus each sentence's ground-truth mask and id (kept for this batch only).

    The whole sentence is the one phrase of its "narrative", span `(0, len(sentence))`. A blank sentence has no
    token to ground, so it gets no phrase and is scored with an empty prediction.

    Args:
        processor ([`EpngProcessor`]): turns images and sentences into model inputs.
        image_size (`int`, *optional*): square model input size; defaults to the processor's size.
    """

    def __init__(self, processor: EpngProcessor, image_size: int | None = None):
        self.processor = processor
        self.image_processor_kwargs = {}
        if image_size is not None:
            self.image_processor_kwargs["size"] = {"height": image_size, "width": image_size}

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        sentences = [example["sentence"] for example in examples]
        inputs = self.processor(
            images=[load_rgb_image(example["image"]) for example in examples],
            text=sentences,
            phrases=[[(0, len(sentence))] if sentence.strip() else [] for sentence in sentences],
            **self.image_processor_kwargs,
        )
        batch = dict(inputs)
        # A copy per sentence: ReferReader's masks are read-only arrays, which torch cannot wrap without a warning.
        batch["gt_masks"] = [torch.tensor(np.asarray(example["mask"], dtype=bool)) for example in examples]
        batch["sent_ids"] = [int(example["sent_id"]) for example in examples]
        return batch


def _as_torch_dataset(examples: Any) -> Any:
    """Indexable examples (a list, a 🤗 `Dataset`) and torch `IterableDataset`s as they are; other iterables
    (generators) wrapped in a [`SentenceStream`]."""
    if isinstance(examples, IterableDataset) or (hasattr(examples, "__getitem__") and hasattr(examples, "__len__")):
        return examples
    return SentenceStream(examples, len(examples) if hasattr(examples, "__len__") else None)


@torch.no_grad()
def evaluate_res(
    model: EpngForPanopticNarrativeGrounding,
    processor: EpngProcessor,
    examples: Any,
    threshold: float = 0.3,
    batch_size: int = 8,
    accelerator: Accelerator | None = None,
    image_size: int | None = None,
    description: str = "Evaluating",
) -> dict[str, float | int]:
    """
    Referring segmentation metrics of `model` on sentence examples, each sentence grounded as one phrase.

    Args:
        model ([`EpngForPanopticNarrativeGrounding`]): put in eval mode for the loop (its mode is restored after).
        processor ([`EpngProcessor`]): prepares the inputs and post-processes the mask logits.
        examples: sentence examples with `image` (path or PIL image), `mask` (bool `(H, W)` array or PIL image at
            the image's size), `sentence` and a unique `sent_id`: a `ReferReader.examples(split)` generator, a list,
            a 🤗 `Dataset` loaded from a `processing.refer_dataset` folder, or a [`SentenceStream`].
        threshold (`float`, defaults to 0.3): probability threshold of the predicted masks.
        batch_size (`int`, defaults to 8): sentences per forward pass (sentences of one image may share a batch).
        accelerator (`Accelerator`, *optional*): shards the sentences across processes and gathers the counts;
            `None` runs in this process on the model's device.
        image_size (`int`, *optional*): square model input size (a multiple of 32); defaults to the processor's.
        description (`str`): label of the progress bar.

    Returns:
        `dict`: `mean_iou`, `precision@0.3`, `precision@0.4`, `precision@0.5`, `overall_iou` (percent) and
        `num_sentences`, over all processes (see [`training.metrics.res_metrics`]).
    """
    dataloader = DataLoader(
        _as_torch_dataset(examples), batch_size=batch_size, collate_fn=ReferEvalCollator(processor, image_size)
    )
    if accelerator is not None:
        model.to(accelerator.device)
        # Each process reads its own batches: dispatching them from the main process would need tensors of one
        # shape, and the ground-truth masks have each image's size.
        dataloader = prepare_data_loader(
            dataloader,
            device=accelerator.device,
            num_processes=accelerator.num_processes,
            process_index=accelerator.process_index,
            dispatch_batches=False,
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    accumulator = SentenceIouAccumulator()
    show_progress = accelerator is None or accelerator.is_local_main_process
    for batch in tqdm(dataloader, desc=description, disable=not show_progress):
        gt_masks, sent_ids = batch.pop("gt_masks"), batch.pop("sent_ids")
        inputs = {key: value.to(device) for key, value in batch.items()}
        mask_logits = model(**inputs).mask_logits  # (B, P, H/4, W/4), P = 1 (0 if every sentence is blank)
        has_phrase = inputs["phrase_mask"].any(dim=1)
        intersections, unions = [], []
        for sentence_logits, grounded, gt_mask in zip(mask_logits, has_phrase, gt_masks, strict=True):
            gt_mask = gt_mask.to(device)
            if grounded:
                predicted = processor.post_process_image_grounding(sentence_logits[:1], gt_mask.shape, threshold)
                predicted_mask = predicted["masks"][0]
            else:
                predicted_mask = torch.zeros_like(gt_mask)
            intersection, union = mask_intersection_union(predicted_mask, gt_mask)
            intersections.append(int(intersection))
            unions.append(int(union))
        accumulator.add(intersections, unions, sent_ids)
    model.train(was_training)
    accumulator.gather(accelerator)
    return accumulator.metrics()


def random_init_like(model: EpngForPanopticNarrativeGrounding, seed: int = 0) -> EpngForPanopticNarrativeGrounding:
    """
    The paper's "random init" baseline: a model of `model`'s config with fresh random weights, except the text
    encoder, whose pretrained weights are copied from `model` (the paper's text encoder is always pretrained).

    Args:
        model ([`EpngForPanopticNarrativeGrounding`]): the trained model.
        seed (`int`, defaults to 0): seed of the random weights (the same on every process).
    """
    torch.manual_seed(seed)
    random_model = EpngForPanopticNarrativeGrounding(model.config)
    random_model.phrase_encoder.text_encoder.load_state_dict(model.phrase_encoder.text_encoder.state_dict())
    return random_model.to(device=next(model.parameters()).device)


def load_model_and_processor(name_or_path: str) -> tuple[EpngForPanopticNarrativeGrounding, EpngProcessor]:
    """
    Load a trained EPNG and its processor from one folder or Hub id.

    Raises:
        `FileNotFoundError`: `name_or_path` is neither a folder nor a loadable model id.
        `OSError`: the model loads but the processor files (processor/tokenizer configs) are missing.
    """
    try:
        model = EpngForPanopticNarrativeGrounding.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        if not Path(name_or_path).is_dir():
            raise FileNotFoundError(f"model folder not found (nor a loadable Hub model id): {name_or_path}") from error
        raise
    try:
        processor = EpngProcessor.from_pretrained(name_or_path)
    except OSError as error:
        raise OSError(
            f"no EPNG processor files in {name_or_path} (processor_config.json and the tokenizer files): save the "
            "processor next to the model with `processor.save_pretrained(folder)`"
        ) from error
    return model, processor


def load_examples(args: argparse.Namespace) -> tuple[Callable[[], Any], int]:
    """
    The sentence examples that the arguments select.

    Returns:
        A function returning a fresh pass over the examples (a stream can be read only once, and each table row
        reads them again), and the number of sentences.
    """
    if args.dataset_dir is not None:
        import datasets

        dataset = datasets.load_dataset(args.dataset_dir, split=args.split).select_columns(list(EXAMPLE_KEYS))
        if args.max_samples is not None:
            dataset = dataset.select(range(min(args.max_samples, len(dataset))))
        return (lambda: dataset), len(dataset)

    reader = ReferReader(
        args.refer_root,
        args.dataset_name,
        split_by=args.split_by,
        images_dir=args.images_dir,
        allow_pickle=args.allow_pickle,
    )
    num_examples = reader.num_examples(args.split)
    if args.max_samples is not None:
        num_examples = min(num_examples, args.max_samples)

    def read_split() -> SentenceStream:
        return SentenceStream(itertools.islice(reader.examples(args.split), num_examples), num_examples)

    return read_split, num_examples


def model_input_size(processor: EpngProcessor, image_size: int | None) -> list[int]:
    """`[height, width]` of the model input: `image_size` squared, or the processor's own size."""
    if image_size is not None:
        return [image_size, image_size]
    size = processor.image_processor.size
    return [size.height, size.width]


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="trained EPNG folder or Hub id (model + processor)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--refer_root", help="folder with <dataset>/refs(<split_by>).p and <dataset>/instances.json")
    source.add_argument("--dataset_dir", help="folder written by `python -m processing.refer_dataset`")
    parser.add_argument("--dataset_name", help="refcoco, refcoco+ or refcocog (required with --refer_root)")
    parser.add_argument("--split", required=True, help="e.g. val, testA, testB (RefCOCOg: val, test)")
    parser.add_argument("--split_by", default=None, help="unc, umd or google (default: the dataset's usual one)")
    parser.add_argument(
        "--images_dir", default=None, help="COCO 2014 train images (default: REFER_ROOT/images/train2014)"
    )
    parser.add_argument(
        "--allow_pickle",
        action="store_true",
        help="load a refs pickle that names Python globals (runs code from the file: trusted files only)",
    )
    parser.add_argument("--threshold", type=float, default=0.3, help="mask probability threshold (reference: 0.3)")
    parser.add_argument("--image_size", type=int, default=None, help="square input size (default: the processor's)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_samples", type=int, default=None, help="evaluate only the first N sentences")
    parser.add_argument("--random_init_row", action="store_true", help="add the paper's 'random init' row")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init model's weights")
    parser.add_argument("--output_json", default=None, help="write the metrics of every row to this file")
    args = parser.parse_args(argv)
    if args.refer_root is not None and args.dataset_name is None:
        parser.error("--dataset_name is required with --refer_root")
    if args.image_size is not None:
        try:
            check_input_size(args.image_size, args.image_size, "--image_size (height and width)")
        except ValueError as error:
            parser.error(str(error))
    if not 0 <= args.threshold <= 1:
        parser.error(f"--threshold must lie in [0, 1], got {args.threshold}")
    for name in ("batch_size", "max_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    return parser, args


def run(argv: Sequence[str] | None = None) -> dict[str, dict[str, float | int]]:
    """Evaluate, print the table (main process) and write the JSON if asked; return the metrics of every row."""
    parser, args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    accelerator = Accelerator()
    try:
        model, processor = load_model_and_processor(args.model_name_or_path)
        make_examples, num_examples = load_examples(args)
    except (OSError, ValueError) as error:  # wrong arguments or files (FileNotFoundError is an OSError): no traceback
        parser.error(str(error))
    if num_examples == 0:
        parser.error(f"split {args.split!r} has no sentences")
    dataset_name = args.dataset_name or Path(args.dataset_dir).name
    logger.info("%s %s: %d sentences, threshold %s", dataset_name, args.split, num_examples, args.threshold)

    models = {ZERO_SHOT_ROW: model}
    if args.random_init_row:
        models[RANDOM_INIT_ROW] = random_init_like(model, args.seed)
    rows = {}
    for row, row_model in models.items():
        rows[row] = evaluate_res(
            row_model,
            processor,
            make_examples(),
            threshold=args.threshold,
            batch_size=args.batch_size,
            accelerator=accelerator,
            image_size=args.image_size,
            description=row,
        )

    if accelerator.is_main_process:
        print(f"\n{dataset_name} {args.split} ({num_examples} sentences, threshold {args.threshold})")
        print(format_res_table(rows))
        if args.output_json is not None:
            report = {
                "model": args.model_name_or_path,
                "dataset": dataset_name,
                "split": args.split,
                "split_by": resolve_split_by(args.dataset_name, args.split_by) if args.refer_root else None,
                "threshold": args.threshold,
                "image_size": model_input_size(processor, args.image_size),
                "results": rows,
            }
            output_path = Path(args.output_json)
            output_path.parent.mkdir(parents=True, exist_ok=True)
            output_path.write_text(json.dumps(report, indent=2) + "\n")
            logger.info("wrote %s", output_path)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: `run` without its result (a console script exits with what it returns; a dict is 1)."""
    run(argv)


if __name__ == "__main__":
    main()
