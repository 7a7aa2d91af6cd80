"""Streaming training and evaluation for `run_png.py --streaming`: the PNG splits as 🤗 `IterableDataset`s.

A converted PNG dataset with COCO's images embedded is tens of GB; streamed, each process reads its part of the
parquet files (a local folder or a Hub dataset id) as it trains, without downloading or memory-mapping the whole.

- Each process keeps its own part of a split with `datasets.distributed.split_dataset_by_node`: whole files when
  their number is a multiple of the number of processes, else every `world_size`-th example. The parts are disjoint
  and together they are the split, so evaluation scores each phrase once (the scores are then gathered).
- Training examples pass through a shuffle buffer (`--shuffle_buffer_size`) after the file order is shuffled; both
  depend on `--seed` and the epoch only, so a run is reproducible.
- The stream is chained epoch after epoch (`EpochStream`), so `Trainer` sees one endless pass and stops at
  `max_steps`. The epoch-based LR schedule needs the split's size: from the dataset card (`dataset_info`, which
  `processing.png_dataset` writes), or `--num_train_examples`; `max_steps` follows from `--num_train_epochs`.
- Resuming a checkpoint skips, in every process, the examples already trained on: the same examples in the same
  order as without the interruption. They are read again to be skipped (but not decoded or collated), because
  `IterableDataset.state_dict()` cannot restore this position exactly: the shuffle buffer's content is not part of
  it, and with DataLoader workers each worker holds its own copy of the stream.
"""

from __future__ import annotations

import itertools
import logging
import math

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, get_worker_info

logger = logging.getLogger(__name__)


def split_size(dataset_name: str, split: str) -> int | None:
    """Number of examples of `split` as the dataset card (or the Hub's dataset info) states it, or None."""
    try:
        splits = datasets.load_dataset_builder(dataset_name).info.splits
    except Exception as error:  # a dataset without a readable card: the caller asks for the size instead
        logger.warning("could not read the size of split %r of %s: %s", split, dataset_name, error)
        return None
    if not splits or split not in splits or not splits[split].num_examples:
        return None
    return splits[split].num_examples


def load_stream(
    dataset_name: str,
    split: str,
    process_index: int,
    num_processes: int,
    shuffle_seed: int | None = None,
    shuffle_buffer_size: int = 1000,
    max_examples: int | None = None,
) -> datasets.IterableDataset:
    """This process's part of a streamed split (see the module docstring); shuffled when `shuffle_seed` is given,
    cut to the first `max_examples` of the files when given."""
    stream = datasets.load_dataset(dataset_name, split=split, streaming=True)
    if max_examples:
        stream = stream.take(max_examples)
    if shuffle_seed is not None:
        stream = stream.shuffle(seed=shuffle_seed, buffer_size=shuffle_buffer_size)
    return split_dataset_by_node(stream, rank=process_index, world_size=num_processes)


SKIPPED = None
"""What `EpochStream` yields in place of an example already trained on, and the collated batch of such."""


class _SkippingCollator:
    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, examples):
        return SKIPPED if examples[0] is SKIPPED else self.collate_fn(examples)


class _SkippingDataLoader(DataLoader):
    """Drops the `SKIPPED` batches of a resumed `EpochStream`."""

    def __iter__(self):
        return (batch for batch in super().__iter__() if batch is not SKIPPED)


class EpochStream(torch.utils.data.IterableDataset):
    """One process's training stream: its part of the split, epoch after epoch, without end.

    Args:
        stream: this process's part of the split (`load_stream`).
        batch_size: examples per batch of this process.
        steps_per_epoch: optimizer steps per epoch of the whole split (for the LR schedule), None if unknown.
        skip_batches: batches already trained on (resuming: `global_step × gradient_accumulation_steps`); their
            examples are skipped before anything is yielded.
    """

    def __init__(
        self, stream: datasets.IterableDataset, batch_size: int, steps_per_epoch: int | None, skip_batches: int = 0
    ):
        self.stream = stream
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.skip_batches = skip_batches

    @property
    def n_shards(self) -> int:
        return self.stream.n_shards

    def __iter__(self):
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        # A DataLoader takes batches from its workers in turn: worker w made ceil((B - w) / W) of the first B. They
        # come out as batches of SKIPPED (nothing decoded or collated) that `streaming_dataloader` drops, so the
        # batches after them arrive in the order of the uninterrupted run.
        skip = max(0, -(-(self.skip_batches - worker_id) // num_workers)) * self.batch_size
        for epoch in itertools.count():
            self.stream.set_epoch(epoch)
            examples = iter(self.stream)
            first = next(examples, None)
            if first is None:  # an empty part would otherwise loop for ever
                return
            for example in itertools.chain([first], examples):
                if skip:
                    skip -= 1
                    yield SKIPPED
                else:
                    yield example


def streaming_dataloader(dataset: torch.utils.data.IterableDataset, batch_size: int, collate_fn, args) -> DataLoader:
    """A DataLoader over a stream that `split_dataset_by_node` has already split between the processes.

    It is not passed to `accelerator.prepare`, which would split it a second time. Workers beyond the number of
    files of the part would get nothing to read: their number is capped there.
    """
    num_workers = min(args.dataloader_num_workers, dataset.n_shards)
    if num_workers < args.dataloader_num_workers:
        logger.warning(
            "%d DataLoader workers asked for, but this process's part of the stream has %d file(s): using %d",
            args.dataloader_num_workers,
            dataset.n_shards,
            num_workers,
        )
    loader_class, collate_fn = DataLoader, collate_fn
    if isinstance(dataset, EpochStream):
        loader_class, collate_fn = _SkippingDataLoader, _SkippingCollator(collate_fn)
    return loader_class(
        dataset,
        batch_size=batch_size,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=args.dataloader_pin_memory,
        prefetch_factor=args.dataloader_prefetch_factor if num_workers else None,
    )


def steps_per_epoch(num_examples: int, args) -> int:
    """Optimizer steps in one epoch of `num_examples`, at the global batch of `args`."""
    global_batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    return max(1, math.ceil(num_examples / global_batch))


def streamed_splits(data_args, training_args, evaluates: bool, resume_step: int = 0):
    """`(train EpochStream or None, eval IterableDataset or None)` of `run_png.py --streaming`; `resume_step` is
    the optimizer step of the checkpoint the run resumes from (0 for a new run).

    Sets `training_args.max_steps` from the split's size when it is not given, and `ignore_data_skip` (the stream
    skips the trained examples itself, see `EpochStream`).

    Raises:
        `ValueError` when there is no `--dataset_name`, or when the size of the training split is needed (for
        `max_steps` or the epoch-based LR schedule) and neither the dataset card nor `--num_train_examples` gives it.
    """
    if not data_args.dataset_name or data_args.png_root:
        raise ValueError("--streaming reads --dataset_name (a converted folder or a Hub id), not --png_root")
    name, rank, world = data_args.dataset_name, training_args.process_index, training_args.world_size
    train = evaluation = None
    if training_args.do_train:
        num_examples = data_args.num_train_examples or split_size(name, data_args.train_split)
        if num_examples and data_args.max_train_samples:
            num_examples = min(num_examples, data_args.max_train_samples)
        needs_size = training_args.max_steps <= 0 or training_args.lr_schedule != "trainer"
        if needs_size and not num_examples:
            raise ValueError(
                f"the size of the streamed split {data_args.train_split!r} of {name} is unknown (its dataset card does "
                "not state it): pass --num_train_examples, or --max_steps with --lr_schedule trainer"
            )
        epoch_steps = steps_per_epoch(num_examples, training_args) if num_examples else None
        if training_args.max_steps <= 0:
            training_args.max_steps = math.ceil(training_args.num_train_epochs * epoch_steps)
        skip_batches = 0
        if resume_step and not training_args.ignore_data_skip:
            skip_batches = resume_step * training_args.gradient_accumulation_steps
            logger.info(
                "resuming the stream: every process skips the %d batches it already trained on (read, not decoded)",
                skip_batches,
            )
        training_args.ignore_data_skip = True
        stream = load_stream(
            name,
            data_args.train_split,
            rank,
            world,
            training_args.seed,
            data_args.shuffle_buffer_size,
            data_args.max_train_samples,
        )
        train = EpochStream(stream, training_args.per_device_train_batch_size, epoch_steps, skip_batches)
    if evaluates:
        evaluation = load_stream(name, data_args.eval_split, rank, world, max_examples=data_args.max_eval_samples)
    return train, evaluation
