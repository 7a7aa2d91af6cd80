"""The paper's and the reference code's epoch-step learning-rate schedules."""

import pytest
import torch

from training.schedule import EpochStepFactor, epoch_step_scheduler


def learning_rates(schedule, epochs, steps_per_epoch=3, base=1e-5, scale=1.0):
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = epoch_step_scheduler(optimizer, steps_per_epoch, schedule, scale)
    rates = []
    for _ in range(epochs * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates[::steps_per_epoch]


def test_paper_schedule_halves_after_five_epochs_and_fixes_at_5e7_after_ten():
    rates = learning_rates("paper", 14)
    assert rates[:5] == pytest.approx([1e-5] * 5)
    assert rates[5:10] == pytest.approx([5e-6] * 5)
    assert rates[10:] == pytest.approx([5e-7] * 4)


def test_reference_schedule_steps():
    rates = learning_rates("reference", 22)
    assert rates[4] == pytest.approx(1e-5) and rates[5] == pytest.approx(5e-6)
    assert rates[10] == pytest.approx(2e-6) and rates[19] == pytest.approx(2e-6)
    assert rates[20] == pytest.approx(5e-7)


def test_epoch_scale_stretches_the_boundaries():
    rates = learning_rates("paper", 6, scale=0.5)
    assert rates[2] == pytest.approx(1e-5) and rates[3] == pytest.approx(5e-6) and rates[5] == pytest.approx(5e-7)


def test_scheduler_state_round_trips_mid_run():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-5)
    scheduler = epoch_step_scheduler(optimizer, 2, "paper")
    for _ in range(11):
        optimizer.step()
        scheduler.step()
    restored_optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-5)
    restored = epoch_step_scheduler(restored_optimizer, 2, "paper")
    restored.load_state_dict(scheduler.state_dict())
    restored_optimizer.load_state_dict(optimizer.state_dict())
    assert restored.get_last_lr() == pytest.approx(scheduler.get_last_lr())
    assert restored.get_last_lr() == pytest.approx([5e-6])


def test_bad_schedule_name_is_rejected():
    with pytest.raises(ValueError, match="lr schedule"):
        EpochStepFactor(10, "cosine")
