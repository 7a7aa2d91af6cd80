"""Evaluate a trained EPNG on a PNG split: Average Recall in the paper's layout (All, Thing, Stuff, Single, Plural).

    python training/evaluate_png.py --model_name_or_path DIR_OR_ID --dataset_name DIR_OR_ID [--split validation] [--image_size 1216]
    accelerate launch --multi_gpu --num_processes N training/evaluate_png.py ... (each phrase is counted once)

Writes the per-phrase IoUs (CSV), the recall-IoU curves (PNG) and the metrics (JSON) to `--output_dir`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
from accelerate import Accelerator
from torch.utils.data import DataLoader

from modeling_epng import EpngForPanopticNarrativeGrounding, EpngProcessor
from modeling_epng.configuration_epng import check_input_size
from processing.collate import EpngCollator
from training.data_workers import INFERENCE_WORKERS, default_num_workers
from training.evaluation import GroundingEvalCollator, evaluate_grounding, write_evaluation_artifacts
from training.metrics import format_average_recall_table


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="trained EPNG folder or Hub id (model + processor)")
    parser.add_argument("--dataset_name", required=True, help="converted PNG dataset folder or Hub id")
    parser.add_argument("--split", default="validation")
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="square input size (multiple of 32); default: the processor's (reference eval: 1216)",
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=None, help="default: the model's mask_threshold")
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=default_num_workers(INFERENCE_WORKERS),
        help="data-loading processes (default: 8, at most the usable cores less one; 7 feed 500 images/s)",
    )
    parser.add_argument("--output_dir", default=None, help="where to write CSV/PNG/JSON; default: no files")
    parser.add_argument(
        "--no_optimize",
        action="store_true",
        help="run the plain fp32 eager model instead of the inference fast path (model.optimize_for_inference())",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also torch.compile the fast path: about a minute per input shape on a CPU, so for long evaluations",
    )
    args = parser.parse_args(argv)

    accelerator = Accelerator()
    model = EpngForPanopticNarrativeGrounding.from_pretrained(args.model_name_or_path).to(accelerator.device)
    if not args.no_optimize:
        model.optimize_for_inference(compile=args.compile)
    processor = EpngProcessor.from_pretrained(args.model_name_or_path)
    if args.image_size is not None:
        try:
            check_input_size(args.image_size, args.image_size, "--image_size (height and width)")
        except ValueError as error:
            parser.error(str(error))
        processor.image_processor.size = {"height": args.image_size, "width": args.image_size}
    split = datasets.load_dataset(args.dataset_name, split=args.split)
    if args.max_samples:
        split = split.select(range(min(args.max_samples, len(split))))
    dataloader = accelerator.prepare(
        DataLoader(
            split,
            batch_size=args.batch_size,
            num_workers=args.dataloader_num_workers,
            collate_fn=GroundingEvalCollator(EpngCollator(processor)),
        )
    )
    accumulator, _ = evaluate_grounding(
        model, dataloader, processor.post_process_image_grounding, accelerator, args.threshold
    )
    table = accumulator.table()
    if accelerator.is_main_process:
        print(f"{args.dataset_name} [{args.split}]: {table['num_all']} phrases")
        print(format_average_recall_table({Path(args.model_name_or_path).name or args.model_name_or_path: table}))
        if args.output_dir:
            write_evaluation_artifacts(accumulator, args.output_dir, args.split)
            Path(args.output_dir, f"{args.split}_results.json").write_text(json.dumps(table, indent=2))
    return table


def main(argv=None) -> None:
    """Console entry point: `run` without its result (a console script exits with what it returns; a dict is 1)."""
    run(argv)


if __name__ == "__main__":
    main()
