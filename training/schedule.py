"""The EPNG learning-rate recipe as a real (resumable) LR scheduler.

Paper: 1e-5, halved every 5 epochs, fixed at 5e-7 after 10 epochs -> factors 1, 0.5 for epochs 0-4, 5-9, then 0.05.
Reference code: epochs 0-4: 1e-5, 5-9: 5e-6, 10-19: 2e-6, >= 20: 5e-7 -> factors 1, 0.5, 0.2, 0.05.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

# (first epoch, factor of the base learning rate) of each step, for a base rate of 1e-5.
LR_STEPS = {
    "paper": ((0, 1.0), (5, 0.5), (10, 0.05)),
    "reference": ((0, 1.0), (5, 0.5), (10, 0.2), (20, 0.05)),
}


class EpochStepFactor:
    """Callable `step -> factor` for `LambdaLR`: the factor of the epoch that `step` falls in.

    A class rather than a closure so that `LambdaLR.state_dict()` saves it and a resumed run continues exactly.

    Args:
        steps_per_epoch: optimizer steps in one epoch.
        schedule: `"paper"` or `"reference"` (see `LR_STEPS`).
        epochs_per_step_scale: stretches (> 1) or shrinks (< 1) the epoch boundaries, for short demo runs.
    """

    def __init__(self, steps_per_epoch: int, schedule: str = "paper", epochs_per_step_scale: float = 1.0):
        if schedule not in LR_STEPS:
            raise ValueError(f"lr schedule must be one of {sorted(LR_STEPS)}, got {schedule!r}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch = steps_per_epoch
        self.schedule = schedule
        self.epochs_per_step_scale = epochs_per_step_scale

    def __call__(self, step: int) -> float:
        epoch = step / self.steps_per_epoch
        factor = 1.0
        for first_epoch, step_factor in LR_STEPS[self.schedule]:
            if epoch >= first_epoch * self.epochs_per_step_scale:
                factor = step_factor
        return factor


def epoch_step_scheduler(
    optimizer: Optimizer, steps_per_epoch: int, schedule: str = "paper", epochs_per_step_scale: float = 1.0
) -> LambdaLR:
    """`LambdaLR` following the paper's (or the reference code's) epoch steps."""
    return LambdaLR(optimizer, EpochStepFactor(steps_per_epoch, schedule, epochs_per_step_scale))
