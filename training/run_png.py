"""Train and evaluate EPNG with 🤗 Trainer, on one process or many.

    python training/run_png.py --dataset_name DIR --output_dir OUT --do_train --do_eval ...
    accelerate launch [--num_processes N] training/run_png.py ...
    accelerate launch --multi_gpu --num_processes 2 training/run_png.py --use_cpu true ...   (N CPU processes)

Data come from `--dataset_name` (a folder written by `python -m processing.png_dataset`, or a Hub dataset id) or
from `--png_root` (the official benchmark files, converted first into `<output_dir>/png_dataset`). The model comes
from `--model_name_or_path` (a trained EPNG) or is built from `--config_name` (default: the paper config) with the
pretrained text encoder `--text_encoder_name_or_path`. Defaults follow the paper's recipe: Adam (AdamW with weight
decay 0), learning rate 1e-5 with the paper's epoch steps (`--lr_schedule reference` for the authors' steps), 640 px.

The authors' code differs in two more training details. Its optimiser is `torch.optim.Adam` with weight_decay 0.01,
an L2 term added to the gradient (so scaled by Adam's per-parameter step size), not AdamW's decoupled decay:
`--optimizer adam_l2` reproduces it. It also applies an exponential moving average of the weights once per epoch,
which resets the weights close to their initial values after the first epoch; that is a defect, and nothing here
reproduces it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, Trainer, TrainingArguments, set_seed

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding, EpngImageProcessor, EpngProcessor
from processing.collate import EpngCollator
from training.checkpoints import find_resume_checkpoint, resume_point
from training.data_workers import TRAINING_WORKERS, default_num_workers
from training.evaluation import GroundingEvalCollator, evaluate_grounding, write_evaluation_artifacts
from training.metrics import AR_SUBSETS
from training.run_checks import check_config_overrides, check_training_length, select_split
from training.schedule import LR_STEPS, epoch_step_scheduler
from training.streaming import EpochStream, streamed_splits, streaming_dataloader

logger = logging.getLogger("run_png")
OPTIMIZERS = ("trainer", "adam_l2")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A trained EPNG folder or Hub id (model + processor)."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "EpngConfig folder/json for a new model; default: the paper config."}
    )
    text_encoder_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained text encoder (e.g. bert-base-uncased) loaded into a new model; its config "
            "replaces the config's text_config and its tokenizer is used unless --tokenizer_name is given."
        },
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer folder or Hub id."})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated key=value overrides of EpngConfig fields, e.g. 'sal_weight=0,lpa_distance=squared'."
        },
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "Converted PNG dataset: a local folder or a Hub dataset id."}
    )
    png_root: str | None = field(
        default=None, metadata={"help": "Official PNG files; converted into <output_dir>/png_dataset first."}
    )
    train_split: str = field(default="train")
    eval_split: str = field(default="validation")
    image_size: int = field(default=640, metadata={"help": "Square model input size (multiple of 32)."})
    max_text_length: int = field(default=300, metadata={"help": "Token budget per narrative (reference: 300)."})
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream --dataset_name (local parquet folder or Hub id) instead of loading it whole."},
    )
    shuffle_buffer_size: int = field(default=1000, metadata={"help": "Shuffle buffer of the streamed training split."})
    num_train_examples: int | None = field(
        default=None,
        metadata={"help": "Size of the streamed training split when its dataset card does not state it."},
    )


@dataclass
class EpngTrainingArguments(TrainingArguments):
    learning_rate: float = field(default=1e-5, metadata={"help": "Base learning rate (paper: 1e-5)."})
    lr_schedule: str = field(
        default="paper",
        metadata={
            "help": "'paper' (1e-5, halved after 5 epochs, 5e-7 after 10), 'reference' (the authors' steps), "
            "or 'trainer' to use --lr_scheduler_type."
        },
    )
    lr_schedule_epoch_scale: float = field(
        default=1.0, metadata={"help": "Multiplies the schedule's epoch boundaries (e.g. 0.2 for short runs)."}
    )
    dataloader_num_workers: int = field(
        default_factory=lambda: default_num_workers(TRAINING_WORKERS),
        metadata={"help": "Data-loading processes per GPU process (default: 4, at most the usable cores less one)."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator needs the raw example columns."}
    )
    eval_image_size: int | None = field(
        default=None, metadata={"help": "Square input size for evaluation (reference evaluation: 1216)."}
    )
    optimizer: str = field(
        default="trainer",
        metadata={
            "help": "'trainer': the Trainer's --optim (AdamW; --weight_decay is decoupled, 0 by default). 'adam_l2': "
            "the authors' torch.optim.Adam, whose weight decay (--adam_l2_weight_decay) is L2 added to the gradient."
        },
    )
    adam_l2_weight_decay: float = field(
        default=0.01, metadata={"help": "L2 coefficient of --optimizer adam_l2 (the authors' code: 0.01)."}
    )


class EpngTrainer(Trainer):
    """`Trainer` with the paper's epoch-step LR schedule and PNG Average Recall as evaluation."""

    def __init__(self, *args, processor: EpngProcessor, eval_collator: GroundingEvalCollator, **kwargs):
        super().__init__(*args, **kwargs)
        self.processor = processor
        self.eval_collator = eval_collator

    def create_optimizer(self, model=None):
        if self.args.optimizer == "trainer" or self.optimizer is not None:
            return super().create_optimizer(model)
        parameters = [p for p in (self.model if model is None else model).parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            parameters,
            lr=self.args.learning_rate,
            betas=(self.args.adam_beta1, self.args.adam_beta2),
            eps=self.args.adam_epsilon,
            weight_decay=self.args.adam_l2_weight_decay,
        )
        return self.optimizer

    def get_train_dataloader(self) -> DataLoader:
        if isinstance(self.train_dataset, EpochStream):
            return streaming_dataloader(self.train_dataset, self._train_batch_size, self.data_collator, self.args)
        return super().get_train_dataloader()

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.args.lr_schedule == "trainer":
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            if isinstance(self.train_dataset, EpochStream):
                steps_per_epoch = self.train_dataset.steps_per_epoch
            else:
                steps_per_epoch = max(len(self.get_train_dataloader()) // self.args.gradient_accumulation_steps, 1)
            self.lr_scheduler = epoch_step_scheduler(
                self.optimizer if optimizer is None else optimizer,
                steps_per_epoch,
                self.args.lr_schedule,
                self.args.lr_schedule_epoch_scale,
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Average Recall (all/thing/stuff/singular/plural, percent) at the original resolution; writes the
        per-phrase IoUs (CSV) and recall-IoU curves (PNG) to the output dir."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, datasets.IterableDataset):  # already split between the processes
            dataloader = streaming_dataloader(
                dataset, self.args.per_device_eval_batch_size, self.eval_collator, self.args
            )
        else:
            dataloader = DataLoader(
                dataset,
                batch_size=self.args.per_device_eval_batch_size,
                collate_fn=self.eval_collator,
                num_workers=self.args.dataloader_num_workers,
            )
            dataloader = self.accelerator.prepare(dataloader)
        accumulator, loss = evaluate_grounding(
            self.model, dataloader, self.processor.post_process_image_grounding, self.accelerator
        )
        table = accumulator.table()
        metrics = {f"{metric_key_prefix}_ar_{subset.name}": table[subset.name] for subset in AR_SUBSETS}
        metrics[f"{metric_key_prefix}_num_phrases"] = table["num_all"]
        if loss is not None:
            metrics[f"{metric_key_prefix}_loss"] = loss
        if self.is_world_process_zero():
            write_evaluation_artifacts(accumulator, self.args.output_dir, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def parse_overrides(text: str | None) -> dict:
    """'a=1,b=x' -> {'a': 1, 'b': 'x'} with JSON-parsed values where possible."""
    overrides = {}
    for item in filter(None, (text or "").split(",")):
        if "=" not in item:
            raise ValueError(f"--config_overrides item {item!r} is not key=value")
        key, value = (part.strip() for part in item.split("=", 1))
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def build_model_and_processor(model_args: ModelArguments, data_args: DataArguments):
    """A trained model + its processor, or a new model from a config and a pretrained text encoder."""
    overrides = parse_overrides(model_args.config_overrides)
    check_config_overrides(overrides)
    if model_args.model_name_or_path:
        # Rebuilt rather than passed to from_pretrained, which sets the overrides on the config unchecked.
        config = EpngConfig.from_pretrained(model_args.model_name_or_path)
        config = EpngConfig.from_dict({**config.to_dict(), **overrides})
        model = EpngForPanopticNarrativeGrounding.from_pretrained(model_args.model_name_or_path, config=config)
        tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
    else:
        config_kwargs = EpngConfig.from_pretrained(model_args.config_name).to_dict() if model_args.config_name else {}
        if model_args.text_encoder_name_or_path:
            config_kwargs["text_config"] = AutoConfig.from_pretrained(model_args.text_encoder_name_or_path).to_dict()
        config_kwargs.update(overrides)
        model = EpngForPanopticNarrativeGrounding(EpngConfig(**config_kwargs))
        if model_args.text_encoder_name_or_path:
            model.load_text_encoder(model_args.text_encoder_name_or_path)
        tokenizer_source = model_args.tokenizer_name or model_args.text_encoder_name_or_path
    if tokenizer_source is None:
        raise ValueError("A new model needs --text_encoder_name_or_path or --tokenizer_name for its tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    return model, build_processor(tokenizer, data_args.image_size, model.config.mask_threshold)


def build_processor(tokenizer, image_size: int, mask_threshold: float) -> EpngProcessor:
    """An `EpngProcessor` resizing to `image_size` x `image_size` with the given fast tokenizer, whose
    post-processing thresholds at `mask_threshold` (the model's `config.mask_threshold`)."""
    size = {"height": image_size, "width": image_size}
    return EpngProcessor(
        image_processor=EpngImageProcessor(size=size), tokenizer=tokenizer, mask_threshold=mask_threshold
    )


def load_png_dataset(data_args: DataArguments, output_dir: str) -> datasets.DatasetDict:
    """The converted dataset of `--dataset_name`, or `--png_root` converted into `<output_dir>/png_dataset`."""
    if bool(data_args.dataset_name) == bool(data_args.png_root):
        raise ValueError("Pass exactly one of --dataset_name and --png_root")
    if data_args.png_root:
        from processing.png_dataset import convert

        converted = Path(output_dir) / "png_dataset"
        if not converted.exists():
            convert(data_args.png_root, converted)
        return datasets.load_dataset(str(converted))
    return datasets.load_dataset(data_args.dataset_name)


def run(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, EpngTrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if training_args.lr_schedule not in (*LR_STEPS, "trainer"):
        raise ValueError(f"--lr_schedule must be one of {[*LR_STEPS, 'trainer']}, got {training_args.lr_schedule!r}")
    if training_args.optimizer not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {list(OPTIMIZERS)}, got {training_args.optimizer!r}")
    if training_args.optimizer == "adam_l2" and training_args.weight_decay:
        raise ValueError(
            "--weight_decay is AdamW's decoupled decay; --optimizer adam_l2 takes its L2 from --adam_l2_weight_decay"
        )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(
        "Distributed: %s, Num processes: %d",
        training_args.distributed_state.distributed_type,
        training_args.world_size,
    )
    if training_args.do_train:
        check_training_length(training_args.num_train_epochs, training_args.max_steps)
    set_seed(training_args.seed)

    evaluates = training_args.do_eval or training_args.eval_strategy != "no"
    resume = None
    if training_args.do_train:
        if training_args.resume_from_checkpoint is not None:
            resume = resume_point(training_args.resume_from_checkpoint)
        else:
            resume = find_resume_checkpoint(training_args.output_dir)  # continue an interrupted run
    if data_args.streaming:
        resume_step = resume.step if resume is not None else 0
        train_dataset, eval_dataset = streamed_splits(data_args, training_args, evaluates, resume_step)
    else:
        with training_args.main_process_first(desc="dataset conversion"):
            dataset = load_png_dataset(data_args, training_args.output_dir)
        source = data_args.dataset_name or data_args.png_root
        train_dataset = (
            select_split(dataset, data_args.train_split, "--train_split", source) if training_args.do_train else None
        )
        eval_dataset = select_split(dataset, data_args.eval_split, "--eval_split", source) if evaluates else None
        if train_dataset is not None and data_args.max_train_samples:
            train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
        if eval_dataset is not None and data_args.max_eval_samples:
            eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
    model, processor = build_model_and_processor(model_args, data_args)

    eval_processor = processor
    if training_args.eval_image_size:
        eval_processor = build_processor(processor.tokenizer, training_args.eval_image_size, processor.mask_threshold)
    trainer = EpngTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=EpngCollator(processor, model_inputs_only=True, max_length=data_args.max_text_length),
        processor=processor,
        eval_collator=GroundingEvalCollator(EpngCollator(eval_processor, max_length=data_args.max_text_length)),
    )

    results = {}
    if training_args.do_train:
        if resume is not None:
            logger.info("Resuming from %s at step %d", resume.path.name, resume.step)
        train_result = trainer.train(resume_from_checkpoint=str(resume.path) if resume is not None else None)
        trainer.save_model()
        if trainer.is_world_process_zero():
            processor.save_pretrained(training_args.output_dir)
            # JSON twin of training_args.bin, read by the model card (hub/cards.py) without unpickling.
            arguments = {**training_args.to_dict(), "dataset_name": data_args.dataset_name or data_args.png_root}
            Path(training_args.output_dir, "training_args.json").write_text(json.dumps(arguments, indent=2))
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        results.update(train_result.metrics)
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(metrics)
    if training_args.push_to_hub and trainer.is_world_process_zero():
        trainer.push_to_hub(dataset_name=data_args.dataset_name or "png")
    return results


def main(argv: list[str] | None = None) -> None:
    """Console entry point: `run` without its result (a console script exits with what it returns; a dict is 1)."""
    run(argv)


if __name__ == "__main__":
    main()
