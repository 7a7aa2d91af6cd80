"""Which Trainer checkpoint a rerun resumes from: the latest one whose files are complete.

A run killed while saving leaves a `checkpoint-N` folder with a truncated weights file or an unparsable
`trainer_state.json`; resuming from it fails on every rerun. [`find_resume_checkpoint`] checks each checkpoint,
newest first, without loading any tensor: the safetensors header must parse and the file size must match the data
it declares, `trainer_state.json` must parse and give the step, and the optimizer/scheduler/RNG states torch saved
(zip archives) must have their central directory, which a truncated write lacks. A broken checkpoint is logged and
skipped in favour of the previous one.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zipfile
from pathlib import Path
from typing import NamedTuple

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
SAFETENSORS_WEIGHTS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# torch.save archives the Trainer writes next to the weights; a checkpoint saved with `save_only_model` has none.
TORCH_STATE_PATTERNS = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth")
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class ResumePoint(NamedTuple):
    """A checkpoint to resume from and the optimizer step it was saved at."""

    path: Path
    step: int


def safetensors_problem(path: Path) -> str | None:
    """What makes the safetensors file `path` unloadable (missing, truncated, bad header), or `None`."""
    try:
        with open(path, "rb") as file:
            header_size_bytes = file.read(8)
            if len(header_size_bytes) < 8:
                return f"{path} is truncated ({len(header_size_bytes)} bytes)"
            (header_size,) = struct.unpack("<Q", header_size_bytes)
            file_size = path.stat().st_size
            if header_size > file_size - 8:
                return f"{path} is truncated: its header claims {header_size} bytes, {file_size - 8} follow"
            header = json.loads(file.read(header_size))
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{path} has an unreadable header: {error}"
    if not isinstance(header, dict):
        return f"{path} has an unreadable header"
    data_size = max(
        (
            entry["data_offsets"][1]
            for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict)
        ),
        default=0,
    )
    if file_size != 8 + header_size + data_size:
        return f"{path} is truncated: {file_size} bytes, the header declares {8 + header_size + data_size}"
    return None


def _weights_problem(checkpoint: Path) -> str | None:
    index_path = checkpoint / SAFETENSORS_INDEX
    if index_path.is_file():
        try:
            shards = sorted(set(json.loads(index_path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            return f"{index_path} is unreadable: {error!r}"
        return next(filter(None, (safetensors_problem(checkpoint / shard) for shard in shards)), None)
    return safetensors_problem(checkpoint / SAFETENSORS_WEIGHTS)


def _trainer_state_step(checkpoint: Path) -> int:
    state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    return int(state["global_step"])


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """What makes a Trainer checkpoint folder impossible to resume from, or `None` if its files are complete."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        return f"{checkpoint} is not a folder"
    try:
        _trainer_state_step(checkpoint)
    except FileNotFoundError:
        return f"{checkpoint / TRAINER_STATE} is missing"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{checkpoint / TRAINER_STATE} is unreadable: {error!r}"
    problem = _weights_problem(checkpoint)
    if problem is not None:
        return problem
    for pattern in TORCH_STATE_PATTERNS:
        for path in sorted(checkpoint.glob(pattern)):
            try:
                with zipfile.ZipFile(path):
                    pass
            except (OSError, zipfile.BadZipFile) as error:
                return f"{path} is truncated or corrupt: {error}"
    return None


def find_resume_checkpoint(output_dir: str | Path) -> ResumePoint | None:
    """The newest complete `checkpoint-N` of `output_dir` with its step, or `None` when there is none.

    Broken checkpoints newer than it are logged with what is wrong and skipped.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    numbered = [
        (int(match.group(1)), path) for path in output_dir.iterdir() if (match := _CHECKPOINT_NAME.match(path.name))
    ]
    for _, checkpoint in sorted(numbered, reverse=True):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return ResumePoint(checkpoint, _trainer_state_step(checkpoint))
        logger.warning("Not resuming from %s: %s; trying the previous checkpoint", checkpoint, problem)
    if numbered:
        logger.warning("No complete checkpoint in %s: training starts from scratch", output_dir)
    return None


def resume_point(checkpoint: str | Path) -> ResumePoint:
    """The checkpoint asked for explicitly (`--resume_from_checkpoint`), checked.

    Raises:
        `ValueError` naming what is wrong with it (an explicit choice is not replaced by another checkpoint).
    """
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: {problem}")
    return ResumePoint(Path(checkpoint), _trainer_state_step(Path(checkpoint)))
