"""Converts the official PNG benchmark files into a 🤗 dataset folder: parquet shards + a README dataset card.

```
python -m processing.png_dataset --root ROOT --output_dir DIR [--splits train2017 val2017] [--num_proc N]
                                 [--strict] [--overwrite] [--rows_per_shard 1000]
```

The folder loads with ``datasets.load_dataset(DIR)`` as a `DatasetDict` (``train2017`` → ``"train"``, ``val2017`` →
``"validation"``) with the features of [`~processing.png_format.PNG_FEATURES`]; images and panoptic PNGs are
embedded as bytes, so the folder is self-contained and can be pushed to the Hub as is.

- Streaming: every shard is written by a `pyarrow.parquet.ParquetWriter` in row groups of `WRITE_BATCH_SIZE`
  examples, so memory does not grow with the number of narratives; a shard holds at most `shard_size` narratives.
- Parallelism: ``--num_proc N`` converts shards in N spawned worker processes (each builds its own split index);
  a script calling `convert(num_proc > 1)` needs the usual ``if __name__ == "__main__":`` guard.
- Atomicity: everything is written to a hidden temporary folder next to DIR, renamed to DIR only when complete;
  on any error or Ctrl-C the temporary folder is removed and DIR is left untouched.
- Bad data: by default a bad narrative is skipped and counted (the summary lists counts per reason and the
  first few narratives of each); ``--strict`` stops at the first one with an error naming the file and narrative.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import DatasetInfo, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData
from tqdm.auto import tqdm

from .citations import PNG_CITATION
from .output_dirs import staged_output_dir
from .png_errors import SKIP_REASONS, PngFormatError, SkipReport
from .png_format import PNG_FEATURES, PngFormatReader

SPLIT_NAMES = {"train2017": "train", "val2017": "validation", "test2017": "test"}
"""Official split folder -> 🤗 split name."""
DEFAULT_SPLITS = ("train2017", "val2017")
DEFAULT_SHARD_SIZE = 1000  # narratives per parquet file: about 200 MB with COCO images
WRITE_BATCH_SIZE = 64  # examples per parquet row group: what the converter holds in memory per worker


@dataclass
class SplitSummary:
    """Counts for one converted split.

    Phrase counts follow the dataset's flags: thing + stuff = phrases; `num_mixed_phrases` counts phrases whose
    segments mix thing and stuff categories (their `is_thing` is that of the last segment).
    """

    source_split: str
    num_narratives: int = 0
    num_phrases: int = 0
    num_thing_phrases: int = 0
    num_stuff_phrases: int = 0
    num_plural_phrases: int = 0
    num_mixed_phrases: int = 0
    num_shards: int = 0
    num_bytes: int = 0
    skipped: SkipReport = field(default_factory=SkipReport)
    image_ids: set = field(default_factory=set, repr=False)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def add_example(self, example: dict) -> None:
        is_thing = {segment["id"]: segment["is_thing"] for segment in example["segments_info"]}
        self.num_narratives += 1
        self.image_ids.add(example["image_id"])
        for phrase in example["phrases"]:
            self.num_phrases += 1
            self.num_thing_phrases += phrase["is_thing"]
            self.num_stuff_phrases += not phrase["is_thing"]
            self.num_plural_phrases += phrase["is_plural"]
            self.num_mixed_phrases += len({is_thing[i] for i in phrase["segment_ids"]}) > 1

    def merge(self, other: SplitSummary) -> None:
        counters = ("narratives", "phrases", "thing_phrases", "stuff_phrases", "plural_phrases", "mixed_phrases")
        for name in [f"num_{counter}" for counter in counters] + ["num_shards", "num_bytes"]:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.skipped.merge(other.skipped)
        self.image_ids |= other.image_ids


@dataclass
class ConversionSummary:
    """What [`convert`] wrote: one [`SplitSummary`] per 🤗 split name, and the wall time."""

    output: str
    splits: dict[str, SplitSummary]
    elapsed_seconds: float = 0.0

    @property
    def num_narratives(self) -> int:
        return sum(split.num_narratives for split in self.splits.values())

    def format(self) -> str:
        rate = self.num_narratives / max(self.elapsed_seconds, 1e-9)
        lines = [
            f"Wrote {self.num_narratives} narratives to {self.output} in {self.elapsed_seconds:.1f} s "
            f"({rate:.1f} narratives/s)"
        ]
        for name, split in self.splits.items():
            lines.append(
                f"  {name} ({split.source_split}): {split.num_narratives} narratives, {split.num_images} images, "
                f"{split.num_phrases} phrases (thing {split.num_thing_phrases}, stuff {split.num_stuff_phrases}, "
                f"plural {split.num_plural_phrases}), {split.num_shards} shards; "
                f"skipped {sum(split.skipped.counts.values())}"
            )
            if split.skipped.counts:
                lines.append(split.skipped.format())
        return "\n".join(lines)


@dataclass(frozen=True)
class _ShardTask:
    """Narrative entries `[start, stop)` of `source_split`, written to the parquet file `path`."""

    source_split: str
    start: int
    stop: int
    path: str
    strict: bool


def _convert_shard(reader: PngFormatReader, task: _ShardTask, progress: Callable[[int], None]) -> SplitSummary:
    """Writes one parquet shard, `WRITE_BATCH_SIZE` rows at a time; reports narratives processed to `progress`."""
    summary = SplitSummary(task.source_split, num_shards=1)
    schema = PNG_FEATURES.arrow_schema
    rows, reported = [], 0
    with pq.ParquetWriter(task.path, schema) as writer:
        examples = reader.iter_examples(task.start, task.stop, strict=task.strict, report=summary.skipped)
        for example in examples:
            rows.append(example)
            summary.add_example(example)
            if len(rows) == WRITE_BATCH_SIZE:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema), row_group_size=len(rows))
                rows.clear()
                processed = summary.num_narratives + sum(summary.skipped.counts.values())
                progress(processed - reported)
                reported = processed
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema), row_group_size=len(rows))
    progress(task.stop - task.start - reported)
    summary.num_bytes = os.path.getsize(task.path)
    return summary


def _worker_loop(root: str, tasks, results) -> None:
    """Body of a conversion process: converts shards from `tasks` until the `None` sentinel.

    Sends `("progress", n)`, `("done", SplitSummary)` or `("error", exception)` messages to `results`.
    """
    # Ctrl-C is handled by the main process, which terminates the workers; they must not die half-way on their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    readers = {}
    for task in iter(tasks.get, None):
        try:
            if task.source_split not in readers:
                readers[task.source_split] = PngFormatReader(root, task.source_split)
            summary = _convert_shard(readers[task.source_split], task, lambda n: results.put(("progress", n)))
        except Exception as error:
            if not isinstance(error, PngFormatError):  # keep the traceback, and never send an unpicklable error
                error = RuntimeError(f"converting {task.path} failed:\n{traceback.format_exc()}")
            results.put(("error", error))
            return
        results.put(("done", summary))


def _run_parallel(root, tasks, num_proc, bar) -> list[SplitSummary]:
    """Converts the shards in `num_proc` spawned processes; the first failing shard or dead worker fails it all.

    Processes are managed by hand rather than with `multiprocessing.Pool`, which silently replaces a worker that
    dies (out of memory, or a script without an ``if __name__ == "__main__"`` guard) and then waits forever. Each
    process builds its own split index from `root`: a large pickled index would make `Process.start` block
    forever when the child dies before reading it (CPython keeps the pipe's read end open in the parent).
    """
    context = multiprocessing.get_context("spawn")  # fork is unsafe once pyarrow/tqdm threads exist
    task_queue, results = context.Queue(), context.Queue()
    num_workers = min(num_proc, len(tasks))
    for task in [*tasks, *[None] * num_workers]:
        task_queue.put(task)
    workers = [context.Process(target=_worker_loop, args=(str(root), task_queue, results)) for _ in range(num_workers)]
    summaries, idle_polls = [], 0
    try:
        for worker in workers:
            worker.start()
        while len(summaries) < len(tasks):
            try:
                kind, payload = results.get(timeout=0.5)
            except queue.Empty:
                crashed = [worker.exitcode for worker in workers if worker.exitcode not in (None, 0)]
                if crashed:
                    raise RuntimeError(
                        f"a conversion process died (exit code {crashed[0]}): out of memory, or a script calling "
                        "convert(num_proc > 1) without an `if __name__ == '__main__':` guard?"
                    ) from None
                # All processes ended cleanly yet results are missing: allow in-flight messages to arrive, then fail.
                idle_polls += all(worker.exitcode == 0 for worker in workers)
                if idle_polls > 10:
                    raise RuntimeError("conversion processes ended without returning every shard") from None
                continue
            if kind == "error":
                raise payload
            if kind == "progress":
                bar.update(payload)
            else:
                summaries.append(payload)
    finally:
        task_queue.cancel_join_thread()  # on failure, unread tasks must not block this process's exit
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            if worker.pid is not None:
                worker.join()
    return summaries


def _plan_shards(reader, split_name, data_dir, num_proc, shard_size, strict) -> list[_ShardTask]:
    num_narratives = len(reader)
    # At least one shard per process (when there are enough narratives) so that --num_proc really parallelises.
    num_shards = max(1, math.ceil(num_narratives / shard_size), min(num_proc, num_narratives))
    return [
        _ShardTask(
            reader.split,
            index * num_narratives // num_shards,
            (index + 1) * num_narratives // num_shards,
            str(data_dir / f"{split_name}-{index:05d}-of-{num_shards:05d}.parquet"),
            strict,
        )
        for index in range(num_shards)
    ]


def convert(
    root,
    output,
    splits=DEFAULT_SPLITS,
    num_proc: int = 1,
    strict: bool = False,
    overwrite: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> ConversionSummary:
    """Converts official PNG benchmark splits into a 🤗 dataset folder (see the module docstring).

    Args:
        root (`str` or `Path`): benchmark root (``images/``, ``annotations/``).
        output (`str` or `Path`): dataset folder to create; must not exist unless `overwrite`, and may not be, contain
            or lie inside `root`.
        splits (`Sequence[str]`): official split folders, e.g. ``("train2017", "val2017")``.
        num_proc (`int`): worker processes (1 = convert in this process). Workers are spawned, so a script calling
            this with `num_proc > 1` needs the usual ``if __name__ == "__main__":`` guard.
        strict (`bool`): fail on the first bad narrative instead of skipping it.
        overwrite (`bool`): replace an existing `output` (only once the new folder is complete).
        shard_size (`int`): maximum number of narratives per parquet file.
        progress (`bool`): show a tqdm progress bar.

    Returns:
        [`ConversionSummary`] with the counts per split and the skipped narratives.

    Raises:
        `FileExistsError` if `output` exists and not `overwrite`; `ValueError` if `output` overlaps `root`;
        `FileNotFoundError` for a missing json file;
        [`~processing.png_errors.PngFormatError`] for bad data in strict mode (or an unparsable json file).
    """
    output = Path(output)
    if num_proc < 1 or shard_size < 1:
        raise ValueError(f"num_proc and shard_size must be >= 1, got {num_proc} and {shard_size}")
    split_names = [SPLIT_NAMES.get(split, split) for split in splits]
    if len(set(split_names)) != len(split_names):
        raise ValueError(f"splits {list(splits)} map to duplicate dataset split names {split_names}")
    started = time.perf_counter()
    with staged_output_dir(output, overwrite, sources=(root,)) as staging:
        data_dir = staging / "data"
        data_dir.mkdir()
        readers, tasks = {}, []
        for split, split_name in zip(splits, split_names, strict=True):
            readers[split] = PngFormatReader(root, split)
            tasks += _plan_shards(readers[split], split_name, data_dir, num_proc, shard_size, strict)
        total = sum(task.stop - task.start for task in tasks)
        with tqdm(total=total, desc="Converting PNG narratives", unit="narrative", disable=not progress) as bar:
            if num_proc == 1:
                shard_summaries = [_convert_shard(readers[task.source_split], task, bar.update) for task in tasks]
            else:
                shard_summaries = _run_parallel(root, tasks, num_proc, bar)
        summaries = {name: SplitSummary(split) for split, name in zip(splits, split_names, strict=True)}
        for shard_summary in shard_summaries:
            summaries[SPLIT_NAMES.get(shard_summary.source_split, shard_summary.source_split)].merge(shard_summary)
        summary = ConversionSummary(str(output), summaries, time.perf_counter() - started)
        (staging / "README.md").write_text(dataset_card(summary), encoding="utf-8")
    summary.elapsed_seconds = time.perf_counter() - started
    return summary


def _card_metadata(summary: ConversionSummary, pretty_name: str, license: str | None) -> str:
    split_dict = SplitDict()
    for name, split in summary.splits.items():
        split_dict.add(SplitInfo(name=name, num_bytes=split.num_bytes, num_examples=split.num_narratives))
    dataset_size = sum(split.num_bytes for split in summary.splits.values())
    info = DatasetInfo(features=PNG_FEATURES, splits=split_dict, dataset_size=dataset_size, download_size=dataset_size)
    card_data = DatasetCardData(
        pretty_name=pretty_name,
        license=license,
        language=["en"],
        task_categories=["image-segmentation"],
        tags=["panoptic-narrative-grounding", "visual-grounding", "referring-segmentation"],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"data/{name}-*"} for name in summary.splits],
            }
        ],
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    return card_data.to_yaml()


def dataset_card(
    summary: ConversionSummary,
    pretty_name: str = "Panoptic Narrative Grounding (PNG)",
    license: str | None = None,
    description: str | None = None,
) -> str:
    """Text of the README.md dataset card of a converted folder: YAML front matter + documentation.

    Args:
        summary ([`ConversionSummary`]): counts per split (as returned by [`convert`]).
        pretty_name (`str`): dataset title.
        license (`str`, *optional*): Hub license id for the YAML (e.g. ``"cc-by-4.0"``); omitted when `None`.
        description (`str`, *optional*): paragraph placed after the title (default: the PNG task description).

    Returns:
        `str`: the README.md content. The YAML holds ``configs`` (``data_files`` per split), ``dataset_info``
        (features, per-split example counts and bytes) and the usual Hub metadata.
    """
    description = description or (
        "Panoptic Narrative Grounding (PNG, González et al., ICCV 2021): given an image and a long narrative in "
        "which noun phrases are marked, predict one segmentation mask per phrase. A phrase can name one or several "
        "panoptic segments (plural phrases: the union of their masks) of things (countable objects) or stuff "
        "(sky, grass, wall...). One example is one narrative; an image with several narratives appears once per "
        "narrative. Converted from the official files with `python -m processing.png_dataset` (EPNG project)."
    )
    lines = [
        "---",
        _card_metadata(summary, pretty_name, license).rstrip("\n"),
        "---",
        "",
        f"# {pretty_name}",
        "",
        description,
        "",
        "## Usage",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'dataset = load_dataset("path/or/repo_id")',
        'example = dataset["validation"][0]',
        'phrase = example["phrases"][0]',
        'assert example["caption"][phrase["start"]:phrase["end"]] == phrase["text"]',
        "```",
        "",
        "## Fields",
        "",
        "| field | type | meaning |",
        "|---|---|---|",
        "| `image` | Image | the RGB image (JPEG bytes as in COCO) |",
        "| `image_id` | string | COCO image id |",
        "| `narrative_index` | int32 | 0, 1, … over the narratives of the same image, in file order |",
        "| `caption` | string | the full narrative |",
        "| `width`, `height` | int32 | image size in pixels |",
        "| `phrases` | list of structs | grounded phrases (noun segments with at least one panoptic segment), "
        "in caption order |",
        "| `phrases.text` | string | the phrase; always equal to `caption[start:end]` |",
        "| `phrases.start`, `phrases.end` | int32 | character offsets of the phrase in `caption` |",
        "| `phrases.segment_ids` | list of int64 | panoptic segment ids; the phrase mask is their union |",
        "| `phrases.is_plural` | bool | the annotation's `plural` flag |",
        "| `phrases.is_thing` | bool | `isthing` of the category of the phrase's last segment (the reference "
        'evaluation\'s rule; identical to "all segments are things" unless a phrase mixes things and stuff) |',
        "| `panoptic_map` | Image | RGB panoptic PNG; segment id = R + 256·G + 256²·B, 0 = unlabelled |",
        "| `segments_info` | list of structs | every segment of the image: `id`, `category_id`, `iscrowd`, "
        "`is_thing`, `area` (pixels), `bbox` ([x, y, width, height]) |",
        "",
        "## Statistics",
        "",
        "| split | source | narratives | images | phrases | thing | stuff | plural | mixed thing/stuff | skipped |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, split in summary.splits.items():
        lines.append(
            f"| {name} | {split.source_split} | {split.num_narratives} | {split.num_images} | {split.num_phrases} | "
            f"{split.num_thing_phrases} | {split.num_stuff_phrases} | {split.num_plural_phrases} | "
            f"{split.num_mixed_phrases} | {sum(split.skipped.counts.values())} |"
        )
    lines += ["", "### Skipped narratives", ""]
    reasons = sorted({reason for split in summary.splits.values() for reason in split.skipped.counts})
    if reasons:
        lines.append("| reason | meaning | " + " | ".join(summary.splits) + " |")
        lines.append("|---|---|" + "---|" * len(summary.splits))
        for reason in reasons:
            counts = " | ".join(str(split.skipped.counts.get(reason, 0)) for split in summary.splits.values())
            lines.append(f"| `{reason}` | {SKIP_REASONS.get(reason, '')} | {counts} |")
    else:
        lines.append("None: every narrative of the source files was converted.")
    lines += ["", "## Citation", "", "```bibtex", PNG_CITATION, "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Convert the official PNG benchmark files into a 🤗 dataset folder.")
    parser.add_argument("--root", required=True, help="benchmark root holding images/ and annotations/")
    parser.add_argument("--output_dir", required=True, help="dataset folder to create")
    parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), help="official split folders")
    parser.add_argument("--num_proc", type=int, default=1, help="worker processes")
    parser.add_argument("--strict", action="store_true", help="fail on the first bad narrative instead of skipping")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--rows_per_shard", type=int, default=DEFAULT_SHARD_SIZE, help="max narratives per parquet file"
    )
    args = parser.parse_args(argv)
    try:
        summary = convert(
            args.root,
            args.output_dir,
            splits=args.splits,
            num_proc=args.num_proc,
            strict=args.strict,
            overwrite=args.overwrite,
            shard_size=args.rows_per_shard,
        )
    except (PngFormatError, FileExistsError, FileNotFoundError, ValueError) as error:
        mode = " (strict mode)" if args.strict and isinstance(error, PngFormatError) else ""
        print(f"error{mode}: {error}\nNothing was written to {args.output_dir}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: nothing was written to {args.output_dir}.", file=sys.stderr)
        return 130
    print(summary.format())
    return 0


if __name__ == "__main__":
    # A plain SIGTERM would end the process without the cleanup that removes the incomplete folder.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
