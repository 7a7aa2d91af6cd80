"""Cold start of EPNG inference: process start -> first mask, in a fresh Python process per variant.

    python -m training.benchmark_cold_start --model_name_or_path DIR --variant artifact [--image_size 640]
    python -m training.benchmark_cold_start --model_name_or_path DIR --variant ground --threads 1 --runs 3

The child process imports the package, loads DIR with `from_pretrained`, prepares the variant (`eager`: nothing;
`fast_path`: `optimize_for_inference(use_artifact=False)`; `compiled`: the same with `compile=True`; `artifact`:
`optimize_for_inference` in the dtype of the exported artefact, which loads it) and thresholds the mask logits of
one random token-level input. It prints the wall-clock time of that first mask and of the end of each stage before
it, which the parent compares with the time it started the process: Python start-up, imports, loading and
compilation all count.

The `ground` variant is what a user runs: the `epng-ground` command (`python -m training.ground`) on a 640 x 480
photo-sized JPEG and a narrative of six noun phrases, found by spaCy, with its defaults (the fast path, and the
artefact when one next to the weights matches). It is timed from process start to exit, so its overlay drawn
and JSON written count too. `--variant ground` runs it `--runs` times and prints one line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("eager", "fast_path", "compiled", "artifact")
GROUND_VARIANT = "ground"
GROUND_NARRATIVE = "a woman holding a red umbrella stands next to a car, and a dog sits on the street near a bench"


def _run(command: list[str], threads: int) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads:  # the command line has no thread option; OpenMP's variable sets torch's intra-op threads
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.time()
    return started, subprocess.run(command, capture_output=True, text=True, env=env)


def _failure(variant: str, result: subprocess.CompletedProcess) -> dict:
    reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return {"variant": variant, "status": "failed", "reason": reason}


def ground_cold_start_seconds(model_dir: str, args) -> dict:
    """Time one `python -m training.ground` run on a synthetic photo; returns `{"variant", "status", "seconds"}`."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder, "photo.jpg")
        pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image, quality=90)
        command = [sys.executable, "-m", "training.ground", str(image), GROUND_NARRATIVE]
        command += ["--model_name_or_path", str(model_dir), "--output_file", str(Path(folder, "overlay.png"))]
        command += ["--json_file", str(Path(folder, "result.json"))]
        started, result = _run(command, args.threads)
        ended = time.time()
        if result.returncode:
            return _failure(GROUND_VARIANT, result)
        phrases = len(json.loads(Path(folder, "result.json").read_text())["phrases"])
    return {"variant": GROUND_VARIANT, "status": "ok", "seconds": ended - started, "phrases": phrases}


def cold_start_seconds(model_dir: str, variant: str, args) -> dict:
    """Run one child process; returns `{"variant", "status", "seconds" | "reason", "stages", "settings"}`, where
    `stages` maps each stage (imports, from_pretrained, optimize_for_inference, first_forward) to its seconds."""
    if variant == GROUND_VARIANT:
        return ground_cold_start_seconds(model_dir, args)
    command = [sys.executable, "-m", "training.benchmark_cold_start", "--model_name_or_path", str(model_dir)]
    command += ["--variant", variant, "--image_size", str(args.image_size), "--num_phrases", str(args.num_phrases)]
    command += ["--num_tokens", str(args.num_tokens), "--threads", str(args.threads or 0)]
    started, result = _run(command, 0)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        return _failure(variant, result)
    child = json.loads(lines[-1])
    # Each stage's duration, from the end of the one before (the first one from the process start).
    names, ends = zip(*child.pop("stage_times").items(), strict=True)
    stages = {name: end - begin for name, begin, end in zip(names, (started, *ends), ends, strict=False)}
    record = {"variant": variant, "status": "ok", "seconds": child["first_mask_time"] - started}
    return {**record, "stages": stages, **child}


def format_cold_start(record: dict) -> str:
    """One report line: the seconds, whether the artefact ran, and the stages."""
    line = f"  cold start (process start -> first mask), {record['variant']}: "
    if record["status"] != "ok":
        return line + record["reason"]
    line += f"{record['seconds']:.1f} s"
    if record["variant"] == "artifact":
        line += f" (artefact {(record.get('settings') or {}).get('artifact') or 'NOT used'})"
    if record["variant"] == GROUND_VARIANT:
        line += f" (to exit, {record['phrases']} phrases found and drawn)"
    stages = ", ".join(f"{name} {seconds:.2f}" for name, seconds in record.get("stages", {}).items())
    return line + (f"; {stages}" if stages else "")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--variant", choices=(*VARIANTS, GROUND_VARIANT), required=True)
    parser.add_argument("--image_size", type=int, default=640)
    parser.add_argument("--num_phrases", type=int, default=20)
    parser.add_argument("--num_tokens", type=int, default=250)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--runs", type=int, default=1, help="with --variant ground: how many commands to time")
    args = parser.parse_args(argv)
    if args.variant == GROUND_VARIANT:
        for _ in range(args.runs):
            print(format_cold_start(ground_cold_start_seconds(args.model_name_or_path, args)), flush=True)
        return
    stages = {}
    import torch

    from modeling_epng import EpngForPanopticNarrativeGrounding
    from modeling_epng.inference import artifact_dtype

    from .benchmark import make_inputs

    stages["imports"] = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = EpngForPanopticNarrativeGrounding.from_pretrained(args.model_name_or_path).eval()
    stages["from_pretrained"] = time.time()
    if args.variant == "artifact":
        model.optimize_for_inference(dtype=artifact_dtype(args.model_name_or_path))
    elif args.variant != "eager":
        model.optimize_for_inference(compile=args.variant == "compiled", use_artifact=False)
    stages["optimize_for_inference"] = time.time()
    inputs = make_inputs(model.config, 1, argparse.Namespace(channels_last=False, **vars(args)), True, model.device)
    with torch.inference_mode():
        masks = model(**inputs).mask_logits.sigmoid() > model.config.mask_threshold
    first_mask_time = stages["first_forward"] = time.time()
    settings = getattr(model, "inference_settings", None)
    print(
        json.dumps(
            {
                "first_mask_time": first_mask_time,
                "stage_times": stages,
                "mask_pixels": int(masks.sum()),
                "settings": settings and settings.to_dict(),
            }
        )
    )


if __name__ == "__main__":
    main()
