"""training/run_png.py end to end on the synthetic data: learning, evaluation, resume, two processes."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from training.evaluate_png import run as evaluate_png_main
from training.run_png import parse_overrides, run

REPO = Path(__file__).resolve().parents[2]
# Short runs whose result should not depend on the paper's epoch-based schedule, and that need no checkpoint.
CONSTANT_LR_NO_CHECKPOINTS = ["--save_strategy", "no", "--lr_schedule", "trainer", "--lr_scheduler_type", "constant"]


def run_args(dataset_dir, config_dir, tokenizer_path, output_dir, *extra):
    return [
        "--dataset_name",
        str(dataset_dir),
        "--config_name",
        str(config_dir),
        "--tokenizer_name",
        tokenizer_path,
        "--output_dir",
        str(output_dir),
        "--image_size",
        "64",
        "--per_device_eval_batch_size",
        "2",
        "--learning_rate",
        "1e-3",
        "--report_to",
        "none",
        "--seed",
        "0",
        "--use_cpu",
        "true",
        "--dataloader_num_workers",
        "0",
        "--disable_tqdm",
        "true",
        *extra,
    ]


def total_phrases(dataset_dir, split="validation"):
    return sum(len(example["phrases"]) for example in datasets.load_dataset(str(dataset_dir))[split])


def test_parse_overrides():
    assert parse_overrides("sal_weight=0,lpa_distance=squared, dropout=0.2") == {
        "sal_weight": 0,
        "lpa_distance": "squared",
        "dropout": 0.2,
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides("sal_weight")


def test_short_run_lowers_the_loss_and_evaluates(synthetic_dataset_dir, tiny_config_dir, minilm_path, tmp_path, capsys):
    base = run_args(
        synthetic_dataset_dir, tiny_config_dir, minilm_path, tmp_path / "before", "--do_eval", "--eval_split", "train"
    )
    before = run(base)
    after = run(
        run_args(
            synthetic_dataset_dir,
            tiny_config_dir,
            minilm_path,
            tmp_path / "after",
            "--do_train",
            "--do_eval",
            "--eval_split",
            "train",
            "--max_steps",
            "30",
            "--per_device_train_batch_size",
            "4",
            *CONSTANT_LR_NO_CHECKPOINTS,
        )
    )
    # SAL has a floor of log(#positive pixels) per phrase, so the total falls slowly; the masks improve clearly.
    assert after["eval_loss"] < 0.95 * before["eval_loss"], (before, after)
    assert after["eval_ar_all"] > before["eval_ar_all"] + 5, (before, after)
    assert after["eval_num_phrases"] == total_phrases(synthetic_dataset_dir, "train")
    for name in ("all", "thing", "stuff", "singular", "plural"):
        assert 0.0 <= after[f"eval_ar_{name}"] <= 100.0
    output = tmp_path / "after"
    rows = (output / "eval_phrase_ious.csv").read_text().splitlines()
    assert len(rows) == 1 + after["eval_num_phrases"]
    assert (output / "eval_recall_iou.png").read_bytes()[:4] == b"\x89PNG"
    assert (output / "model.safetensors").exists() and (output / "processor_config.json").exists()
    assert json.loads((output / "training_args.json").read_text())["dataset_name"] == str(synthetic_dataset_dir)

    evaluation = ["--model_name_or_path", str(output), "--dataset_name", str(synthetic_dataset_dir), "--split", "train"]
    evaluation += ["--batch_size", "3"]
    table = evaluate_png_main([*evaluation, "--no_optimize", "--output_dir", str(tmp_path / "evaluation")])
    assert table["num_all"] == after["eval_num_phrases"]
    assert table["all"] == pytest.approx(after["eval_ar_all"])
    # The default inference fast path (bf16 where native) moves a few boundary pixels at most.
    fast_table = evaluate_png_main(evaluation)
    assert fast_table["num_all"] == table["num_all"]
    assert fast_table["all"] == pytest.approx(table["all"], abs=1.0)
    assert (tmp_path / "evaluation" / "train_phrase_ious.csv").exists()
    printed = capsys.readouterr().out
    assert "Thing" in printed and "Plural" in printed and f"{table['all']:.1f}" in printed


def test_resume_from_checkpoint_continues_the_same_run(
    synthetic_dataset_dir, tiny_config_dir, minilm_path, tmp_path, caplog
):
    common = [
        "--do_train",
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--logging_steps",
        "1",
        "--lr_schedule",
        "paper",
        "--lr_schedule_epoch_scale",
        "0.2",
    ]
    run(run_args(synthetic_dataset_dir, tiny_config_dir, minilm_path, tmp_path / "full", *common))
    # an interrupted run: only its step-2 checkpoint survived
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "full" / "checkpoint-2", interrupted / "checkpoint-2")
    run(run_args(synthetic_dataset_dir, tiny_config_dir, minilm_path, interrupted, *common))

    full_state = json.loads((tmp_path / "full" / "checkpoint-4" / "trainer_state.json").read_text())
    resumed_state = json.loads((interrupted / "checkpoint-4" / "trainer_state.json").read_text())
    assert resumed_state["global_step"] == full_state["global_step"] == 4
    assert full_state["log_history"][-1]["learning_rate"] == pytest.approx(
        resumed_state["log_history"][-1]["learning_rate"]
    )
    full = load_file(tmp_path / "full" / "model.safetensors")
    resumed = load_file(interrupted / "model.safetensors")
    assert full.keys() == resumed.keys()
    changed = load_file(tmp_path / "full" / "checkpoint-2" / "model.safetensors")
    assert any(not torch.equal(full[key], changed[key]) for key in full)  # steps 3-4 did move the weights
    for key in full:
        assert torch.allclose(full[key], resumed[key], atol=1e-6), key

    # killed while writing its step-4 checkpoint: the rerun goes back to step 2 and ends where the full run did
    broken = tmp_path / "broken"
    for name in ("checkpoint-2", "checkpoint-4"):
        shutil.copytree(tmp_path / "full" / name, broken / name)
    weights = broken / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with caplog.at_level(logging.INFO):
        run(run_args(synthetic_dataset_dir, tiny_config_dir, minilm_path, broken, *common))
    assert "Not resuming from" in caplog.text and "model.safetensors is truncated" in caplog.text
    assert "Resuming from checkpoint-2 at step 2" in caplog.text
    recovered = load_file(broken / "model.safetensors")
    for key in full:
        assert torch.allclose(full[key], recovered[key], atol=1e-6), key


@pytest.mark.slow
def test_two_processes_match_one_process_and_count_each_phrase_once(
    synthetic_dataset_dir, tiny_config_dir, minilm_path, tmp_path
):
    common = ["--do_train", "--do_eval", "--max_steps", "3", *CONSTANT_LR_NO_CHECKPOINTS]
    single = tmp_path / "single"
    run(
        run_args(
            synthetic_dataset_dir, tiny_config_dir, minilm_path, single, *common, "--per_device_train_batch_size", "4"
        )
    )
    double = tmp_path / "double"
    # accelerate 1.x's `--cpu` launcher starts several CPU processes only through mpirun; its torchrun launcher
    # (`--multi_gpu`) starts them on a CPU-only machine too, and `--use_cpu true` makes Trainer use gloo.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(REPO / "training" / "run_png.py"),
        *run_args(
            synthetic_dataset_dir, tiny_config_dir, minilm_path, double, *common, "--per_device_train_batch_size", "2"
        ),
    ]
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "MULTI_CPU" in finished.stderr + finished.stdout and "Num processes: 2" in finished.stderr + finished.stdout
    eval_results = json.loads((double / "eval_results.json").read_text())
    assert eval_results["eval_num_phrases"] == total_phrases(synthetic_dataset_dir)
    rows = (double / "eval_phrase_ious.csv").read_text().splitlines()[1:]
    assert len(rows) == len(set(tuple(row.split(",")[:3]) for row in rows)) == eval_results["eval_num_phrases"]
    one = load_file(single / "model.safetensors")
    two = load_file(double / "model.safetensors")
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-4, rtol=1e-3), key
