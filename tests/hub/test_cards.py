"""Model card generation (`hub.cards`), on checkpoint folders crafted here (no model code involved)."""

import json
import re

import pytest
import yaml
from huggingface_hub import ModelCard, metadata_load

from hub.__main__ import main
from hub.cards import HubInputError, model_card, read_png_metrics, write_model_card

# Subset of what `EpngConfig().save_pretrained` writes, with the reference-code switches on.
CONFIG = {
    "model_type": "epng",
    "backbone_config": {"model_type": "resnet", "depths": [3, 4, 23, 3], "layer_type": "bottleneck"},
    "text_config": {"model_type": "bert", "num_hidden_layers": 12, "hidden_size": 768},
    "fpn_channels": 256,
    "hidden_size": 768,
    "num_communicator_layers": 3,
    "num_attention_heads": 8,
    "ffn_dim": 2048,
    "self_attention_type": "lpa",
    "lpa_distance": "squared",
    "lpa_truncation": 2.0,
    "communicator_layer_form": "reference",
    "text_pooled_layers": 4,
    "freeze_text_encoder": True,
    "bce_weight": 2.0,
    "dice_weight": 2.0,
    "sal_weight": 1.0,
    "sal_variant": "reference",
    "sal_temperature": 10.0,
}
# The EPNG row of the paper's table 1, as `Trainer.save_metrics("eval", ...)` would write it.
EVAL_RESULTS = {
    "epoch": 20.0,
    "eval_loss": 0.6123,
    "eval_ar_all": 49.71,
    "eval_ar_thing": 45.6,
    "eval_ar_stuff": 55.5,
    "eval_ar_singular": 50.2,
    "eval_ar_plural": 45.1,
    "eval_num_phrases": 56531,
}
TRAINER_STATE = {
    "global_step": 1200,
    "epoch": 3.0,
    "max_steps": 1200,
    "train_batch_size": 8,
    "log_history": [
        {"epoch": 0.5, "step": 200, "loss": 1.9, "learning_rate": 1e-05, "grad_norm": 3.0},
        {"epoch": 1.0, "step": 400, "loss": 1.2, "learning_rate": 2e-05, "grad_norm": 2.0},
        {"epoch": 1.0, "step": 400, "eval_loss": 0.95, "eval_ar_all": 31.25, "eval_runtime": 12.0},
        {"epoch": 2.0, "step": 800, "loss": 0.8, "learning_rate": 5e-07, "grad_norm": 1.0},
        {"epoch": 2.0, "step": 800, "eval_loss": 0.7, "eval_ar_all": 42.5, "eval_runtime": 12.0},
        {"epoch": 3.0, "step": 1200, "train_runtime": 3723.4, "train_loss": 1.25, "total_flos": 1.0},
    ],
}
TRAINING_ARGS = {
    "learning_rate": 2e-05,
    "lr_scheduler_type": "linear",
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 4,
    "num_train_epochs": 3,
    "max_steps": -1,
    "seed": 1234,
    "bf16": True,
    "dataset_name": "org/png-coco",
}


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")


def split_card(card):
    """(metadata dict parsed with yaml.safe_load, markdown body) of a card."""
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", card, flags=re.DOTALL)
    assert match, "the card must start with a --- YAML block"
    return yaml.safe_load(match.group(1)), match.group(2)


def cells(text):
    """`text` with runs of spaces folded to one: table cells are padded to their column's width."""
    return re.sub(r" {2,}", " ", text)


def section(body, title):
    """Text of the `## title` section, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", body, flags=re.DOTALL | re.MULTILINE)
    return match.group(1) if match else None


@pytest.fixture
def checkpoint_dir(tmp_path):
    folder = tmp_path / "epng-png"
    folder.mkdir()
    write_json(folder / "config.json", CONFIG)
    return folder


@pytest.fixture
def trained_dir(checkpoint_dir):
    write_json(checkpoint_dir / "eval_results.json", EVAL_RESULTS)
    write_json(checkpoint_dir / "trainer_state.json", TRAINER_STATE)
    write_json(checkpoint_dir / "training_args.json", TRAINING_ARGS)
    return checkpoint_dir


def test_metadata_of_a_bare_checkpoint(checkpoint_dir):
    metadata, _ = split_card(model_card(checkpoint_dir))
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "image-segmentation"
    assert metadata["license"] == "apache-2.0"
    assert {"panoptic-narrative-grounding", "epng", "image-segmentation"} <= set(metadata["tags"])
    assert "datasets" not in metadata
    assert "model-index" not in metadata


def test_license_datasets_and_tags_arguments(checkpoint_dir):
    card = model_card(checkpoint_dir, "org/epng", datasets="org/png", license="mit", tags=["coco", "epng"])
    metadata, _ = split_card(card)
    assert metadata["license"] == "mit"
    assert metadata["datasets"] == ["org/png"]
    assert metadata["tags"].count("epng") == 1 and "coco" in metadata["tags"]


def test_metrics_table_in_paper_layout(trained_dir):
    _, body = split_card(model_card(trained_dir, "org/epng"))
    results = cells(section(body, "Evaluation results"))
    assert "| All | Thing | Stuff | Single | Plural |" in results
    assert "| 49.7 | 45.6 | 55.5 | 50.2 | 45.1 |" in results
    assert "56,531 grounded phrases" in results


def test_model_index_metadata(trained_dir):
    card = ModelCard(model_card(trained_dir, "org/epng"))
    assert card.data.model_name == "org/epng"
    values = {result.metric_config: result.metric_value for result in card.data.eval_results}
    assert values == {"all": 49.71, "thing": 45.6, "stuff": 55.5, "singular": 50.2, "plural": 45.1}
    assert {result.metric_type for result in card.data.eval_results} == {"average_recall"}
    # The dataset of the results is the training dataset named in training_args.json.
    assert {result.dataset_type for result in card.data.eval_results} == {"org/png-coco"}


def test_metrics_fall_back_to_all_results_json(checkpoint_dir):
    # eval_results.json without AR (e.g. written by another evaluation) must not hide all_results.json.
    write_json(checkpoint_dir / "eval_results.json", {"eval_loss": 0.5})
    write_json(checkpoint_dir / "all_results.json", {"train_loss": 1.0, **EVAL_RESULTS, "eval_ar_all": 12.34})
    metrics, num_phrases = read_png_metrics(checkpoint_dir)
    assert metrics["all"] == 12.34 and metrics["plural"] == 45.1
    assert num_phrases == 56531
    assert "| 12.3 | 45.6 | 55.5 | 50.2 | 45.1 |" in cells(model_card(checkpoint_dir))


def test_partial_metrics(checkpoint_dir):
    write_json(checkpoint_dir / "eval_results.json", {"eval_ar_all": 30.0})
    card = model_card(checkpoint_dir, "org/epng")
    assert "| 30.0 | – | – | – | – |" in cells(card)
    assert "grounded phrases" not in card
    assert [result.metric_config for result in ModelCard(card).data.eval_results] == ["all"]


def test_architecture_summary_from_config(checkpoint_dir):
    architecture = section(split_card(model_card(checkpoint_dir))[1], "Model architecture")
    assert "ResNet-101" in architecture and "[3, 4, 23, 3]" in architecture
    assert "FPN with 256 channels" in architecture
    assert "bert, 12 layers, hidden size 768" in architecture and "frozen" in architecture
    assert "3 layers, hidden size 768, heads 8, FFN size 2048, reference layer form" in architecture
    assert "squared distance prior truncated at 2.0" in architecture
    assert "2.0 x BCE + 2.0 x Dice + 1.0 x SAL (reference SAL, temperature 10.0)" in architecture


def test_training_sections_from_trainer_state_and_training_args(trained_dir):
    metadata, body = split_card(model_card(trained_dir))
    training = cells(section(body, "Training"))
    assert "| Learning rate | 2e-05 |" in training
    assert "| Learning-rate schedule | linear |" in training
    assert "| Batch size per device | 8 |" in training
    assert "| Gradient accumulation steps | 4 |" in training
    assert "| Seed | 1234 |" in training
    assert "Max steps" not in training  # -1: not set
    assert "| Optimisation steps | 1200 |" in training
    assert "| Epochs completed | 3.00 |" in training
    assert "| Learning rate (first / peak / last logged) | 1e-05 / 2e-05 / 5e-07 |" in training
    assert "| Last logged training loss | 0.8000 |" in training
    assert "| Mean training loss | 1.2500 |" in training
    assert "| Training time (h:mm:ss) | 1:02:03 |" in training
    assert "| 1.00 | 400 | 1.2000 | 0.9500 | 31.2 |" in training
    assert "| 2.00 | 800 | 0.8000 | 0.7000 | 42.5 |" in training
    assert metadata["datasets"] == ["org/png-coco"]


def test_dataset_argument_overrides_training_args(trained_dir):
    metadata, _ = split_card(model_card(trained_dir, datasets=["org/other"]))
    assert metadata["datasets"] == ["org/other"]


def test_training_args_bin_is_never_read(checkpoint_dir):
    # A pickle that would fail loudly if unpickled: the card must ignore it.
    (checkpoint_dir / "training_args.bin").write_bytes(b"not a pickle")
    assert section(split_card(model_card(checkpoint_dir))[1], "Training") is None


def test_optional_sections_omitted_without_their_files(checkpoint_dir):
    _, body = split_card(model_card(checkpoint_dir))
    for title in ("Evaluation results", "Training"):
        assert section(body, title) is None
    for title in ("How to use", "Model architecture", "Citation"):
        assert section(body, title)


def test_usage_snippet(checkpoint_dir):
    _, body = split_card(model_card(checkpoint_dir, "org/epng"))
    usage = section(body, "How to use")
    code = re.search(r"```python\n(.*?)```", usage, flags=re.DOTALL).group(1)
    compile(code, "usage-snippet", "exec")  # the snippet is valid Python
    assert "from modeling_epng import EpngForPanopticNarrativeGrounding, EpngProcessor" in code
    assert 'EpngForPanopticNarrativeGrounding.from_pretrained("org/epng")' in code
    assert 'EpngProcessor.from_pretrained("org/epng")' in code
    assert "processor(images=image, text=text, phrases=phrases" in code
    assert "processor.post_process_grounding(outputs, target_sizes=" in code
    # Without a repo id the folder name stands in for it.
    assert 'from_pretrained("epng-png")' in model_card(checkpoint_dir)


def test_citations(checkpoint_dir):
    citation = section(split_card(model_card(checkpoint_dir))[1], "Citation")
    assert "Towards Real-Time Panoptic Narrative Grounding by an End-to-End Grounding Network" in citation
    assert "AAAI" in citation and "2023" in citation and "Wang, Haowei" in citation
    assert "title     = {Panoptic Narrative Grounding}" in citation
    assert "ICCV" in citation and "2021" in citation


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        model_card(tmp_path)


def test_invalid_json_is_a_clear_error(checkpoint_dir):
    (checkpoint_dir / "trainer_state.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(HubInputError, match="trainer_state.json is not valid JSON"):
        model_card(checkpoint_dir)


def test_write_model_card_round_trips_through_metadata_load(trained_dir):
    path = write_model_card(trained_dir, "org/epng", license="cc-by-4.0")
    assert path == trained_dir / "README.md"
    metadata = metadata_load(path)
    assert metadata["license"] == "cc-by-4.0"
    assert metadata["model-index"][0]["name"] == "org/epng"


def test_model_card_command(trained_dir, capsys):
    assert main(["model-card", str(trained_dir), "--repo_id", "org/epng", "--output_file", "-"]) == 0
    printed = capsys.readouterr().out
    assert printed == model_card(trained_dir, "org/epng")
    assert not (trained_dir / "README.md").exists()

    assert main(["model-card", str(trained_dir), "--dataset_name", "org/a", "--dataset_name", "org/b"]) == 0
    assert metadata_load(trained_dir / "README.md")["datasets"] == ["org/a", "org/b"]


def test_model_card_command_without_config(tmp_path, capsys):
    assert main(["model-card", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err
