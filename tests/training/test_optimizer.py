"""`--optimizer adam_l2`: the authors' torch.optim.Adam with L2 weight decay in the gradient."""

import pytest
import torch

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding
from training.run_png import EpngTrainer, EpngTrainingArguments, main


def _optimizer(tmp_path, **kwargs):
    model = EpngForPanopticNarrativeGrounding(EpngConfig.tiny())
    args = EpngTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, learning_rate=1e-3, **kwargs)
    trainer = EpngTrainer(model=model, args=args, processor=None, eval_collator=None)
    return model, trainer.create_optimizer()


def test_adam_l2_is_plain_adam_over_the_trainable_parameters(tmp_path):
    model, optimizer = _optimizer(tmp_path, optimizer="adam_l2")
    assert type(optimizer) is torch.optim.Adam
    (group,) = optimizer.param_groups
    assert group["weight_decay"] == 0.01 and group["lr"] == 1e-3
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in group["params"]} == trainable
    assert len(trainable) < len(list(model.parameters()))  # the frozen text encoder is left out


def test_adam_l2_decays_through_the_gradient_unlike_adamw(tmp_path):
    # With no loss gradient, Adam's first step normalises the L2 gradient 0.01 * p to a step of size lr, whatever p
    # is; AdamW's decoupled decay moves p by lr * 0.01 * p instead.
    for optimizer_name, extra, expected in (
        ("adam_l2", {}, 1.0 - 1e-3),
        ("trainer", {"weight_decay": 0.01}, 1.0 - 1e-3 * 0.01),
    ):
        model, optimizer = _optimizer(tmp_path, optimizer=optimizer_name, **extra)
        parameter = model.phrase_encoder.text_projection.weight
        with torch.no_grad():
            parameter.fill_(1.0)
        for p in model.parameters():
            p.grad = torch.zeros_like(p) if p.requires_grad else None
        optimizer.step()
        assert parameter[0, 0].item() == pytest.approx(expected, rel=1e-5), optimizer_name


def test_adam_l2_rejects_the_decoupled_weight_decay_flag(tmp_path):
    with pytest.raises(ValueError, match="adam_l2_weight_decay"):
        main(["--output_dir", str(tmp_path), "--optimizer", "adam_l2", "--weight_decay", "0.1"])
    with pytest.raises(ValueError, match="--optimizer"):
        main(["--output_dir", str(tmp_path), "--optimizer", "sgd"])
