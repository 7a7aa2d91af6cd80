"""Model card (README.md) of a trained EPNG checkpoint folder.

[`model_card`] reads only JSON files of the folder; every section but the header, the usage snippet and the citations
is optional and left out when its source file is absent:

- `config.json` (required): the architecture summary (backbone, text encoder, communicator, losses).
- `eval_results.json`, else `all_results.json` (both written by `Trainer.save_metrics`): the Average Recall of the
  evaluation, keys `eval_ar_all`, `eval_ar_thing`, `eval_ar_stuff`, `eval_ar_singular`, `eval_ar_plural` in percent and
  optionally `eval_num_phrases` (number of grounded phrases evaluated). Rendered in the layout of the paper's table
  (All | Thing | Stuff | Single | Plural) and as `model-index` metadata.
- `training_args.json`: the run's arguments as JSON (`TrainingArguments.to_dict()`, plus the script's own arguments):
  learning rate, schedule, optimizer, batch size, epochs, seed, precision, and `dataset_name` (Hub id of the training
  dataset, used for the `datasets` metadata when no dataset is passed). `training_args.bin` is never read: it is a
  pickle, and unpickling runs arbitrary code.
- `trainer_state.json` (written by `Trainer`): `global_step`, `epoch` and `log_history` (learning rates, training
  loss, runtime, and the evaluations logged during training).

The YAML header is rendered by `huggingface_hub.ModelCardData`, so it always parses and follows the Hub's schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from processing.citations import EPNG_CITATION, PNG_CITATION
from training.markdown import markdown_table
from training.metrics import AR_SUBSETS

CONFIG_FILE = "config.json"
EVAL_RESULTS_FILES = ("eval_results.json", "all_results.json")
TRAINING_ARGS_FILE = "training_args.json"
TRAINER_STATE_FILE = "trainer_state.json"

DEFAULT_LICENSE = "apache-2.0"
DEFAULT_TAGS = ("panoptic-narrative-grounding", "epng", "image-segmentation", "visual-grounding", "vision-language")
PIPELINE_TAG = "image-segmentation"

EVAL_PREFIX = "eval_"

# Used in the model-index metadata when the evaluation dataset has no Hub id.
BENCHMARK_TYPE = "panoptic-narrative-grounding"
BENCHMARK_NAME = "Panoptic Narrative Grounding (COCO)"

# (key in training_args.json, row title), in display order.
TRAINING_ARG_ROWS = (
    ("learning_rate", "Learning rate"),
    ("lr_scheduler_type", "Learning-rate schedule"),
    ("warmup_ratio", "Warm-up ratio"),
    ("warmup_steps", "Warm-up steps"),
    ("optim", "Optimizer"),
    ("weight_decay", "Weight decay"),
    ("per_device_train_batch_size", "Batch size per device"),
    ("gradient_accumulation_steps", "Gradient accumulation steps"),
    ("num_train_epochs", "Epochs"),
    ("max_steps", "Max steps"),
    ("seed", "Seed"),
    ("bf16", "bf16"),
    ("fp16", "fp16"),
)

EPNG_PAPER_URL = "https://arxiv.org/abs/2301.03160"
PNG_PAPER_URL = "https://arxiv.org/abs/2109.04988"

CITATIONS = f"```bibtex\n{EPNG_CITATION}\n\n{PNG_CITATION}\n```"

USAGE_TEMPLATE = """```python
import torch
from PIL import Image

from modeling_epng import EpngForPanopticNarrativeGrounding, EpngProcessor

model = EpngForPanopticNarrativeGrounding.from_pretrained("{model_id}").eval()
processor = EpngProcessor.from_pretrained("{model_id}")

image = Image.open("image.jpg").convert("RGB")
text = "A man in a red shirt walks two dogs on the grass."
# The phrases to ground, as (start, end) character spans of the narrative.
phrases = [(text.index(phrase), text.index(phrase) + len(phrase)) for phrase in ("A man", "two dogs", "the grass")]

inputs = processor(images=image, text=text, phrases=phrases, return_tensors="pt", return_original_sizes=True)
# (height, width) after EXIF orientation, which is what the masks must match.
original_sizes = inputs.pop("original_sizes")
with torch.no_grad():
    outputs = model(**inputs)
# One binary mask per phrase, at the original image size.
masks = processor.post_process_grounding(outputs, target_sizes=original_sizes)[0]["masks"]
```"""


class HubInputError(ValueError):
    """A folder or an argument that cannot be turned into a card or pushed to the Hub (the message says why)."""


def read_json(path: Path) -> dict[str, Any] | None:
    """Return the JSON object stored at `path`, or `None` when the file does not exist."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise HubInputError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise HubInputError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def read_png_metrics(model_dir: str | Path) -> tuple[dict[str, float], int | None] | None:
    """Average Recall of the checkpoint, read from `eval_results.json`, else `all_results.json`.

    Returns:
        `(metrics, num_phrases)`: `metrics` maps the subsets of [`AR_SUBSETS`] found in the file to AR in percent
        (`"all"` is always present), `num_phrases` is `eval_num_phrases` or `None`. `None` when no file holds
        `eval_ar_all`.
    """
    for file_name in EVAL_RESULTS_FILES:
        results = read_json(Path(model_dir) / file_name)
        if results is None or f"{EVAL_PREFIX}ar_all" not in results:
            continue
        metrics = {
            subset.name: float(results[f"{EVAL_PREFIX}ar_{subset.name}"])
            for subset in AR_SUBSETS
            if results.get(f"{EVAL_PREFIX}ar_{subset.name}") is not None
        }
        num_phrases = results.get(f"{EVAL_PREFIX}num_phrases")
        return metrics, (int(num_phrases) if num_phrases is not None else None)
    return None


def _resnet_name(backbone: dict[str, Any]) -> str | None:
    """Name such as "ResNet-101" of a ResNet config: 3 layers per bottleneck block, 2 per basic block, + stem + head."""
    depths = backbone.get("depths")
    if backbone.get("model_type") != "resnet" or not depths:
        return None
    layers_per_block = 2 if backbone.get("layer_type") == "basic" else 3
    return f"ResNet-{sum(depths) * layers_per_block + 2}"


def _architecture_rows(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(component, description) rows summarising `config.json`; fields absent from the file are left out."""
    rows = []
    backbone = config.get("backbone_config") or {}
    if backbone:
        parts = [_resnet_name(backbone) or backbone.get("model_type", "unknown")]
        if backbone.get("depths"):
            parts.append(f"stage depths {backbone['depths']}")
        if "fpn_channels" in config:
            parts.append(f"FPN with {config['fpn_channels']} channels (P3, P4, P5 fused at stride 16)")
        rows.append(("Visual encoder", ", ".join(parts)))
    text = config.get("text_config") or {}
    if text:
        parts = [text.get("_name_or_path") or text.get("model_type", "unknown")]
        if "num_hidden_layers" in text:
            parts.append(f"{text['num_hidden_layers']} layers")
        if "hidden_size" in text:
            parts.append(f"hidden size {text['hidden_size']}")
        if "text_pooled_layers" in config:
            parts.append(f"token features = mean of the last {config['text_pooled_layers']} hidden states")
        if config.get("freeze_text_encoder"):
            parts.append("frozen")
        rows.append(("Text encoder", ", ".join(parts)))
    if "num_communicator_layers" in config:
        parts = [f"{config['num_communicator_layers']} layers"]
        for key, label in (("hidden_size", "hidden size"), ("num_attention_heads", "heads"), ("ffn_dim", "FFN size")):
            if key in config:
                parts.append(f"{label} {config[key]}")
        if "communicator_layer_form" in config:
            parts.append(f"{config['communicator_layer_form']} layer form")
        rows.append(("Multi-modal communicator", ", ".join(parts)))
    attention = config.get("self_attention_type", "lpa")
    if attention == "lpa" and "lpa_distance" in config:
        truncation = config.get("lpa_truncation")
        rows.append(
            (
                "Pixel self-attention",
                f"Locality-Perceptive Attention, {config['lpa_distance']} distance prior"
                + (f" truncated at {truncation}" if truncation is not None else ""),
            )
        )
    elif "self_attention_type" in config:
        rows.append(("Pixel self-attention", attention))
    weights = [config.get(key) for key in ("bce_weight", "dice_weight", "sal_weight")]
    if all(weight is not None for weight in weights):
        losses = f"{weights[0]} x BCE + {weights[1]} x Dice + {weights[2]} x SAL"
        if "sal_variant" in config:
            losses += f" ({config['sal_variant']} SAL"
            losses += f", temperature {config['sal_temperature']})" if "sal_temperature" in config else ")"
        rows.append(("Losses", losses))
    return rows


def _format_number(value: Any) -> str:
    """Compact text for a hyper-parameter or log value (scientific notation for learning-rate-sized floats)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4g}"


def _format_duration(seconds: float) -> str:
    hours, remainder = divmod(round(seconds), 3600)
    return f"{hours}:{remainder // 60:02d}:{remainder % 60:02d}"


def _training_args_rows(training_args: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, title in TRAINING_ARG_ROWS:
        value = training_args.get(key)
        # `max_steps <= 0` means "not set" in TrainingArguments (the epoch count rules instead).
        if value is None or (key == "max_steps" and value <= 0):
            continue
        rows.append((title, _format_number(value)))
    return rows


def _trainer_state_rows(state: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    if "global_step" in state:
        rows.append(("Optimisation steps", str(state["global_step"])))
    if "epoch" in state:
        rows.append(("Epochs completed", f"{state['epoch']:.2f}"))
    if state.get("train_batch_size") is not None:
        rows.append(("Batch size per step (Trainer)", str(state["train_batch_size"])))
    history = state.get("log_history") or []
    learning_rates = [entry["learning_rate"] for entry in history if "learning_rate" in entry]
    if learning_rates:
        first_peak_last = (learning_rates[0], max(learning_rates), learning_rates[-1])
        rows.append(
            (
                "Learning rate (first / peak / last logged)",
                " / ".join(_format_number(float(lr)) for lr in first_peak_last),
            )
        )
    losses = [entry["loss"] for entry in history if "loss" in entry]
    if losses:
        rows.append(("Last logged training loss", f"{losses[-1]:.4f}"))
    summary = next((entry for entry in reversed(history) if "train_runtime" in entry), None)
    if summary is not None:
        if "train_loss" in summary:
            rows.append(("Mean training loss", f"{summary['train_loss']:.4f}"))
        rows.append(("Training time (h:mm:ss)", _format_duration(summary["train_runtime"])))
    return rows


def _evaluation_history_table(state: dict[str, Any]) -> str | None:
    """Markdown table of the evaluations logged during training (with the last training loss logged before each)."""
    history = state.get("log_history") or []
    rows = []
    last_loss = None
    for entry in history:
        if "loss" in entry:
            last_loss = entry["loss"]
        if f"{EVAL_PREFIX}ar_all" not in entry:
            continue
        rows.append(
            (
                f"{entry['epoch']:.2f}" if "epoch" in entry else "–",
                str(entry.get("step", "–")),
                f"{last_loss:.4f}" if last_loss is not None else "–",
                f"{entry[f'{EVAL_PREFIX}loss']:.4f}" if f"{EVAL_PREFIX}loss" in entry else "–",
                f"{entry[f'{EVAL_PREFIX}ar_all']:.1f}",
            )
        )
    if not rows:
        return None
    headers = ("Epoch", "Step", "Training loss", "Validation loss", "AR All (%)")
    return markdown_table(headers, rows, right_aligned=[True] * len(headers))


def _metrics_table(metrics: dict[str, float]) -> str:
    values = [f"{metrics[subset.name]:.1f}" if subset.name in metrics else "–" for subset in AR_SUBSETS]
    return markdown_table([subset.title for subset in AR_SUBSETS], [values], right_aligned=[True] * len(values))


def _eval_results(metrics: dict[str, float], datasets: list[str] | None) -> list[EvalResult]:
    """One `model-index` entry per AR subset, all on the same task and dataset."""
    dataset_type = datasets[0] if datasets else BENCHMARK_TYPE
    return [
        EvalResult(
            task_type=PIPELINE_TAG,
            task_name="Panoptic Narrative Grounding",
            dataset_type=dataset_type,
            dataset_name=BENCHMARK_NAME,
            metric_type="average_recall",
            metric_name=f"AR {subset.title} (%)",
            metric_config=subset.name,
            metric_value=round(metrics[subset.name], 2),
        )
        for subset in AR_SUBSETS
        if subset.name in metrics
    ]


def _as_list(value: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    return values or None


def model_card(
    model_dir: str | Path,
    repo_id: str | None = None,
    *,
    datasets: str | list[str] | None = None,
    license: str = DEFAULT_LICENSE,
    tags: list[str] | None = None,
) -> str:
    """Render the README.md (YAML metadata + markdown) of a trained EPNG checkpoint folder.

    Args:
        model_dir (`str` or `Path`):
            Folder written by `save_pretrained` / `Trainer` (see the module docstring for the files read).
        repo_id (`str`, *optional*):
            Hub id the card is written for: used as the model name and in the usage snippet. Defaults to the folder
            name.
        datasets (`str` or `list[str]`, *optional*):
            Hub ids of the training datasets. Defaults to `dataset_name` of `training_args.json`, if any.
        license (`str`, *optional*, defaults to `"apache-2.0"`):
            License identifier of the weights.
        tags (`list[str]`, *optional*):
            Tags added to [`DEFAULT_TAGS`].

    Returns:
        `str`: the card, starting with its `---` YAML block.

    Raises:
        `FileNotFoundError`: `model_dir` has no `config.json`.
        [`HubInputError`]: a JSON file of the folder cannot be parsed.
    """
    model_dir = Path(model_dir)
    config = read_json(model_dir / CONFIG_FILE)
    if config is None:
        raise FileNotFoundError(
            f"{model_dir} has no {CONFIG_FILE}: a model card describes a checkpoint saved with "
            "`model.save_pretrained(...)` (or a Trainer output folder)"
        )
    model_name = repo_id or model_dir.resolve().name
    training_args = read_json(model_dir / TRAINING_ARGS_FILE)
    trainer_state = read_json(model_dir / TRAINER_STATE_FILE)
    datasets = _as_list(datasets) or _as_list((training_args or {}).get("dataset_name"))
    evaluation = read_png_metrics(model_dir)

    card_data = ModelCardData(
        library_name="transformers",
        license=license,
        pipeline_tag=PIPELINE_TAG,
        tags=[*DEFAULT_TAGS, *(tags or [])],
        datasets=datasets,
        model_name=model_name if evaluation else None,
        eval_results=_eval_results(evaluation[0], datasets) if evaluation else None,
    )

    trained_on = (
        " It was trained on "
        + ", ".join(f"[{name}](https://huggingface.co/datasets/{name})" for name in datasets)
        + "."
        if datasets
        else ""
    )
    introduction = (
        f"An [EPNG]({EPNG_PAPER_URL}) model (End-to-End Panoptic Narrative Grounding network) for "
        f"[Panoptic Narrative Grounding]({PNG_PAPER_URL}): given an image and a narrative in which noun phrases are "
        "marked as character spans, it predicts one binary mask per phrase, for things and stuff alike, in a single "
        "forward pass without mask proposals. Each phrase embedding acts as a dynamic 1x1 kernel over pixel features "
        f"refined by Locality-Perceptive Attention and cross attention.{trained_on}"
    )
    sections = [f"# {model_name}", introduction]
    if evaluation:
        metrics, num_phrases = evaluation
        counted = f" over {num_phrases:,} grounded phrases" if num_phrases is not None else ""
        description = (
            f"Average Recall (AR, %) of the predicted masks{counted}, overall and per phrase subset "
            "(the layout of the EPNG paper's table 1)."
        )
        sections += ["## Evaluation results", description, _metrics_table(metrics)]
    installation = (
        "The model code lives in the `epng` package (modules `modeling_epng` and `processing`): install it from its "
        "source tree with `pip install .`."
    )
    sections += ["## How to use", installation, USAGE_TEMPLATE.format(model_id=model_name)]
    architecture = _architecture_rows(config)
    if architecture:
        sections += ["## Model architecture", markdown_table(("Component", "Configuration"), architecture)]
    training_rows = _training_args_rows(training_args) if training_args else []
    state_rows = _trainer_state_rows(trainer_state) if trainer_state else []
    evaluation_history = _evaluation_history_table(trainer_state) if trainer_state else None
    if training_rows or state_rows or evaluation_history:
        sections.append("## Training")
        if training_rows:
            sections += ["### Hyper-parameters", markdown_table(("Hyper-parameter", "Value"), training_rows)]
        if state_rows:
            sections += ["### Training run", markdown_table(("Quantity", "Value"), state_rows)]
        if evaluation_history:
            sections += ["### Evaluations during training", evaluation_history]
    sections += ["## Citation", CITATIONS]

    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    # Parsing the result back through ModelCard checks that the metadata is well-formed before anything is written.
    return str(ModelCard(content))


def write_model_card(model_dir: str | Path, repo_id: str | None = None, **card_kwargs) -> Path:
    """Write [`model_card`] to `model_dir/README.md` (replacing any previous card) and return its path."""
    path = Path(model_dir) / "README.md"
    path.write_text(model_card(model_dir, repo_id, **card_kwargs), encoding="utf-8")
    return path


__all__ = ["HubInputError", "model_card", "read_png_metrics", "write_model_card"]
