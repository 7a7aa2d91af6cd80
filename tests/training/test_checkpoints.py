"""Auto-resume picks the newest complete checkpoint: truncated weights, torch states or trainer_state.json send it
back to the previous one, with a warning naming the broken file."""

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from training.checkpoints import checkpoint_problem, find_resume_checkpoint, resume_point


def make_checkpoint(output_dir, step, sharded=False):
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    tensors = {"weight": torch.arange(64, dtype=torch.float32), "bias": torch.ones(3)}
    if sharded:
        save_file({"weight": tensors["weight"]}, str(folder / "model-00001-of-00002.safetensors"))
        save_file({"bias": tensors["bias"]}, str(folder / "model-00002-of-00002.safetensors"))
        weight_map = {"weight": "model-00001-of-00002.safetensors", "bias": "model-00002-of-00002.safetensors"}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        save_file(tensors, str(folder / "model.safetensors"))
    torch.save({"state": {0: torch.zeros(8)}}, folder / "optimizer.pt")
    torch.save({"rng": torch.zeros(4)}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return folder


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda folder: truncate(folder / "model.safetensors"), "model.safetensors is truncated"),
        (lambda folder: truncate(folder / "model.safetensors", keep=0.999), "model.safetensors is truncated"),
        (
            lambda folder: (folder / "model.safetensors").write_bytes(
                b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      "
            ),
            "unreadable header",
        ),
        (lambda folder: (folder / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda folder: truncate(folder / "optimizer.pt"), "optimizer.pt is truncated or corrupt"),
        (lambda folder: truncate(folder / "rng_state.pth"), "rng_state.pth is truncated or corrupt"),
        (lambda folder: truncate(folder / "trainer_state.json"), "trainer_state.json is unreadable"),
        (lambda folder: (folder / "trainer_state.json").unlink(), "trainer_state.json is missing"),
    ],
)
def test_broken_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage, named):
    make_checkpoint(tmp_path, 5)
    damage(make_checkpoint(tmp_path, 10))
    with caplog.at_level(logging.WARNING, logger="training.checkpoints"):
        resume = find_resume_checkpoint(tmp_path)
    assert resume == (tmp_path / "checkpoint-5", 5)
    assert named in caplog.text and "checkpoint-10" in caplog.text
    with pytest.raises(ValueError, match=f"--resume_from_checkpoint .*checkpoint-10: .*{named}"):
        resume_point(tmp_path / "checkpoint-10")


def test_newest_complete_checkpoint_is_chosen_by_step_not_name(tmp_path):
    for step in (2, 10, 9):
        make_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-11-tmp").mkdir()  # not a checkpoint name
    assert find_resume_checkpoint(tmp_path) == (tmp_path / "checkpoint-10", 10)
    assert checkpoint_problem(tmp_path / "checkpoint-9") is None
    assert find_resume_checkpoint(tmp_path / "missing") is None


def test_sharded_weights_are_checked_shard_by_shard(tmp_path):
    folder = make_checkpoint(tmp_path, 4, sharded=True)
    assert checkpoint_problem(folder) is None
    truncate(folder / "model-00002-of-00002.safetensors")
    assert "model-00002-of-00002.safetensors is truncated" in checkpoint_problem(folder)


def test_no_complete_checkpoint_starts_from_scratch(tmp_path, caplog):
    truncate(make_checkpoint(tmp_path, 3) / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="training.checkpoints"):
        assert find_resume_checkpoint(tmp_path) is None
    assert "starts from scratch" in caplog.text
