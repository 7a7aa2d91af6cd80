"""Cold start of EPNG inference: process start -> first mask, in a fresh Python process per variant.

    python -m training.benchmark_cold_start --model_name_or_path DIR --variant artifact [--image_size 640]

The child process imports the package, loads DIR with `from_pretrained`, prepares the variant (`eager`: nothing;
`fast_path`: `optimize_for_inference(use_artifact=False)`; `compiled`: the same with `compile=True`; `artifact`:
`optimize_for_inference()`, which loads the exported artefact) and thresholds the mask logits of one random
token-level input. It prints the wall-clock time of that first mask, which the parent compares with the time it
started the process: Python start-up, imports, loading and compilation all count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = ("eager", "fast_path", "compiled", "artifact")


def cold_start_seconds(model_dir: str, variant: str, args) -> dict:
    """Run one child process; returns `{"variant", "status", "seconds" | "reason", "settings"}`."""
    command = [sys.executable, "-m", "training.benchmark_cold_start", "--model_name_or_path", str(model_dir)]
    command += ["--variant", variant, "--image_size", str(args.image_size), "--num_phrases", str(args.num_phrases)]
    command += ["--num_tokens", str(args.num_tokens), "--threads", str(args.threads or 0)]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"variant": variant, "status": "failed", "reason": reason}
    child = json.loads(lines[-1])
    return {"variant": variant, "status": "ok", "seconds": child["first_mask_time"] - started, **child}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--image_size", type=int, default=640)
    parser.add_argument("--num_phrases", type=int, default=20)
    parser.add_argument("--num_tokens", type=int, default=250)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    import torch

    from modeling_epng import EpngForPanopticNarrativeGrounding

    from .benchmark import make_inputs

    if args.threads:
        torch.set_num_threads(args.threads)
    model = EpngForPanopticNarrativeGrounding.from_pretrained(args.model_name_or_path).eval()
    if args.variant != "eager":
        model.optimize_for_inference(compile=args.variant == "compiled", use_artifact=args.variant == "artifact")
    inputs = make_inputs(model.config, 1, argparse.Namespace(channels_last=False, **vars(args)), True, model.device)
    with torch.inference_mode():
        masks = model(**inputs).mask_logits.sigmoid() > model.config.mask_threshold
    first_mask_time = time.time()
    settings = getattr(model, "inference_settings", None)
    print(
        json.dumps(
            {
                "first_mask_time": first_mask_time,
                "mask_pixels": int(masks.sum()),
                "settings": settings and settings.to_dict(),
            }
        )
    )


if __name__ == "__main__":
    main()
