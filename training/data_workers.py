"""Default numbers of DataLoader workers of the training and evaluation scripts.

From the input-pipeline benchmark (`python -m training.benchmark --device cpu --threads 1 --skip_inference
--processor`): at 640 px with COCO-like 640 x 480 JPEGs of about 150 KB, one worker with a core of its own prepares
about 48 samples/s with the panoptic mask targets (training) and about 76 without (inference). The GPU targets,
100 images/s for training and 500 for inference, so need 3 and 7 workers per GPU process.
"""

from __future__ import annotations

import os

TRAINING_WORKERS = 4  # 3 feed 100 images/s, one spare for slower images
INFERENCE_WORKERS = 8  # 7 feed 500 images/s


def default_num_workers(wanted: int) -> int:
    """`wanted`, but no more than the cores this process may use, less one for the training/evaluation loop."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(wanted, cores - 1))
