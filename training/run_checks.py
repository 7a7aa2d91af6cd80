"""Checks of `run_png.py`'s arguments that would otherwise let a run go wrong silently: a misspelt config override
(it would be stored in config.json and ignored), a run that trains nothing, a split the dataset lacks."""

from __future__ import annotations

import dataclasses
import difflib

from modeling_epng import EpngConfig


def config_field_names() -> set[str]:
    """Names `--config_overrides` may set: the fields of [`EpngConfig`] (with those of `PreTrainedConfig`), their
    aliases, and the output switches `PreTrainedConfig` keeps as properties."""
    properties = {
        name
        for cls in EpngConfig.__mro__
        for name, value in vars(cls).items()
        if isinstance(value, property) and value.fset is not None and not name.startswith("_")
    }
    return {field.name for field in dataclasses.fields(EpngConfig)} | set(EpngConfig.attribute_map) | properties


def check_config_overrides(overrides: dict) -> None:
    """Raise `ValueError` for a `--config_overrides` key that is no config field, naming the closest ones."""
    known = config_field_names()
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"--config_overrides: {key!r} is not a field of EpngConfig{hint}")


def check_training_length(num_train_epochs: float, max_steps: int) -> None:
    """Raise `ValueError` when `--do_train` would run no optimizer step (and save an untrained model)."""
    if max_steps > 0:
        return
    if max_steps < -1:
        raise ValueError(f"--max_steps must be > 0 (or -1 to train --num_train_epochs epochs), got {max_steps}")
    if not num_train_epochs > 0:
        raise ValueError(
            f"--num_train_epochs must be > 0 (or --max_steps > 0) with --do_train, got {num_train_epochs}: the run "
            "would train nothing and save an untrained model"
        )


def select_split(dataset, split: str, argument: str, source: str | None):
    """`dataset[split]`, or a `ValueError` naming `argument` and the splits `dataset` has."""
    if split not in dataset:
        raise ValueError(f"{argument} {split!r} is not a split of {source}; available splits: {sorted(dataset)}")
    return dataset[split]
