"""Default DataLoader worker counts: the benchmark-derived numbers, capped by the cores a process may use."""

import os

from training import data_workers
from training.data_workers import INFERENCE_WORKERS, TRAINING_WORKERS, default_num_workers
from training.run_png import EpngTrainingArguments


def test_workers_are_capped_by_the_usable_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert default_num_workers(TRAINING_WORKERS) == TRAINING_WORKERS and default_num_workers(INFERENCE_WORKERS) == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_num_workers(INFERENCE_WORKERS) == 1  # one core stays with the training loop
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert default_num_workers(TRAINING_WORKERS) == 0


def test_training_arguments_default_to_it(monkeypatch):
    monkeypatch.setattr(data_workers.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert EpngTrainingArguments(output_dir="unused", report_to="none").dataloader_num_workers == TRAINING_WORKERS
