"""Publishing the web app as a Space (`hub.space`, `python -m hub push-space`) against a fake Hub client."""

import ast
import runpy
import shutil
from pathlib import Path
from types import SimpleNamespace

import gradio
import pytest
import yaml
from app_testing import save_tiny_model
from huggingface_hub import metadata_load

import hub.push
from hub.__main__ import main
from hub.cards import HubInputError
from hub.remote_code import PROJECT_PACKAGES
from hub.space import plan_space, push_space, write_space
from processing.examples import load_examples
from processing.synthetic import generate

CODE_FILES = {
    "modeling_epng/__init__.py",
    "modeling_epng/modeling_epng.py",
    "modeling_epng/processing_epng.py",
    "modeling_epng/phrase_extraction.py",
    "processing/__init__.py",
    "processing/visualization.py",
    "processing/examples.py",
    "training/__init__.py",
    "training/app.py",
    "training/app_backend.py",
}


class RecordingHfApi:
    """Stands in for `HfApi`: records the calls and keeps a copy of the folder `upload_folder` is given (the push
    stages the Space in a temporary folder that is gone afterwards)."""

    def __init__(self, copy_to: Path):
        self.copy_to = copy_to
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        shutil.copytree(kwargs["folder_path"], self.copy_to)
        return SimpleNamespace(commit_url=f"https://huggingface.co/spaces/{kwargs['repo_id']}/commit/abc")

    def kwargs_of(self, name):
        return next(kwargs for call, _, kwargs in self.calls if call == name)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, minilm_path):
    folder = save_tiny_model(tmp_path_factory.mktemp("space_model") / "model", minilm_path)
    (folder / "optimizer.pt").write_bytes(b"state")  # a training leftover: never uploaded
    return folder


@pytest.fixture(scope="module")
def examples_root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("space_examples") / "synthetic", num_train=1, num_val=3, seed=0)


@pytest.fixture
def no_hub_client(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the Hub client must not be built")

    monkeypatch.setattr(hub.push, "HfApi", refuse)


def test_push_space_with_a_local_model_and_examples(model_dir, examples_root, tmp_path):
    api = RecordingHfApi(tmp_path / "uploaded")
    upload = push_space(model_dir, "org/epng-demo", examples_dir=examples_root, num_examples=2, api=api)

    assert api.calls[0] == (
        "create_repo",
        "org/epng-demo",
        {"repo_type": "space", "private": None, "exist_ok": True, "space_sdk": "gradio"},
    )
    assert api.kwargs_of("upload_folder")["repo_type"] == "space"
    assert upload.commit_url.endswith("/commit/abc")
    uploaded = tmp_path / "uploaded"
    written = sorted(path.relative_to(uploaded).as_posix() for path in uploaded.rglob("*") if path.is_file())
    assert written == upload.files
    assert {"app.py", "requirements.txt", "README.md", "model/config.json", "model/model.safetensors"} <= set(written)
    assert {"model/tokenizer.json", "model/processor_config.json", "examples/examples.json"} <= set(written)
    assert CODE_FILES <= set(written)
    assert "model/optimizer.pt" not in written and "model/optimizer.pt" in upload.skipped
    space_examples = load_examples(uploaded / "examples")
    assert [example.narrative for example in space_examples] == [e.narrative for e in load_examples(examples_root, 2)]
    assert all(Path(example.image).is_file() for example in space_examples)

    card = metadata_load(uploaded / "README.md")
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py"
    assert card["sdk_version"] == gradio.__version__
    assert "models" not in card  # the model travels with the Space
    requirements = (uploaded / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("torch==") and "+" not in line for line in requirements)
    assert any(line.startswith("transformers==") for line in requirements)
    assert not any(line.startswith("gradio") for line in requirements)  # Spaces install sdk_version
    assert "MODEL = 'model'" in (uploaded / "app.py").read_text()


def _project_imports(source_file: Path, space: Path) -> set[str]:
    """Dotted names of the project modules `source_file` imports (absolute, or relative inside its package)."""
    package = source_file.parent.relative_to(space).as_posix().replace("/", ".")
    modules = set()
    for node in ast.walk(ast.parse(source_file.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else ""
            modules.add(f"{base}.{node.module}" if base and node.module else base or node.module)
    return {module for module in modules if module.split(".")[0] in PROJECT_PACKAGES}


def test_the_staged_space_holds_every_module_it_imports_and_builds_its_page(model_dir, examples_root, tmp_path):
    space = tmp_path / "space"
    write_space(space, plan_space(model_dir, examples_dir=examples_root)[0])
    for source_file in space.rglob("*.py"):
        for module in _project_imports(source_file, space):
            path = space / module.replace(".", "/")
            assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), f"{source_file}: {module}"
    # app.py as Spaces run it (imported, so that it does not start a server): model and examples from the Space.
    namespace = runpy.run_path(str(space / "app.py"), run_name="space_app")
    assert isinstance(namespace["demo"], gradio.Blocks)
    assert namespace["model_name_or_path"] == space / "model"
    assert namespace["examples_dir"] == space / "examples"


def test_push_space_over_a_hub_model_id(tmp_path):
    api = RecordingHfApi(tmp_path / "uploaded")
    upload = push_space("org/epng-png", "org/epng-demo", revision="dev", api=api)
    assert not any(path.startswith(("model/", "examples/")) for path in upload.files)
    assert api.kwargs_of("create_branch") == {"branch": "dev", "repo_type": "space", "exist_ok": True}
    assert metadata_load(tmp_path / "uploaded" / "README.md")["models"] == ["org/epng-png"]
    app_source = (tmp_path / "uploaded" / "app.py").read_text()
    assert "MODEL = 'org/epng-png'" in app_source and "EXAMPLES = None" in app_source


def test_bad_space_arguments_are_refused(tmp_path, model_dir):
    with pytest.raises(HubInputError, match="neither a local folder nor a Hub model id"):
        push_space(str(tmp_path / "missing" / "folder"), "org/demo", dry_run=True)
    with pytest.raises(HubInputError, match="missing: config.json"):
        push_space(tmp_path, "org/demo", dry_run=True)
    with pytest.raises(HubInputError, match="holds no example"):
        push_space(model_dir, "org/demo", examples_dir=tmp_path, dry_run=True)
    with pytest.raises(HubInputError, match="invalid --repo_id"):
        push_space(model_dir, "org/demo/extra", dry_run=True)
    (tmp_path / "taken").mkdir()
    with pytest.raises(HubInputError, match="already exists"):
        push_space(model_dir, "org/demo", output_dir=tmp_path / "taken", dry_run=True)


def test_cli_dry_run_prints_the_space_files(model_dir, examples_root, capsys, no_hub_client):
    argv = ["push-space", "--repo_id", "org/epng-demo", "--model_name_or_path", str(model_dir)]
    assert main([*argv, "--examples_dir", str(examples_root), "--num_examples", "1", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "Dry run: nothing written" in out and "repo_type: space" in out
    listed = [line.strip().split(" (")[0] for line in out.splitlines() if line.startswith("  ") and "(" in line]
    assert {"app.py", "requirements.txt", "README.md", "model/model.safetensors", "examples/examples.json"} <= set(
        listed
    )
    assert CODE_FILES <= set(listed)
    assert "  - model/optimizer.pt" in out  # listed as skipped


def test_cli_bad_model_is_a_one_line_error(capsys, no_hub_client):
    assert main(["push-space", "--repo_id", "org/demo", "--model_name_or_path", "not a model", "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_space_card_front_matter_is_valid_yaml(tmp_path):
    from hub.space import space_card

    card = space_card("My demo", "org/epng")
    front_matter = yaml.safe_load(card.split("---\n")[1])
    assert front_matter["title"] == "My demo" and front_matter["pinned"] is False
    assert len(front_matter["short_description"]) <= 60  # the Hub's limit
