"""Command line of the `hub` package: share EPNG checkpoints and PNG datasets on the Hugging Face Hub.

    python -m hub push-model DIR --repo_id ORG/NAME [--private] [--revision BRANCH] [--commit_message MSG]
                                 [--token T] [--dry_run] [--license LICENSE] [--dataset_name ID ...] [--keep_readme]
                                 [--no_remote_code]
    python -m hub push-dataset DIR --repo_id ORG/NAME [--private] [--revision BRANCH] [--commit_message MSG]
                                   [--token T] [--dry_run]
    python -m hub push-space --repo_id ORG/NAME --model_name_or_path DIR_OR_ID [--examples_dir DIR] [--num_examples 4]
                             [--title TITLE] [--output_dir DIR] [--private] [--revision BRANCH] [--commit_message MSG]
                             [--token T] [--dry_run]
    python -m hub model-card DIR [--repo_id ORG/NAME] [--license LICENSE] [--dataset_name ID ...] [--output_file FILE]

Exit status: 0 on success, 2 for a folder or argument that cannot be pushed, 1 when the Hub refuses or fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cards import DEFAULT_LICENSE, HubInputError, model_card
from .push import push_dataset, push_model
from .space import DEFAULT_TITLE, push_space


def _add_push_arguments(parser: argparse.ArgumentParser, kind: str | None) -> None:
    if kind is not None:
        parser.add_argument("folder", type=Path, help=f"local {kind} folder to upload")
    parser.add_argument("--repo_id", required=True, help="target repository on the Hub, ORG/NAME")
    parser.add_argument(
        "--private",
        action="store_true",
        default=None,
        help="create the repository private (ignored if it already exists; default: the Hub's default visibility)",
    )
    parser.add_argument("--revision", help="branch to push to, created from main if missing (default: main)")
    parser.add_argument("--commit_message", help="commit message (default: a short 'Upload ...' message)")
    parser.add_argument(
        "--token", help="Hub token with write access (default: the HF_TOKEN variable, else the saved `hf auth login`)"
    )
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="print the target and the exact files that would be uploaded; write nothing, contact nothing",
    )


def _add_card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--license", default=DEFAULT_LICENSE, help=f"license of the weights in the card (default: {DEFAULT_LICENSE})"
    )
    parser.add_argument(
        "--dataset_name",
        dest="datasets",
        action="append",
        metavar="ID",
        help="Hub id of a training dataset (repeatable; default: dataset_name of training_args.json)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `python -m hub`."""
    parser = argparse.ArgumentParser(
        prog="python -m hub", description="Share EPNG checkpoints and PNG datasets on the Hugging Face Hub."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    push_model_parser = commands.add_parser(
        "push-model",
        help="upload an EPNG checkpoint folder, with a generated model card",
        description="Check an EPNG checkpoint folder (config, safetensors weights, processor, tokenizer), write its "
        "README.md model card, and upload it to a Hub model repository. Only what a model repository holds is "
        "uploaded (weights, configs, processor and tokenizer files, card, EPNG code, evaluation results and plot); "
        "everything else, and any link pointing out of the folder, is skipped and listed by --dry_run.",
    )
    _add_push_arguments(push_model_parser, "checkpoint")
    _add_card_arguments(push_model_parser)
    push_model_parser.add_argument(
        "--keep_readme",
        action="store_true",
        help="upload the folder's README.md as it is instead of regenerating the model card",
    )
    push_model_parser.add_argument(
        "--no_remote_code",
        action="store_true",
        help="do not add the EPNG code files + auto_map that let users load the model with trust_remote_code=True",
    )

    push_dataset_parser = commands.add_parser(
        "push-dataset",
        help="upload a converted PNG dataset folder (parquet files + README.md)",
        description="Upload the parquet files and the README.md dataset card of a folder written by "
        "processing/png_dataset.py to a Hub dataset repository. The card must exist and declare `configs`.",
    )
    _add_push_arguments(push_dataset_parser, "dataset")

    push_space_parser = commands.add_parser(
        "push-space",
        help="publish the web app as a Gradio Space over a model folder or Hub model id",
        description="Stage the EPNG web app (app.py, its code, requirements.txt, a README.md with the Space front "
        "matter, optional examples, and the model when it is a local folder) and upload it to a Hub Space.",
    )
    push_space_parser.add_argument(
        "--model_name_or_path", required=True, help="EPNG checkpoint folder (uploaded with the Space) or Hub model id"
    )
    _add_push_arguments(push_space_parser, None)
    push_space_parser.add_argument(
        "--examples_dir", help="examples.json folder or PNG-format benchmark root, e.g. outputs/demo/png_synthetic"
    )
    push_space_parser.add_argument("--num_examples", type=int, default=4, help="examples copied (default: 4)")
    push_space_parser.add_argument("--title", default=DEFAULT_TITLE, help="title of the Space")
    push_space_parser.add_argument(
        "--license", default=DEFAULT_LICENSE, help=f"license in the Space card (default: {DEFAULT_LICENSE})"
    )
    push_space_parser.add_argument("--output_dir", help="stage the Space in this new folder and keep it")

    card_parser = commands.add_parser(
        "model-card",
        help="write the model card of a checkpoint folder without uploading anything",
        description="Render the README.md model card of an EPNG checkpoint folder (to preview it before a push).",
    )
    card_parser.add_argument("folder", type=Path, help="checkpoint folder")
    card_parser.add_argument("--repo_id", help="Hub id used as model name and in the usage snippet (default: folder)")
    _add_card_arguments(card_parser)
    card_parser.add_argument("--output_file", help="file to write, '-' for standard output (default: FOLDER/README.md)")
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.command == "model-card":
        card = model_card(args.folder, args.repo_id, datasets=args.datasets, license=args.license)
        if args.output_file == "-":
            print(card, end="")
            return
        output = Path(args.output_file) if args.output_file else args.folder / "README.md"
        output.write_text(card, encoding="utf-8")
        print(f"Model card written to {output}")
        return

    push_arguments = {
        "private": args.private,
        "revision": args.revision,
        "commit_message": args.commit_message,
        "token": args.token,
        "dry_run": args.dry_run,
    }
    if args.command == "push-model":
        upload = push_model(
            args.folder,
            args.repo_id,
            license=args.license,
            datasets=args.datasets,
            write_card=not args.keep_readme,
            remote_code=not args.no_remote_code,
            **push_arguments,
        )
    elif args.command == "push-space":
        upload = push_space(
            args.model_name_or_path,
            args.repo_id,
            examples_dir=args.examples_dir,
            num_examples=args.num_examples,
            title=args.title,
            license=args.license,
            output_dir=args.output_dir,
            **push_arguments,
        )
    else:
        upload = push_dataset(args.folder, args.repo_id, **push_arguments)

    if args.dry_run:
        print("Dry run: nothing written, the Hub was not contacted.")
        print(upload.describe())
    else:
        print(f"Pushed {len(upload.files)} files to {upload.repo_type} {upload.repo_id}@{upload.revision}")
        print(f"Commit: {upload.commit_url}")
        if upload.repo_type == "space":
            print(f"Space: https://huggingface.co/spaces/{upload.repo_id}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 success, 2 bad folder or argument, 1 Hub failure)."""
    args = build_parser().parse_args(argv)
    try:
        _run(args)
    except (HubInputError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # The Hub client's failures: HTTP errors (HfHubHTTPError), no token (LocalTokenNotFoundError), offline mode, and
    # requests it rejects before sending (ValueError). The message never contains the token.
    except (OSError, ValueError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: Hub request failed: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
