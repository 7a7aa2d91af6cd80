"""Ground a narrative on an image from the command line, run as `epng-ground` or `python -m training.ground`.

    epng-ground photo.jpg "a woman holding an umbrella next to a red car" \\
        --model_name_or_path outputs/demo/model --output_file overlay.png --json_file result.json

Prints each phrase with its score (mean mask probability inside the mask) and area, and writes the overlay: the image
with every phrase's mask in its own colour beside the narrative with each phrase in the same colour. The phrases are
found automatically (spaCy noun phrases) unless `--phrases` names them. `--json_file` also gets every mask in COCO
run-length encoding.

The command starts the spaCy child process of the automatic phrases (`modeling_epng/background_parsing.py`, loaded by
path) before it imports torch, so that spaCy loads on a second core while the model loads here; this file imports
only the standard library at the top for that. Its spans are those the process would find (the same parser and
rules); should the child fail, the narrative is parsed here, which raises the usual error.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


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


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def start_phrase_parser(spacy_model: str | None = None):
    """A `BackgroundPhraseParser` started without importing the package (whose `__init__` imports transformers), or
    `None` where this process may use one core only (the child would take the core the model loads on)."""
    if _usable_cores() < 2:
        return None
    package = importlib.util.find_spec("modeling_epng")
    if package is None or not package.submodule_search_locations:
        return None
    path = Path(next(iter(package.submodule_search_locations)), "background_parsing.py")
    if not path.is_file():  # another `modeling_epng` first on the path: the pipeline parses in the process
        return None
    spec = importlib.util.spec_from_file_location("epng_background_parsing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BackgroundPhraseParser(spacy_model)


def encode_mask(mask) -> dict:
    """COCO run-length encoding of a boolean `(H, W)` mask, JSON-ready."""
    import numpy as np
    from pycocotools import mask as mask_utils

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
    phrase_parser=None,
):
    """The image (EXIF orientation applied, RGB) and the pipeline's result for one narrative. `phrase_parser` (from
    `start_phrase_parser`) parses the automatic phrases, if it can."""
    from PIL import Image, ImageOps
    from transformers import pipeline

    from modeling_epng.phrase_extraction import cache_phrase_spans
    from modeling_epng.pipeline_epng import TASK, EpngPanopticNarrativeGroundingPipeline

    image = ImageOps.exif_transpose(Image.open(image_file)).convert("RGB")
    grounder = pipeline(
        TASK,
        model=model_name_or_path,
        pipeline_class=EpngPanopticNarrativeGroundingPipeline,
        device=device or "cpu",
        optimize=optimize,
    )
    if phrase_parser is not None and not phrases and phrase_parser.wait_until_ready(phrase_parser.timeout):
        pending = phrase_parser.submit(narrative)
        spans = None if pending is None else pending.child_spans()
        if spans is not None:  # the processor's automatic phrases then take them from the cache
            cache_phrase_spans(narrative, spacy_model, spans)
    # Not the pipeline's own child, which would start loading spaCy only now: it is parsed above or here.
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
    phrase_parser = None if args.phrases else start_phrase_parser(args.spacy_model)
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
            phrase_parser=phrase_parser,
        )
    except ValueError as error:  # a phrase not in the narrative, a threshold out of range, ...
        parser.error(str(error))
    finally:
        if phrase_parser is not None:
            phrase_parser.close()
    import numpy as np

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

    from processing.visualization import draw_grounding

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
    """Console entry point: it ends the process once the outputs are written and flushed, without the interpreter's
    shutdown, which frees torch's and transformers' modules one by one (1.4 s on a 2-core AMD EPYC)."""
    run(argv)
    # The pipeline is garbage now, in reference cycles: collecting it frees an exported artefact's loader, which
    # removes the folder it unpacked the package to (the shutdown skipped below would have).
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
