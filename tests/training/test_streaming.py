"""Streaming training (`run_png.py --streaming`, training/streaming.py): each process streams a disjoint part of
the split, the parts make up the split, epochs chain, a resumed stream continues where it stopped, evaluation counts
every phrase once across two real processes."""

import json
import os
import shutil
import subprocess
import sys
from itertools import islice
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainingArguments

from processing.png_dataset import convert
from training.run_png import DataArguments
from training.run_png import run as run_png_main
from training.streaming import SKIPPED, EpochStream, load_stream, split_size, streamed_splits, streaming_dataloader

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_pause_after_each_pass(monkeypatch):
    # datasets waits 5 s for pyarrow's reader threads after every pass over streamed parquet files
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def keys(examples):
    return [(example["image_id"], example["narrative_index"]) for example in examples]


@pytest.fixture(scope="module")
def two_file_dataset_dir(tmp_path_factory, synthetic_dataset_dir):
    """The synthetic dataset again, its training split in two parquet files."""
    raw = tmp_path_factory.mktemp("raw")
    from processing.synthetic import generate

    generate(raw, num_train=12, num_val=5, seed=1)
    output = tmp_path_factory.mktemp("two_files") / "dataset"
    convert(raw, output, splits=["train2017"], num_proc=2, progress=False)
    assert len(list((output / "data").glob("train-*"))) == 2
    return output


@pytest.mark.parametrize("dataset_fixture", ["synthetic_dataset_dir", "two_file_dataset_dir"])
def test_processes_stream_disjoint_parts_that_make_up_the_split(dataset_fixture, request):
    folder = str(request.getfixturevalue(dataset_fixture))
    split = keys(datasets.load_dataset(folder, split="train"))
    for world_size in (1, 2, 3):
        parts = [keys(load_stream(folder, "train", rank, world_size, shuffle_seed=0)) for rank in range(world_size)]
        seen = [key for part in parts for key in part]
        assert sorted(seen) == sorted(split) and len(set(seen)) == len(split), world_size
    shuffled = keys(load_stream(folder, "train", 0, 1, shuffle_seed=0, shuffle_buffer_size=8))
    assert shuffled != split and sorted(shuffled) == sorted(split)
    assert shuffled == keys(load_stream(folder, "train", 0, 1, shuffle_seed=0, shuffle_buffer_size=8))


def test_epoch_stream_chains_reshuffled_epochs_and_resumes_after_the_trained_batches(synthetic_dataset_dir):
    stream = load_stream(str(synthetic_dataset_dir), "train", 0, 1, shuffle_seed=3, shuffle_buffer_size=4)
    uninterrupted = keys(islice(EpochStream(stream, batch_size=2, steps_per_epoch=6), 30))
    first_epoch, second_epoch = uninterrupted[:12], uninterrupted[12:24]
    assert sorted(first_epoch) == sorted(second_epoch) and first_epoch != second_epoch  # reshuffled per epoch
    resumed = list(islice(EpochStream(stream, batch_size=2, steps_per_epoch=6, skip_batches=7), 30))
    assert resumed[:14] == [SKIPPED] * 14 and keys(resumed[14:]) == uninterrupted[14:30]


def test_resumed_stream_matches_with_dataloader_workers(two_file_dataset_dir):
    stream = load_stream(str(two_file_dataset_dir), "train", 0, 1, shuffle_seed=0, shuffle_buffer_size=4)
    args = TrainingArguments(output_dir="unused", dataloader_num_workers=2, report_to="none", use_cpu=True)

    def batches(skip_batches, count):
        loader = streaming_dataloader(EpochStream(stream, 2, 6, skip_batches), 2, keys, args)
        assert loader.num_workers == 2
        return list(islice(loader, count))

    assert batches(5, 6) == batches(0, 11)[5:]


def test_split_size_comes_from_the_card_and_unknown_sizes_are_an_error(synthetic_dataset_dir, tmp_path):
    assert split_size(str(synthetic_dataset_dir), "train") == 12
    assert split_size(str(synthetic_dataset_dir), "validation") == 5
    bare = tmp_path / "bare"
    (bare / "data").mkdir(parents=True)
    for path in (synthetic_dataset_dir / "data").glob("train-*"):
        (bare / "data" / path.name).write_bytes(path.read_bytes())
    assert split_size(str(bare), "train") is None
    data_args = DataArguments(dataset_name=str(bare), streaming=True)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), do_train=True, report_to="none", use_cpu=True)
    args.lr_schedule = "paper"
    with pytest.raises(ValueError, match="--num_train_examples"):
        streamed_splits(data_args, args, evaluates=False)
    data_args.num_train_examples = 12
    args.per_device_train_batch_size, args.num_train_epochs = 4, 2
    train, _ = streamed_splits(data_args, args, evaluates=False)
    assert (train.steps_per_epoch, args.max_steps, args.ignore_data_skip) == (3, 6, True)


def test_two_processes_stream_disjoint_parts_and_evaluate_each_phrase_once(
    synthetic_dataset_dir, tiny_config_dir, minilm_path, tmp_path
):
    output = tmp_path / "out"
    arguments = [
        *["--dataset_name", str(synthetic_dataset_dir), "--streaming", "true", "--shuffle_buffer_size", "4"],
        *["--config_name", str(tiny_config_dir), "--tokenizer_name", minilm_path, "--output_dir", str(output)],
        *["--image_size", "64", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2"],
        *["--num_train_epochs", "1", "--lr_schedule", "paper", "--learning_rate", "1e-3", "--save_strategy", "no"],
        *["--do_train", "--do_eval", "--report_to", "none", "--seed", "0", "--use_cpu", "true"],
        *["--dataloader_num_workers", "0", "--disable_tqdm", "true"],
    ]
    command = [
        *[sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"],
        *["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
        str(REPO / "tests" / "training" / "streaming_ranks.py"),
        *arguments,
    ]
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    records = [json.loads((output / f"streamed-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [record["world_size"] for record in records] == [2, 2]
    for split, name in (("train", "train"), ("validation", "eval")):
        expected = sorted(keys(datasets.load_dataset(str(synthetic_dataset_dir), split=split)))
        parts = [[tuple(key) for key in record[name]] for record in records]
        assert not set(parts[0]) & set(parts[1]), split
        assert sorted(parts[0] + parts[1]) == expected, split
    # 12 examples, global batch 2 x 2: 3 steps for the one epoch, taken from the dataset card
    assert records[0]["max_steps"] == 3
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    eval_results = json.loads((output / "eval_results.json").read_text())
    phrases = sum(
        len(example["phrases"]) for example in datasets.load_dataset(str(synthetic_dataset_dir))["validation"]
    )
    assert eval_results["eval_num_phrases"] == phrases
    rows = (output / "eval_phrase_ious.csv").read_text().splitlines()[1:]
    assert len(rows) == len({tuple(row.split(",")[:3]) for row in rows}) == phrases


def test_resumed_streaming_run_continues_the_same_run(synthetic_dataset_dir, tiny_config_dir, minilm_path, tmp_path):
    def run(output_dir):
        return run_png_main(
            [
                *["--dataset_name", str(synthetic_dataset_dir), "--streaming", "true", "--shuffle_buffer_size", "4"],
                *[
                    "--config_name",
                    str(tiny_config_dir),
                    "--tokenizer_name",
                    minilm_path,
                    "--output_dir",
                    str(output_dir),
                ],
                *["--image_size", "64", "--per_device_train_batch_size", "4", "--num_train_epochs", "2"],
                *["--lr_schedule", "paper", "--lr_schedule_epoch_scale", "0.2", "--learning_rate", "1e-3"],
                *["--save_steps", "2", "--logging_steps", "1", "--do_train", "--report_to", "none", "--seed", "0"],
                *["--use_cpu", "true", "--dataloader_num_workers", "0", "--disable_tqdm", "true"],
            ]
        )

    run(tmp_path / "full")  # 12 examples, batch 4: 3 steps per epoch, 6 in all; the LR halves after epoch 1
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "full" / "checkpoint-4", interrupted / "checkpoint-4")
    run(interrupted)
    full_state = json.loads((tmp_path / "full" / "trainer_state.json").read_text())
    resumed_state = json.loads((interrupted / "trainer_state.json").read_text())
    assert full_state["global_step"] == resumed_state["global_step"] == 6
    full_losses = [entry["loss"] for entry in full_state["log_history"] if "loss" in entry]
    resumed_losses = [entry["loss"] for entry in resumed_state["log_history"] if "loss" in entry]
    assert resumed_losses[-2:] == pytest.approx(full_losses[-2:], rel=1e-4)  # steps 5 and 6: the same batches
    full, resumed = load_file(tmp_path / "full" / "model.safetensors"), load_file(interrupted / "model.safetensors")
    changed = load_file(tmp_path / "full" / "checkpoint-4" / "model.safetensors")
    assert any(not torch.equal(full[key], changed[key]) for key in full)
    for key in full:
        assert torch.allclose(full[key], resumed[key], atol=1e-6), key
