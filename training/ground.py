"""Ground a narrative on an image from the command line, run as `epng-ground` or `python -m training.ground`.

    epng-ground photo.jpg "a woman holding an umbrella next to a red car" \\
        --model_name_or_path outputs/demo/model --output_file overlay.png --json_file result.json

Prints each phrase with its score (mean mask probability inside the mask) and area, and writes the overlay: the image
with every phrase's mask in its own colour beside the narrative with each phrase in the same colour. The phrases are
found automatically (spaCy noun phrases) unless `--phrases` names them. `--json_file` also gets every mask in COCO
run-length encoding.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from transformers import pipeline

from modeling_epng.pipeline_epng import TASK, EpngPanopticNarrativeGroundingPipeline
from processing.visualization import draw_grounding


def _write_atomically(path: Path, write) -> None:
    """`write(temporary_path)` next to `path`, then rename: an interrupted run never leaves a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(descriptor)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def encode_mask(mask: np.ndarray) -> dict:
    """COCO run-length encoding of a boolean `(H, W)` mask, JSON-ready."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(side) for side in rle["size"]], "counts": rle["counts"].decode("ascii")}


def ground(
    image_file: str,
    narrative: str,
    model_name_or_path: str,
    phrases: Sequence[str] | None = None,
    threshold: float | None = None,
    device: str | None = None,
    spacy_model: str | None = None,
    optimize: bool = True,
) -> tuple[Image.Image, list[dict]]:
    """The image (EXIF orientation applied, RGB) and the pipeline's result for one narrative."""
    image = ImageOps.exif_transpose(Image.open(image_file)).convert("RGB")
    grounder = pipeline(
        TASK,
        model=model_name_or_path,
        pipeline_class=EpngPanopticNarrativeGroundingPipeline,
        device=device or "cpu",
        optimize=optimize,
    )
    # One narrative: a child process to parse it would still be loading spaCy when it is parsed here.
    call_options = {"threshold": threshold, "spacy_model": spacy_model, "parse_in_background": False}
    results = grounder(image, narrative, phrases=list(phrases) if phrases else "auto", **call_options)
    return image, results


def run(argv: Sequence[str] | None = None) -> list[dict]:
    """The command: parse `argv`, ground, print, write; returns the JSON records of the phrases."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="image file (JPEG, PNG, ...)")
    parser.add_argument("narrative", help="the narrative to ground")
    parser.add_argument("--model_name_or_path", required=True, help="model folder (or Hub id) with its processor")
    parser.add_argument("--output_file", default="overlay.png", help="where to write the overlay image")
    parser.add_argument("--json_file", default=None, help="also write the phrases, scores, areas and RLE masks here")
    parser.add_argument("--phrases", nargs="+", default=None, help="phrases to ground (default: found automatically)")
    parser.add_argument("--threshold", type=float, default=None, help="mask threshold (default: the model config's)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: cpu)")
    parser.add_argument("--spacy_model", default=None, help="installed spaCy English pipeline for automatic phrases")
    parser.add_argument("--no_optimize", action="store_true", help="run the model without optimize_for_inference()")
    args = parser.parse_args(argv)
    if not Path(args.image).is_file():
        parser.error(f"image {args.image!r} is not a file")
    if not args.narrative.strip():
        parser.error("the narrative is empty")

    try:
        image, results = ground(
            args.image,
            args.narrative,
            args.model_name_or_path,
            phrases=args.phrases,
            threshold=args.threshold,
            device=args.device,
            spacy_model=args.spacy_model,
            optimize=not args.no_optimize,
        )
    except ValueError as error:  # a phrase not in the narrative, a threshold out of range, ...
        parser.error(str(error))
    masks = np.zeros((len(results), image.height, image.width), dtype=bool)
    for index, result in enumerate(results):
        masks[index] = np.asarray(result["mask"]) > 0
    if not results:
        print("no groundable noun phrase found in the narrative")
    else:
        width = max(len("phrase"), *(len(result["phrase"]) for result in results))
        print(f"{'phrase':<{width}}  score  area (px)  area (%)")
    records = []
    for result, mask in zip(results, masks, strict=True):
        area = int(mask.sum())
        print(f"{result['phrase']:<{width}}  {result['score']:.3f}  {area:>9}  {100 * area / mask.size:>8.1f}")
        records.append(
            {key: result[key] for key in ("phrase", "start", "end", "score")}
            | {"area": area, "mask": encode_mask(mask)}
        )

    overlay = draw_grounding(image, args.narrative, [(result["start"], result["end"]) for result in results], masks)
    _write_atomically(Path(args.output_file), overlay.save)
    print(f"overlay: {args.output_file}")
    if args.json_file:
        content = {"image": args.image, "narrative": args.narrative, "size": [image.height, image.width]}
        content["phrases"] = records
        _write_atomically(Path(args.json_file), lambda path: path.write_text(json.dumps(content, indent=2) + "\n"))
        print(f"json: {args.json_file}")
    return records


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (returns None: a console script exits with what `main` returns)."""
    run(argv)


if __name__ == "__main__":
    main()
