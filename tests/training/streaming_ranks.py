"""Run under `accelerate launch` by test_streaming.py: records which examples this process streams (one epoch of
training, the whole evaluation part), then trains and evaluates with `run_png.main` on the same arguments."""

import json
import sys
from pathlib import Path

import datasets
from transformers import HfArgumentParser

from training.run_png import DataArguments, EpngTrainingArguments, ModelArguments, main
from training.streaming import streamed_splits

if __name__ == "__main__":
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0  # datasets' 5 s wait after every pass over parquet files
    argv = sys.argv[1:]
    _, data_args, training_args = HfArgumentParser(
        (ModelArguments, DataArguments, EpngTrainingArguments)
    ).parse_args_into_dataclasses(args=argv)
    train, evaluation = streamed_splits(data_args, training_args, evaluates=True)
    record = {
        "world_size": training_args.world_size,
        "train": [[e["image_id"], e["narrative_index"]] for e in train.stream],  # this process's part, epoch 0
        "eval": [[e["image_id"], e["narrative_index"]] for e in evaluation],
        "max_steps": training_args.max_steps,
    }
    output = Path(training_args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"streamed-rank{training_args.process_index}.json").write_text(json.dumps(record))
    main(argv)
