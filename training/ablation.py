"""The paper's ablations on the synthetic benchmarks: attention type and SAL form, same budget for every row.

    python -m training.ablation --seeds 0 1 2 --datasets easy hard --output_dir outputs/ablation

Rows (each trained from scratch on every dataset with every seed, then scored with Average Recall):

- attention, all with the paper's SAL: MHSA / MHSA + sine / LPA Euclidean / LPA squared;
- SAL, all with LPA Euclidean: off / paper / reference / normalised one-way / normalised bidirectional.

"LPA Euclidean" and "SAL paper" are the same configuration (the paper's model), trained once and shown in both
groups; it is the baseline row. A cell is marked when its mean differs from the baseline's by more than twice the
pooled standard deviation of the two rows. Every run uses the demo's small model (`training.demo.demo_config`) with
the same data, budget and optimiser; only the config fields of the row change. The frozen text encoder's phrase
features are computed once per narrative and shared by all runs (the text encoder is frozen, as in the paper,
which precomputes them too).

Results go to `<output_dir>/ablation.json` after every run (atomically); a restarted command skips the runs already
there, so an interrupted ablation loses at most the run in progress. `<output_dir>/ablation.md` holds the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from modeling_epng import EpngForPanopticNarrativeGrounding
from processing.collate import EpngCollator
from training.demo import demo_config, demo_training_arguments, prepare_data
from training.evaluation import GroundingEvalCollator
from training.markdown import markdown_table
from training.metrics import AR_SUBSETS
from training.offline_text_encoder import offline_text_encoder_path
from training.run_png import EpngTrainer, build_processor

BASELINE = "LPA Euclidean"
# (group, row label, EpngConfig overrides); rows with equal overrides are trained once.
ROWS = [
    ("attention", "MHSA", {"self_attention_type": "mhsa"}),
    ("attention", "MHSA + sine", {"self_attention_type": "mhsa_sine"}),
    ("attention", BASELINE, {}),
    ("attention", "LPA squared", {"lpa_distance": "squared"}),
    ("SAL", "SAL off", {"sal_weight": 0.0}),
    ("SAL", "SAL paper", {}),
    ("SAL", "SAL reference", {"sal_variant": "reference"}),
    ("SAL", "SAL normalised one-way", {"sal_variant": "reference", "sal_normalize": True}),
    ("SAL", "SAL normalised bidirectional", {"sal_variant": "paper", "sal_normalize": True}),
]
SUBSETS = [subset.name for subset in AR_SUBSETS]


def run_key(overrides: dict) -> str:
    """Name of a configuration in the JSON (rows sharing overrides share runs)."""
    return json.dumps(overrides, sort_keys=True)


class PhraseFeatureCollator:
    """Wraps a collator: replaces the tokens of each batch by `phrase_features` from the frozen text encoder,
    computed once per distinct narrative (keyed by its tokens and phrase ids) and kept for later batches.

    Args:
        collator: an `EpngCollator` (or a `GroundingEvalCollator`) whose batches carry `input_ids`,
            `attention_mask`, `phrase_ids` and `phrase_mask`.
        feature_model: an `EpngForPanopticNarrativeGrounding` whose pretrained text encoder computes the features.
        cache: shared dict from narrative key to `(num_phrases, D_text)` features.
    """

    def __init__(self, collator, feature_model: EpngForPanopticNarrativeGrounding, cache: dict):
        self.collator = collator
        self.phrase_encoder = feature_model.phrase_encoder
        self.cache = cache

    @torch.no_grad()
    def __call__(self, examples):
        batch = self.collator(examples)
        input_ids, attention_mask = batch.pop("input_ids"), batch.pop("attention_mask")
        phrase_ids, phrase_mask = batch.pop("phrase_ids"), batch["phrase_mask"]
        keys = []
        for row in range(len(input_ids)):
            real = attention_mask[row].bool()
            keys.append((tuple(input_ids[row][real].tolist()), tuple(phrase_ids[row][real].tolist())))
        missing = [row for row, key in enumerate(keys) if key not in self.cache]
        if missing:
            features = self.phrase_encoder.pool_phrases(
                input_ids[missing], attention_mask[missing], phrase_ids[missing], phrase_mask.shape[1]
            )
            for index, row in enumerate(missing):
                self.cache[keys[row]] = features[index, : int(phrase_mask[row].sum())].clone()
        dimension = self.phrase_encoder.text_projection.in_features
        padded = torch.zeros(len(keys), phrase_mask.shape[1], dimension)
        for row, key in enumerate(keys):
            padded[row, : len(self.cache[key])] = self.cache[key]
        batch["phrase_features"] = padded
        return batch


def train_and_evaluate(overrides, seed, dataset, text_encoder_path, feature_model, cache, args, run_dir) -> dict:
    """One run: a fresh demo-size model with `overrides`, trained on `dataset["train"]`, AR on its validation."""
    torch.manual_seed(seed)
    model = EpngForPanopticNarrativeGrounding(demo_config(text_encoder_path, **overrides))
    tokenizer = AutoTokenizer.from_pretrained(text_encoder_path)
    processor = build_processor(tokenizer, args.image_size, model.config.mask_threshold)
    training_args = demo_training_arguments(
        run_dir, args.epochs, args.batch_size, args.learning_rate, seed, logging_steps=10**6, disable_tqdm=True
    )
    trainer = EpngTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset["validation"],
        data_collator=PhraseFeatureCollator(EpngCollator(processor, model_inputs_only=True), feature_model, cache),
        processor=processor,
        eval_collator=PhraseFeatureCollator(GroundingEvalCollator(EpngCollator(processor)), feature_model, cache),
    )
    start = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - start
    metrics = trainer.evaluate()
    return {name: metrics[f"eval_ar_{name}"] for name in SUBSETS} | {
        "num_phrases": metrics["eval_num_phrases"],
        "train_seconds": seconds,
    }


def summarize(results: dict, datasets: list[str], seeds: list[int]) -> dict:
    """Per dataset and row: mean and std (ddof=1) over the seeds run so far of every AR subset, and whether it
    differs from the baseline by more than twice the pooled std (only with at least two seeds in both rows)."""
    summary = {}
    for dataset in datasets:
        runs = results.get(dataset, {})
        per_row = {}
        for group, label, overrides in ROWS:
            seed_runs = [runs[run_key(overrides)][str(s)] for s in seeds if str(s) in runs.get(run_key(overrides), {})]
            if not seed_runs:
                continue
            values = {name: np.array([run[name] for run in seed_runs]) for name in SUBSETS}
            per_row[label] = {
                "group": group,
                "overrides": overrides,
                "num_seeds": len(seed_runs),
                "mean": {name: float(v.mean()) for name, v in values.items()},
                "std": {name: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for name, v in values.items()},
            }
        base = per_row.get(BASELINE)
        for label, row in per_row.items():
            comparable = base is not None and label not in (BASELINE, "SAL paper")
            comparable = comparable and min(row["num_seeds"], base["num_seeds"]) > 1
            row["differs"] = {}
            for name in SUBSETS:
                pooled = np.sqrt((row["std"][name] ** 2 + base["std"][name] ** 2) / 2) if comparable else 0.0
                row["differs"][name] = bool(comparable and abs(row["mean"][name] - base["mean"][name]) > 2 * pooled)
        summary[dataset] = per_row
    return summary


def markdown(summary: dict, budget: dict) -> str:
    """The ablation tables: one per dataset, mean ± std, `*` where a row differs from the baseline."""
    parts = [
        f"Average Recall (%), mean ± std over seeds {budget['seeds']}; `*`: differs from the {BASELINE} row "
        "(the paper's model, = SAL paper) by more than twice the pooled std."
    ]
    for dataset, per_row in summary.items():
        body = []
        for label, row in per_row.items():
            cells = []
            for name in SUBSETS:
                mark = "*" if row["differs"][name] else ""
                cells.append(f"{row['mean'][name]:.1f} ± {row['std'][name]:.1f}{mark}")
            seeds = "" if row["num_seeds"] == len(budget["seeds"]) else f" (n={row['num_seeds']})"
            body.append([f"{row['group']}: {label}{seeds}", *cells])
        parts.append(
            f"**{dataset}**\n\n"
            + markdown_table(
                ["Row", *(subset.title for subset in AR_SUBSETS)], body, right_aligned=[False] + [True] * len(SUBSETS)
            )
        )
    return "\n\n".join(parts) + "\n"


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", choices=["easy", "hard"], default=["easy", "hard"])
    parser.add_argument("--train", type=int, default=128, help="synthetic training narratives per dataset")
    parser.add_argument("--val", type=int, default=48, help="synthetic validation narratives per dataset")
    parser.add_argument("--image_size", type=int, default=128, help="square model input size (multiple of 32)")
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--rows", nargs="+", choices=[label for _, label, _ in ROWS], help="run only these rows (default: all)"
    )
    args = parser.parse_args(argv)
    text_encoder_path = offline_text_encoder_path()  # before anything is written: a missing package fails first

    torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    budget = {
        "train": args.train,
        "val": args.val,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seeds": args.seeds,
    }
    json_path = output_dir / "ablation.json"
    state = json.loads(json_path.read_text()) if json_path.exists() else {"budget": budget, "results": {}}
    if {k: v for k, v in state["budget"].items() if k != "seeds"} != {k: v for k, v in budget.items() if k != "seeds"}:
        raise ValueError(
            f"{json_path} holds runs of another budget ({state['budget']}); pass another --output_dir or the same "
            "budget"
        )
    state["budget"]["seeds"] = sorted(set(state["budget"]["seeds"]) | set(args.seeds))

    feature_model = EpngForPanopticNarrativeGrounding(demo_config(text_encoder_path)).eval()
    feature_model.load_text_encoder(text_encoder_path)
    selected = [overrides for _, label, overrides in ROWS if args.rows is None or label in args.rows]
    configurations = list({run_key(overrides): overrides for overrides in selected}.values())
    data = {
        name: prepare_data(output_dir / name, args.train, args.val, seed=0, difficulty=name) for name in args.datasets
    }
    caches = {name: {} for name in args.datasets}
    # Seeds outermost: an ablation stopped early still has whole tables over fewer seeds.
    for seed in args.seeds:
        for dataset_name in args.datasets:
            for overrides in configurations:
                runs = state["results"].setdefault(dataset_name, {}).setdefault(run_key(overrides), {})
                if str(seed) in runs:
                    continue
                run_dir = output_dir / "runs" / dataset_name / f"{run_key(overrides)}-seed{seed}"
                started = time.monotonic()
                runs[str(seed)] = train_and_evaluate(
                    overrides,
                    seed,
                    data[dataset_name],
                    text_encoder_path,
                    feature_model,
                    caches[dataset_name],
                    args,
                    run_dir,
                )
                print(
                    f"[{time.strftime('%H:%M:%S')}] {dataset_name} {run_key(overrides)} seed {seed}: "
                    f"AR {runs[str(seed)]['all']:.1f} ({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
                write_atomically(json_path, json.dumps(state, indent=2))
                summary = summarize(state["results"], args.datasets, args.seeds)
                write_atomically(output_dir / "ablation.md", markdown(summary, budget))
    summary = summarize(state["results"], args.datasets, args.seeds)
    write_atomically(output_dir / "ablation.md", markdown(summary, budget))
    print(markdown(summary, budget))
    return {"summary": summary, "state": state}


def main(argv=None) -> None:
    """Console entry point: `run` without its result (a console script exits with what it returns; a dict is 1)."""
    run(argv)


if __name__ == "__main__":
    main()
