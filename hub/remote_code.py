"""Make a saved EPNG folder loadable without this package, through transformers' remote code.

```python
from hub.remote_code import add_remote_code

add_remote_code("epng-png")  # a folder written by save_pretrained, the checkpoint converter or the Trainer
```

```bash
python -m hub.remote_code epng-png
```

A user who has only `transformers` (and its usual companions: torch, numpy, Pillow) then loads it with

```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("user/epng-png", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("user/epng-png", trust_remote_code=True)
```

What [`add_remote_code`] does:

- copies the model folder `modeling_epng/` as it is (every module but `__init__.py`, whose only job is to register
  the Auto classes inside the package): it imports nothing from the rest of this repository, so its files load as
  the flat folder transformers' loader makes of them. They are copied from the installed package at save time, so
  the package stays their only source.
- with the processor, writes a `custom_pipelines` entry into `config.json`, so
  `pipeline("panoptic-narrative-grounding", model=..., trust_remote_code=True)` works too.
- writes `auto_map` into `config.json` (`AutoConfig`, `AutoModel`), into `processor_config.json` (`AutoProcessor`,
  and `AutoImageProcessor` in its nested `image_processor` entry, which is where transformers 5 stores the image
  processor) and into a legacy `preprocessor_config.json` if there is one. The processor entries are only written
  when the folder holds a processor. The tokenizer is a standard BERT tokenizer and needs no code.

Only the model folder travels: dataset readers, collation, metrics and training stay in the package. The copied
files must not import this project's packages by absolute name (the loader would ask the user to `pip install`
them); [`remote_code_files`] refuses such files.

The same result could come from `register_for_auto_class()` on each class before `save_pretrained`, but that sets
class-wide state for the whole process and only applies to folders saved afterwards; this works on any saved folder.
`trust_remote_code=True` runs the folder's Python code: users should pin a `revision` when loading from the Hub.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers.dynamic_module_utils import get_imports

import modeling_epng
from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding, EpngImageProcessor, EpngProcessor
from modeling_epng.pipeline_epng import TASK, EpngPanopticNarrativeGroundingPipeline

# Top-level packages of this project: a copied file importing one of them would not load without the package.
PROJECT_PACKAGES = ("modeling_epng", "processing", "training", "hub")
MODEL_FOLDER = Path(modeling_epng.__file__).parent
CONFIG_FILE = "config.json"
PROCESSOR_FILE = "processor_config.json"
LEGACY_PREPROCESSOR_FILE = "preprocessor_config.json"


def class_reference(cls: type) -> str:
    """`module_file_stem.ClassName`, the form `auto_map` uses for a class defined in a file of the folder."""
    return f"{Path(sys.modules[cls.__module__].__file__).stem}.{cls.__name__}"


def check_self_contained(files: Iterable[Path]) -> None:
    """Raise `ValueError` if one of `files` imports one of this project's packages by absolute name: as remote code it
    would not load without this package."""
    for file in files:
        project_imports = sorted(set(get_imports(file)) & set(PROJECT_PACKAGES))
        if project_imports:
            raise ValueError(
                f"{file} imports {', '.join(project_imports)} by absolute name, so it cannot load as remote code "
                "without this package; use a relative import within the package"
            )


def _add_auto_map(json_file: Path, entries: dict[str, str], image_processor_entries: dict[str, str] | None = None):
    """Add `entries` to the `auto_map` of `json_file`, and `image_processor_entries` to that of its nested
    `image_processor` object (transformers 5 nests the image processor's config in `processor_config.json`)."""
    content = json.loads(json_file.read_text(encoding="utf-8"))
    content.setdefault("auto_map", {}).update(entries)
    if image_processor_entries and isinstance(content.get("image_processor"), dict):
        content["image_processor"].setdefault("auto_map", {}).update(image_processor_entries)
    json_file.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _add_custom_pipeline(config_file: Path) -> None:
    """The `custom_pipelines` entry of `config.json` through which `pipeline(model=..., trust_remote_code=True)`
    finds the task and its class in the folder (what `Pipeline.save_pretrained` writes for a registered task)."""
    content = json.loads(config_file.read_text(encoding="utf-8"))
    content.setdefault("custom_pipelines", {})[TASK] = {
        "impl": class_reference(EpngPanopticNarrativeGroundingPipeline),
        "pt": ["AutoModel"],
        "type": "multimodal",
    }
    config_file.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def remote_code_files() -> list[Path]:
    """The files of the model folder that [`add_remote_code`] copies: every module of `modeling_epng/` but its
    `__init__.py`, checked by [`check_self_contained`]."""
    files = sorted(path for path in MODEL_FOLDER.glob("*.py") if path.name != "__init__.py")
    check_self_contained(files)
    return files


def add_remote_code(folder: str | os.PathLike) -> list[Path]:
    """
    Copy the EPNG code into a saved model folder and point its configs' `auto_map` at it, so that
    `AutoModel/AutoConfig/AutoProcessor/AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)` work
    without this package. Running it again refreshes the code files.

    Args:
        folder (`str` or `os.PathLike`): a folder with `config.json` (`model_type: "epng"`), and optionally the
            processor files.

    Returns:
        `list[Path]`: the code files written into `folder`.
    """
    folder = Path(folder)
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}: save the model there first")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type != EpngConfig.model_type:
        raise ValueError(f"{config_file} has model_type {model_type!r}, not {EpngConfig.model_type!r}")

    written = [Path(shutil.copyfile(file, folder / file.name)) for file in remote_code_files()]
    has_processor = any((folder / name).is_file() for name in (PROCESSOR_FILE, LEGACY_PREPROCESSOR_FILE))

    _add_auto_map(
        config_file,
        {"AutoConfig": class_reference(EpngConfig), "AutoModel": class_reference(EpngForPanopticNarrativeGrounding)},
    )
    if has_processor:
        _add_custom_pipeline(config_file)
    processor_entry = {"AutoProcessor": class_reference(EpngProcessor)}
    image_processor_entry = {"AutoImageProcessor": class_reference(EpngImageProcessor)}
    if (folder / PROCESSOR_FILE).is_file():
        _add_auto_map(folder / PROCESSOR_FILE, processor_entry, image_processor_entry)
    if (folder / LEGACY_PREPROCESSOR_FILE).is_file():
        _add_auto_map(folder / LEGACY_PREPROCESSOR_FILE, {**processor_entry, **image_processor_entry})
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hub.remote_code",
        description="Add the EPNG code and auto_map to a saved folder, so it loads with trust_remote_code=True "
        "without the epng package.",
    )
    parser.add_argument("folder", help="Folder written by save_pretrained (config.json, weights, processor files).")
    args = parser.parse_args(argv)
    for file in add_remote_code(args.folder):
        print(f"wrote {file}")


if __name__ == "__main__":
    main()
