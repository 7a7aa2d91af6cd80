"""Pushing checkpoints and datasets (`hub.push`, `python -m hub`) against a fake Hub client: nothing leaves the machine."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub import metadata_load
from huggingface_hub.errors import LocalTokenNotFoundError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from safetensors.torch import save_file

import hub.push
from hub.__main__ import main
from hub.cards import HubInputError
from hub.push import MODEL_ALLOW_PATTERNS, push_dataset, push_model

REPO_ROOT = Path(__file__).resolve().parents[2]

# What a Trainer output folder + processor.save_pretrained leave behind; only EXPECTED_MODEL_FILES must be uploaded.
MODEL_FILES = {
    "config.json": json.dumps({"model_type": "epng", "hidden_size": 48, "fpn_channels": 16}),
    "preprocessor_config.json": json.dumps({"image_processor_type": "EpngImageProcessor"}),
    "tokenizer_config.json": json.dumps({"tokenizer_class": "BertTokenizer"}),
    "tokenizer.json": json.dumps({"version": "1.0"}),
    "eval_results.json": json.dumps({"eval_ar_all": 40.0, "eval_ar_thing": 35.0}),
    "trainer_state.json": json.dumps({"global_step": 10, "epoch": 1.0, "log_history": []}),
    "training_args.bin": "pickle",
    "optimizer.pt": "state",
    "scheduler.pt": "state",
    "rng_state.pth": "state",
    "rng_state_1.pth": "state",
    "checkpoint-500/config.json": "{}",
    "checkpoint-500/optimizer.pt": "state",
    "runs/Jan01_00-00-00/events.out.tfevents.1.host": "events",
    ".git/HEAD": "ref: refs/heads/main",
}
CHECKPOINT_FILES = [
    "README.md",
    "config.json",
    "eval_results.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "trainer_state.json",
]
# the EPNG code that push-model adds for trust_remote_code loading
CODE_FILES = [
    "aoti_package.py",
    "attention.py",
    "background_parsing.py",
    "communicator.py",
    "configuration_epng.py",
    "fixed_shape_program.py",
    "image_processing_epng.py",
    "inference.py",
    "losses.py",
    "mask_resize.py",
    "modeling_epng.py",
    "numba_kernels.py",
    "packed_linear.py",
    "phrase_extraction.py",
    "phrase_spans.py",
    "pipeline_epng.py",
    "pixel_lookup.py",
    "processing_epng.py",
    "visual_encoder.py",
]
EXPECTED_MODEL_FILES = sorted(CHECKPOINT_FILES + CODE_FILES)
DATASET_CARD = """---
license: cc-by-4.0
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: validation
    path: data/validation-*
---

# PNG
"""
EXPECTED_DATASET_FILES = [
    "README.md",
    "data/train-00000-of-00001.parquet",
    "data/validation-00000-of-00001.parquet",
]


class FakeHfApi:
    """Stands in for `huggingface_hub.HfApi`: records every call; `upload_folder` lists the files it would send.

    The listing walks the folder on its own (os.walk) and applies the patterns with the Hub client's
    `filter_repo_objects` and `DEFAULT_IGNORE_PATTERNS`, exactly as the real `upload_folder` filters.
    """

    def __init__(self, token=None, fail_with=None):
        self.token = token
        self.fail_with = fail_with
        self.calls = []
        self.uploaded_files = None

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.fail_with is not None:
            raise self.fail_with
        return SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        folder = Path(kwargs["folder_path"])
        paths = [
            (Path(root) / name).relative_to(folder).as_posix() for root, _, names in os.walk(folder) for name in names
        ]
        self.uploaded_files = sorted(
            filter_repo_objects(
                paths,
                allow_patterns=kwargs.get("allow_patterns"),
                ignore_patterns=[*(kwargs.get("ignore_patterns") or []), *DEFAULT_IGNORE_PATTERNS],
            )
        )
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc123")

    def call_names(self):
        return [name for name, _, _ in self.calls]

    def kwargs_of(self, name):
        return next(kwargs for call_name, _, kwargs in self.calls if call_name == name)


def make_checkpoint(folder, files=MODEL_FILES, weights=True):
    folder.mkdir(parents=True, exist_ok=True)
    for relative_path, content in files.items():
        path = folder / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    if weights:
        save_file({"head.weight": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
    return folder


def write_parquet(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image_id": ["1"], "caption": ["a dog on the grass"]}), path)


def make_dataset(folder, card=DATASET_CARD):
    write_parquet(folder / "data/train-00000-of-00001.parquet")
    write_parquet(folder / "data/validation-00000-of-00001.parquet")
    (folder / "conversion.log").write_text("converted", encoding="utf-8")
    (folder / "images").mkdir()
    (folder / "images/000000000001.jpg").write_bytes(b"jpeg")
    if card is not None:
        (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


@pytest.fixture
def checkpoint_dir(tmp_path):
    return make_checkpoint(tmp_path / "epng-png")


@pytest.fixture
def dataset_dir(tmp_path):
    return make_dataset(tmp_path / "png-dataset")


@pytest.fixture
def no_hub_client(monkeypatch):
    """Make any attempt to build a real Hub client fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the Hub client must not be built")

    monkeypatch.setattr(hub.push, "HfApi", refuse)


def test_push_model_uploads_the_checkpoint_without_training_leftovers(checkpoint_dir):
    api = FakeHfApi()
    upload = push_model(checkpoint_dir, "org/epng", api=api)

    assert api.call_names() == ["create_repo", "upload_folder"]
    assert api.calls[0] == ("create_repo", "org/epng", {"repo_type": "model", "private": None, "exist_ok": True})
    upload_kwargs = api.kwargs_of("upload_folder")
    assert upload_kwargs["repo_id"] == "org/epng"
    assert upload_kwargs["repo_type"] == "model"
    assert upload_kwargs["revision"] == "main"
    assert upload_kwargs["commit_message"] == "Upload EPNG model"
    assert Path(upload_kwargs["folder_path"]) == checkpoint_dir
    assert api.uploaded_files == EXPECTED_MODEL_FILES
    assert upload.files == EXPECTED_MODEL_FILES
    assert upload.commit_url == "https://huggingface.co/org/epng/commit/abc123"
    # The model card was written into the folder before the upload, for this repository.
    metadata = metadata_load(checkpoint_dir / "README.md")
    assert metadata["library_name"] == "transformers"
    assert metadata["model-index"][0]["name"] == "org/epng"
    auto_map = json.loads((checkpoint_dir / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_epng.EpngForPanopticNarrativeGrounding"


def add_secrets_and_links(folder, outside):
    """What a careless user leaves in a model folder: secrets, notes, and links to files and folders elsewhere."""
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0", encoding="utf-8")
    for relative_path in (".env", "secrets.txt", ".ssh/id_rsa", "credentials.json", "notes/todo.md", "run.py"):
        (folder / relative_path).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative_path).write_text("HF_TOKEN=hf_secret", encoding="utf-8")
    (folder / "passwd_link").symlink_to(outside / "passwd")
    (folder / "elsewhere").symlink_to(outside, target_is_directory=True)
    (folder / "extra_results.json").symlink_to(outside / "passwd")
    (folder / "own_link_results.json").symlink_to(folder / "eval_results.json")


def test_push_model_uploads_only_the_allowlist_and_never_follows_links_out(checkpoint_dir, tmp_path, capsys):
    add_secrets_and_links(checkpoint_dir, tmp_path / "outside")
    api = FakeHfApi()
    upload = push_model(checkpoint_dir, "org/epng", api=api)
    # a link whose target is inside the folder is fine; every other added file stays local
    assert upload.files == api.uploaded_files == sorted([*EXPECTED_MODEL_FILES, "own_link_results.json"])
    assert "extra_results.json (link out of the folder)" in upload.skipped
    assert "passwd_link (link out of the folder)" in upload.skipped
    assert "elsewhere (link out of the folder)" in upload.skipped
    for skipped in (".env", ".ssh/", "credentials.json", "notes/", "secrets.txt", "run.py", "training_args.bin"):
        assert skipped in upload.skipped
    assert "checkpoint-500/" in upload.skipped and "runs/" in upload.skipped and ".git/" in upload.skipped

    assert main(["push-model", str(checkpoint_dir), "--repo_id", "org/epng", "--dry_run"]) == 0
    out = capsys.readouterr().out
    listed, skipped = out.split("skipped, not uploaded")
    assert "  - .env\n" in skipped and "  - passwd_link (link out of the folder)\n" in skipped
    assert ".env" not in listed and "passwd" not in listed


def test_push_model_refuses_needed_files_linked_from_elsewhere(checkpoint_dir, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text((checkpoint_dir / "config.json").read_text(encoding="utf-8"), encoding="utf-8")
    (checkpoint_dir / "config.json").unlink()
    (checkpoint_dir / "config.json").symlink_to(outside)
    api = FakeHfApi()
    with pytest.raises(HubInputError, match="config.json link out of the folder"):
        push_model(checkpoint_dir, "org/epng", api=api)
    assert api.calls == [] and "auto_map" not in json.loads(outside.read_text(encoding="utf-8"))


def test_push_dataset_skips_links_out_of_the_folder(dataset_dir, tmp_path):
    write_parquet(tmp_path / "private.parquet")
    (dataset_dir / "data/train-00001-of-00001.parquet").symlink_to(tmp_path / "private.parquet")
    (dataset_dir / ".env").write_text("HF_TOKEN=hf_secret", encoding="utf-8")
    api = FakeHfApi()
    upload = push_dataset(dataset_dir, "org/png", api=api)
    assert upload.files == api.uploaded_files == EXPECTED_DATASET_FILES
    assert upload.skipped == [
        ".env",
        "conversion.log",
        "data/train-00001-of-00001.parquet (link out of the folder)",
        "images/",
    ]


def test_push_model_without_remote_code(checkpoint_dir):
    api = FakeHfApi()
    upload = push_model(checkpoint_dir, "org/epng", remote_code=False, api=api)
    assert upload.files == api.uploaded_files == CHECKPOINT_FILES
    assert "auto_map" not in json.loads((checkpoint_dir / "config.json").read_text())


def test_push_model_to_a_branch_privately(checkpoint_dir):
    api = FakeHfApi()
    push_model(
        checkpoint_dir,
        "org/epng",
        private=True,
        revision="ablation-lpa",
        commit_message="Add LPA ablation",
        license="mit",
        datasets=["org/png-coco"],
        api=api,
    )
    assert api.call_names() == ["create_repo", "create_branch", "upload_folder"]
    assert api.kwargs_of("create_repo")["private"] is True
    assert api.calls[1] == (
        "create_branch",
        "org/epng",
        {"branch": "ablation-lpa", "repo_type": "model", "exist_ok": True},
    )
    assert api.kwargs_of("upload_folder")["revision"] == "ablation-lpa"
    assert api.kwargs_of("upload_folder")["commit_message"] == "Add LPA ablation"
    metadata = metadata_load(checkpoint_dir / "README.md")
    assert metadata["license"] == "mit" and metadata["datasets"] == ["org/png-coco"]


def test_push_model_to_main_creates_no_branch(checkpoint_dir):
    api = FakeHfApi()
    push_model(checkpoint_dir, "org/epng", revision="main", api=api)
    assert "create_branch" not in api.call_names()


def test_allow_patterns_are_not_mutated_by_the_client(checkpoint_dir):
    before = tuple(MODEL_ALLOW_PATTERNS)
    push_model(checkpoint_dir, "org/epng", api=FakeHfApi())
    assert MODEL_ALLOW_PATTERNS == before


def test_push_model_keeps_a_hand_written_readme(checkpoint_dir):
    (checkpoint_dir / "README.md").write_text("---\nlicense: mit\n---\n# Mine\n", encoding="utf-8")
    api = FakeHfApi()
    push_model(checkpoint_dir, "org/epng", write_card=False, api=api)
    assert (checkpoint_dir / "README.md").read_text(encoding="utf-8") == "---\nlicense: mit\n---\n# Mine\n"
    assert "README.md" in api.uploaded_files


def test_sharded_weights_and_unified_processor_config(tmp_path):
    files = {name: content for name, content in MODEL_FILES.items() if name != "preprocessor_config.json"}
    files["processor_config.json"] = json.dumps({"image_processor": {}, "processor_class": "EpngProcessor"})
    folder = make_checkpoint(tmp_path / "sharded", files, weights=False)
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for index, shard in enumerate(shards):
        save_file({f"layer{index}.weight": torch.zeros(2)}, str(folder / shard))
    index = {"metadata": {}, "weight_map": {"layer0.weight": shards[0], "layer1.weight": shards[1]}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")

    api = FakeHfApi()
    push_model(folder, "org/epng", api=api)
    assert {*shards, "model.safetensors.index.json", "processor_config.json"} <= set(api.uploaded_files)

    (folder / shards[1]).unlink()
    with pytest.raises(HubInputError, match="model-00002-of-00002.safetensors"):
        push_model(folder, "org/epng", api=FakeHfApi())


def test_incomplete_checkpoint_lists_everything_missing(tmp_path):
    folder = make_checkpoint(tmp_path / "bare", {"config.json": MODEL_FILES["config.json"]}, weights=False)
    api = FakeHfApi()
    with pytest.raises(HubInputError) as error:
        push_model(folder, "org/epng", api=api)
    message = str(error.value)
    assert "\n" not in message
    for missing in ("model.safetensors", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json"):
        assert missing in message
    assert api.calls == []
    assert not (folder / "README.md").exists()


def test_missing_config_is_listed(checkpoint_dir):
    (checkpoint_dir / "config.json").unlink()
    with pytest.raises(HubInputError, match="missing: config.json"):
        push_model(checkpoint_dir, "org/epng", api=FakeHfApi())


def test_wrong_model_type_is_refused(checkpoint_dir):
    (checkpoint_dir / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    with pytest.raises(HubInputError, match="model_type 'bert', expected 'epng'"):
        push_model(checkpoint_dir, "org/epng", api=FakeHfApi())


def test_missing_folder_and_bad_repo_id(tmp_path, checkpoint_dir):
    with pytest.raises(HubInputError, match="is not a folder"):
        push_model(tmp_path / "nowhere", "org/epng", api=FakeHfApi())
    api = FakeHfApi()
    with pytest.raises(HubInputError, match="invalid --repo_id"):
        push_model(checkpoint_dir, "org/epng/extra", api=api)
    assert api.calls == []


def test_dry_run_writes_and_contacts_nothing(checkpoint_dir, no_hub_client):
    upload = push_model(checkpoint_dir, "org/epng", revision="dev", dry_run=True)
    assert upload.files == EXPECTED_MODEL_FILES
    assert (upload.repo_id, upload.repo_type, upload.revision, upload.commit_url) == ("org/epng", "model", "dev", None)
    assert not (checkpoint_dir / "README.md").exists()


def test_push_dataset_uploads_parquet_files_and_card(dataset_dir):
    api = FakeHfApi()
    upload = push_dataset(dataset_dir, "org/png", private=True, revision="v1", api=api)
    assert api.call_names() == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0] == ("create_repo", "org/png", {"repo_type": "dataset", "private": True, "exist_ok": True})
    assert api.kwargs_of("create_branch") == {"branch": "v1", "repo_type": "dataset", "exist_ok": True}
    upload_kwargs = api.kwargs_of("upload_folder")
    assert (upload_kwargs["repo_type"], upload_kwargs["revision"]) == ("dataset", "v1")
    assert upload_kwargs["commit_message"] == "Upload PNG dataset"
    assert api.uploaded_files == EXPECTED_DATASET_FILES == upload.files
    # The card is the converter's: uploaded untouched.
    assert (dataset_dir / "README.md").read_text(encoding="utf-8") == DATASET_CARD


@pytest.mark.parametrize(
    "card, message",
    [
        (None, "has no README.md.*dataset_card"),
        ("---\nlicense: cc-by-4.0\n---\n# PNG\n", "no YAML `configs` list"),
        ("# PNG without metadata\n", "no YAML `configs` list"),
        (DATASET_CARD.replace("data/validation-*", "data/test-*"), r"matching no parquet file: \['data/test-\*'\]"),
        ("---\nconfigs: [unclosed\n---\n", "unreadable YAML header"),
    ],
)
def test_dataset_card_problems(tmp_path, card, message):
    folder = make_dataset(tmp_path / "png-dataset", card=card)
    api = FakeHfApi()
    with pytest.raises(HubInputError, match=message):
        push_dataset(folder, "org/png", api=api)
    assert api.calls == []


def test_dataset_folder_without_parquet(tmp_path):
    (tmp_path / "README.md").write_text(DATASET_CARD, encoding="utf-8")
    with pytest.raises(HubInputError, match="no .parquet file"):
        push_dataset(tmp_path, "org/png", api=FakeHfApi())


def test_cli_dry_run_prints_the_plan(checkpoint_dir, capsys, no_hub_client):
    argv = ["push-model", str(checkpoint_dir), "--repo_id", "org/epng", "--revision", "dev", "--private", "--dry_run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "repo_id: org/epng" in out
    assert "repo_type: model" in out
    assert "revision: dev" in out
    assert "private: True" in out
    listed = [line.strip().split(" (")[0] for line in out.splitlines() if line.startswith("  ") and "  - " not in line]
    assert listed == EXPECTED_MODEL_FILES
    assert "README.md (generated at push time)" in out
    assert not (checkpoint_dir / "README.md").exists()


def test_cli_push_uses_the_token_without_printing_it(checkpoint_dir, capsys, monkeypatch):
    clients = []

    def fake_client(token=None):
        clients.append(FakeHfApi(token=token))
        return clients[-1]

    monkeypatch.setattr(hub.push, "HfApi", fake_client)
    argv = [
        "push-model",
        str(checkpoint_dir),
        "--repo_id",
        "org/epng",
        "--token",
        "hf_secret",
        "--commit_message",
        "v1",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert clients[0].token == "hf_secret"
    assert clients[0].kwargs_of("upload_folder")["commit_message"] == "v1"
    assert clients[0].kwargs_of("create_repo")["private"] is None
    assert "hf_secret" not in captured.out + captured.err
    assert f"Pushed {len(EXPECTED_MODEL_FILES)} files to model org/epng@main" in captured.out


def test_cli_bad_folder_is_a_one_line_error(tmp_path, capsys, no_hub_client):
    assert main(["push-model", str(tmp_path), "--repo_id", "org/epng"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing: config.json" in err


def test_cli_hub_failure_exits_1(checkpoint_dir, capsys, monkeypatch):
    failure = LocalTokenNotFoundError("Token is required (`token=True`), but no token found.")
    monkeypatch.setattr(hub.push, "HfApi", lambda token=None: FakeHfApi(token, fail_with=failure))
    assert main(["push-model", str(checkpoint_dir), "--repo_id", "org/epng"]) == 1
    assert (
        capsys.readouterr().err == "error: Hub request failed: Token is required (`token=True`), but no token found.\n"
    )


def test_module_entry_point_dry_run(dataset_dir):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "hub", "push-dataset", str(dataset_dir), "--repo_id", "org/png", "--dry_run"],
        capture_output=True,
        check=False,
        text=True,
        cwd=REPO_ROOT,
        env=environment,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "repo_type: dataset" in completed.stdout and "revision: main" in completed.stdout
    for path in EXPECTED_DATASET_FILES:
        assert f"  {path} (" in completed.stdout
    listed, skipped = completed.stdout.split("skipped, not uploaded")
    assert "conversion.log" not in listed and "images/" not in listed
    assert "  - conversion.log\n" in skipped and "  - images/\n" in skipped
