"""Helpers shared by the tests (importable because pytest puts tests/ on sys.path).

`check_model_conventions` runs, on any EPNG configuration, the checks transformers' `ModelTesterMixin` runs on one
(`tests/modeling_epng/test_transformers_common.py`), so that every ablation and reference variant meets them too.
"""

from dataclasses import fields

import torch

from modeling_epng import EpngForPanopticNarrativeGrounding, EpngOutput


def grounding_inputs(batch_size=2, height=64, width=96, num_phrases=3, seq_len=12, seed=0):
    """Model inputs of a tiny batch: sample 0 has 3 phrases (tokens 1-2, 4, 6-8), sample 1 one (token 2)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, 2000, (batch_size, seq_len), generator=generator)
    phrase_ids = torch.full((batch_size, seq_len), -1)
    phrase_ids[0, 1:3], phrase_ids[0, 4], phrase_ids[0, 6:9] = 0, 1, 2
    phrase_ids[1, 2] = 0
    phrase_mask = torch.zeros(batch_size, num_phrases, dtype=torch.bool)
    phrase_mask[0, :3] = True
    phrase_mask[1, 0] = True
    return {
        "pixel_values": torch.randn(batch_size, 3, height, width, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "phrase_ids": phrase_ids,
        "phrase_mask": phrase_mask,
    }


def random_mask_labels(inputs, seed=0):
    """Boolean (B, P, H, W) targets at the input resolution."""
    batch_size, _, height, width = inputs["pixel_values"].shape
    shape = (batch_size, inputs["phrase_mask"].shape[1], height, width)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5


def _comparable(config) -> dict:
    """The config as a dict without what loading adds: the source folder and the sub-configs' dtype."""
    as_dict = config.to_dict()
    as_dict.pop("_name_or_path", None)
    for sub_config in config.sub_configs:
        as_dict[sub_config].pop("dtype", None)
    return as_dict


def check_model_conventions(model: EpngForPanopticNarrativeGrounding, inputs: dict, tmp_path) -> None:
    """Assert the transformers conventions on `model` (put in eval mode) with `inputs` (a batch of two or more):

    * `save_pretrained` / `from_pretrained` give the same outputs and config;
    * the `return_dict=False` tuple is the output's non-`None` fields in declaration order (so with `sal_weight=0`
      it has no `sal_loss` entry, and every later entry moves up by one);
    * `attentions` and `hidden_states` have one entry per communicator layer (plus the input tokens) and the
      documented shapes;
    * every sample of the batch gets the outputs it gets alone;
    * in training mode, every trainable parameter receives a finite, non-zero gradient.
    """
    config = model.config
    model.eval()
    labelled = {**inputs, "mask_labels": random_mask_labels(inputs)}
    batch_size, _, height, width = inputs["pixel_values"].shape
    num_tokens = (height // 16) * (width // 16)

    with torch.no_grad():
        output = model(**labelled, output_attentions=True, output_hidden_states=True)
        as_tuple = model(**labelled, output_attentions=True, output_hidden_states=True, return_dict=False)

    present = [field.name for field in fields(EpngOutput) if getattr(output, field.name) is not None]
    assert list(output.keys()) == present
    assert ("sal_loss" in present) == (config.sal_weight > 0)
    assert len(as_tuple) == len(present)
    for name, value in zip(present, as_tuple, strict=True):
        torch.testing.assert_close(value, output[name], msg=name)

    assert len(output.attentions) == config.num_communicator_layers
    for attention in output.attentions:
        assert attention.shape == (batch_size, config.num_attention_heads, num_tokens, num_tokens)
        torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))
    assert len(output.hidden_states) == config.num_communicator_layers + 1
    assert all(state.shape == (batch_size, num_tokens, config.hidden_size) for state in output.hidden_states)

    model.save_pretrained(tmp_path)
    loaded = EpngForPanopticNarrativeGrounding.from_pretrained(tmp_path).eval()
    assert _comparable(loaded.config) == _comparable(config)
    with torch.no_grad():
        plain, reloaded = model(**labelled), loaded(**labelled)
    assert torch.equal(reloaded.mask_logits, plain.mask_logits) and torch.equal(reloaded.loss, plain.loss)

    with torch.no_grad():
        for index in range(batch_size):
            single = model(**{key: value[index : index + 1] for key, value in inputs.items()})
            torch.testing.assert_close(single.mask_logits[0], output.mask_logits[index], atol=1e-5, rtol=1e-4)

    model.train()
    model.zero_grad()
    model(**labelled).loss.backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, f"{name} gets no gradient"
            assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    model.eval()
