"""Tests of `hub.remote_code`: a folder loads through `trust_remote_code=True` in a process that cannot import this
project's packages, and computes what the in-package model and processor compute."""

import filecmp
import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from hub.remote_code import PROJECT_PACKAGES, add_remote_code, check_self_contained
from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding, EpngImageProcessor, EpngProcessor
from modeling_epng.pipeline_epng import EpngPanopticNarrativeGroundingPipeline

PACKAGE_CODE_FILES = {
    "configuration_epng.py": "modeling_epng/configuration_epng.py",
    "modeling_epng.py": "modeling_epng/modeling_epng.py",
    "attention.py": "modeling_epng/attention.py",
    "losses.py": "modeling_epng/losses.py",
    "inference.py": "modeling_epng/inference.py",
    "packed_linear.py": "modeling_epng/packed_linear.py",
    "aoti_package.py": "modeling_epng/aoti_package.py",
    "fixed_shape_program.py": "modeling_epng/fixed_shape_program.py",
    "communicator.py": "modeling_epng/communicator.py",
    "visual_encoder.py": "modeling_epng/visual_encoder.py",
    "processing_epng.py": "modeling_epng/processing_epng.py",
    "mask_resize.py": "modeling_epng/mask_resize.py",
    "numba_kernels.py": "modeling_epng/numba_kernels.py",
    "pixel_lookup.py": "modeling_epng/pixel_lookup.py",
    "image_processing_epng.py": "modeling_epng/image_processing_epng.py",
    "phrase_extraction.py": "modeling_epng/phrase_extraction.py",
    "phrase_spans.py": "modeling_epng/phrase_spans.py",
    "background_parsing.py": "modeling_epng/background_parsing.py",
    "pipeline_epng.py": "modeling_epng/pipeline_epng.py",
}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ground_example(model, processor):
    """Processor → model → post-processing on a fixed example. Runs both here and, by its source, in the child."""
    import numpy as np
    import torch

    image = np.random.default_rng(0).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    narrative = "a brown dog sleeps on the grass next to a red ball"
    inputs = processor(
        images=image, text=narrative, phrases=["a brown dog", "the grass", "a red ball"], return_original_sizes=True
    )
    original_sizes = inputs.pop("original_sizes")
    with torch.no_grad():
        outputs = model.eval()(**inputs)
    grounding = processor.post_process_grounding(outputs, original_sizes, inputs["phrase_mask"])[0]
    return {
        "pixel_values": inputs["pixel_values"],
        "phrase_ids": inputs["phrase_ids"],
        "mask_logits": outputs.mask_logits,
        "masks": grounding["masks"],
    }


# The child hides this project's packages (the editable install would otherwise find them) before anything is
# imported, loads the folder through the Auto classes, and saves what it computed and where its classes came from.
CHILD_SCRIPT = """
import importlib.abc
import sys

BLOCKED = {blocked!r}


class HideProjectPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is hidden in this process", name=name)
        return None


sys.meta_path.insert(0, HideProjectPackages())
try:
    import modeling_epng  # noqa: F401
    raise SystemExit("the package is still importable")
except ModuleNotFoundError:
    pass

import torch
from transformers import AutoModel, AutoProcessor

{ground_example}

folder, output = sys.argv[1:]
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
classes = [type(model), type(model.config), type(processor), type(processor.image_processor)]
torch.save(
    {{
        "class_modules": [cls.__module__ for cls in classes],
        "project_modules": sorted(name for name in sys.modules if name.partition(".")[0] in BLOCKED),
        "results": ground_example(model, processor),
    }},
    output,
)
"""


@pytest.fixture
def saved_folder(tmp_path, minilm_path):
    """A tiny random EPNG (its BERT shares MiniLM's vocabulary) with its processor (MiniLM tokenizer, 64x64 inputs)
    saved by `save_pretrained`."""
    torch.manual_seed(0)
    config = EpngConfig.tiny()
    folder = tmp_path / "epng-tiny"
    EpngForPanopticNarrativeGrounding(config).save_pretrained(folder)
    image_processor = EpngImageProcessor(size={"height": 64, "width": 64})
    EpngProcessor(
        image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(minilm_path)
    ).save_pretrained(folder)
    return folder


def test_add_remote_code_copies_package_files_and_writes_auto_map(saved_folder):
    written = add_remote_code(saved_folder)

    assert sorted(file.name for file in written) == sorted(PACKAGE_CODE_FILES)
    for name, source in PACKAGE_CODE_FILES.items():
        assert filecmp.cmp(saved_folder / name, os.path.join(REPO_ROOT, source), shallow=False)
    config = json.loads((saved_folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_epng.EpngConfig",
        "AutoModel": "modeling_epng.EpngForPanopticNarrativeGrounding",
    }
    assert config["custom_pipelines"] == {
        "panoptic-narrative-grounding": {
            "impl": "pipeline_epng.EpngPanopticNarrativeGroundingPipeline",
            "pt": ["AutoModel"],
            "type": "multimodal",
        }
    }
    processor_config = json.loads((saved_folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_epng.EpngProcessor"}
    assert processor_config["image_processor"]["auto_map"] == {
        "AutoImageProcessor": "image_processing_epng.EpngImageProcessor"
    }

    add_remote_code(saved_folder)  # idempotent
    assert json.loads((saved_folder / "config.json").read_text()) == config


def run_isolated(script, saved_folder, output):
    """Run `script FOLDER OUTPUT` in a fresh interpreter that cannot see the project, and load what it saved."""
    environment = {**os.environ, "HF_MODULES_CACHE": str(output.parent / "modules"), "HF_HUB_OFFLINE": "1"}
    # -I: no PYTHONPATH, no user site, no script or working directory on sys.path.
    child = subprocess.run(
        [sys.executable, "-I", str(script), str(saved_folder), str(output)],
        check=False,
        cwd=output.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return torch.load(output, weights_only=True)


def test_folder_loads_and_matches_without_the_package(saved_folder, tmp_path):
    add_remote_code(saved_folder)
    script = tmp_path / "load_remote.py"
    ground_source = textwrap.dedent(inspect.getsource(ground_example))
    script.write_text(CHILD_SCRIPT.format(blocked=set(PROJECT_PACKAGES), ground_example=ground_source))
    remote = run_isolated(script, saved_folder, tmp_path / "remote_results.pt")
    assert remote["project_modules"] == []
    assert all(module.startswith("transformers_modules.") for module in remote["class_modules"]), remote
    model = EpngForPanopticNarrativeGrounding.from_pretrained(saved_folder)
    local = ground_example(model, EpngProcessor.from_pretrained(saved_folder))
    assert remote["results"].keys() == local.keys()
    for name, value in local.items():
        torch.testing.assert_close(remote["results"][name], value, rtol=0, atol=0, msg=name)
    assert local["masks"].shape == (3, 50, 70)


PIPELINE_CHILD_SCRIPT = """
import importlib.abc
import sys

BLOCKED = {blocked!r}


class HideProjectPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is hidden in this process", name=name)
        return None


sys.meta_path.insert(0, HideProjectPackages())
import numpy as np
import torch
from transformers import pipeline

folder, output = sys.argv[1:]
image = np.random.default_rng(0).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
grounder = pipeline(model=folder, trust_remote_code=True, device="cpu")
results = grounder(image, {narrative!r})
torch.save(
    {{
        "pipeline_module": type(grounder).__module__,
        "project_modules": sorted(name for name in sys.modules if name.partition(".")[0] in BLOCKED),
        "phrases": [result["phrase"] for result in results],
        "masks": torch.from_numpy(np.stack([np.asarray(result["mask"]) for result in results])),
    }},
    output,
)
"""


def test_pipeline_loads_from_the_folder_without_the_package(saved_folder, tmp_path):
    from transformers import pipeline

    narrative = "In this image we can see a brown dog on the grass next to a red ball."
    add_remote_code(saved_folder)
    script = tmp_path / "pipeline_remote.py"
    script.write_text(PIPELINE_CHILD_SCRIPT.format(blocked=set(PROJECT_PACKAGES), narrative=narrative))
    remote = run_isolated(script, saved_folder, tmp_path / "pipeline_results.pt")
    assert remote["project_modules"] == []
    assert remote["pipeline_module"].startswith("transformers_modules.")
    # transformers asks for trust_remote_code once config.json names a custom pipeline, unless given the class.
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline("panoptic-narrative-grounding", model=str(saved_folder))
    local_pipeline = pipeline(
        "panoptic-narrative-grounding",
        model=str(saved_folder),
        pipeline_class=EpngPanopticNarrativeGroundingPipeline,
        device="cpu",
    )
    assert type(local_pipeline) is EpngPanopticNarrativeGroundingPipeline
    local = local_pipeline(np.random.default_rng(0).integers(0, 256, size=(50, 70, 3), dtype=np.uint8), narrative)
    assert remote["phrases"] == [result["phrase"] for result in local] == ["a brown dog", "the grass", "a red ball"]
    torch.testing.assert_close(
        remote["masks"], torch.from_numpy(np.stack([np.asarray(result["mask"]) for result in local])), rtol=0, atol=0
    )


def test_model_only_folder_gets_no_processor_or_pipeline_entries(tmp_path, tiny_config):
    folder = tmp_path / "model-only"
    EpngForPanopticNarrativeGrounding(tiny_config).save_pretrained(folder)

    written = add_remote_code(folder)

    assert sorted(file.name for file in written) == sorted(PACKAGE_CODE_FILES)
    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel"} and "custom_pipelines" not in config
    assert not (folder / "processor_config.json").exists()


def test_rejects_a_folder_that_is_not_epng(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))

    with pytest.raises(ValueError, match="model_type 'bert'"):
        add_remote_code(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        add_remote_code(tmp_path / "missing")


def test_code_importing_a_project_package_is_refused(tmp_path):
    module_file = tmp_path / "leaky_processing.py"
    module_file.write_text("def collate(batch):\n    from processing.collate import collate_batch\n")
    relative = tmp_path / "relative.py"
    relative.write_text("from .configuration_epng import EpngConfig\n")

    check_self_contained([relative])
    with pytest.raises(ValueError, match="imports processing by absolute name"):
        check_self_contained([relative, module_file])
