"""EpngConfig defaults, validation and Auto registration."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModel

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding

PAPER_PARAMETERS = 76.5e6


def test_defaults_are_the_paper_config():
    config = EpngConfig()
    assert config.backbone_config.model_type == "resnet"
    assert list(config.backbone_config.depths) == [3, 4, 23, 3]
    assert config.text_config.model_type == "bert" and config.text_config.hidden_size == 768
    assert (config.fpn_channels, config.hidden_size, config.num_communicator_layers) == (256, 768, 3)
    assert (config.num_attention_heads, config.ffn_dim, config.dropout) == (8, 2048, 0.1)
    assert (config.bce_weight, config.dice_weight, config.sal_weight) == (2.0, 2.0, 1.0)
    assert config.lpa_distance == "euclidean" and config.lpa_truncation == 2.0
    assert config.sal_variant == "paper" and config.mask_threshold == 0.5
    assert not config.sal_normalize and config.sal_temperature == 10.0 and config.sal_direction_reduction == "sum"
    assert config.attention_dropout == 0.1  # the authors' code; the paper is silent
    assert config.freeze_text_encoder and config.backbone_trainable_stages == 2


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"hidden_size": 50}, "hidden_size"),
        ({"fpn_channels": 20}, "hidden_size"),
        ({"lpa_distance": "manhattan"}, "lpa_distance"),
        ({"sal_variant": "one-way"}, "sal_variant"),
        ({"self_attention_type": "conv"}, "self_attention_type"),
        ({"communicator_layer_form": "pre-norm"}, "communicator_layer_form"),
        ({"dropout": 1.5}, "dropout"),
        ({"sal_temperature": 0.0}, "sal_temperature"),
        ({"sal_normalize": True, "sal_temperature": 10.0}, "sal_temperature"),
        ({"sal_direction_reduction": "max"}, "sal_direction_reduction"),
        ({"dice_weight": -1.0}, "dice_weight"),
        ({"mask_threshold": 1.0}, "mask_threshold"),
        ({"text_pooled_layers": 7}, "text_pooled_layers"),
        ({"backbone_trainable_stages": -3}, "backbone_trainable_stages"),
    ],
)
def test_invalid_config_raises_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        EpngConfig.tiny(**overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sal_weight": "abc"}, "EpngConfig.sal_weight must be of type float | int, got 'abc' (str)"),
        ({"hidden_size": "big"}, "EpngConfig.hidden_size must be of type int, got 'big' (str)"),
        ({"upsample_align_corners": "yes"}, "EpngConfig.upsample_align_corners must be of type bool"),
        ({"num_attention_heads": 2.0}, "EpngConfig.num_attention_heads must be of type int, got 2.0 (float)"),
        ({"lpa_distance": 2}, "EpngConfig.lpa_distance must be of type str"),
    ],
)
def test_wrong_field_type_names_the_field_and_the_expected_type(tmp_path, overrides, message):
    with pytest.raises(TypeError) as raised:
        EpngConfig.tiny(**overrides)
    assert str(raised.value).startswith(message)
    # the same check guards a hand-edited config.json
    EpngConfig.tiny().save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **overrides}))
    with pytest.raises(TypeError) as raised:
        EpngConfig.from_pretrained(tmp_path)
    assert str(raised.value).startswith(message)


def test_an_int_is_accepted_for_a_float_field():
    assert EpngConfig.tiny(layer_norm_eps=1, mask_threshold=0.5).layer_norm_eps == 1


def test_sal_temperature_default_follows_normalisation_and_is_saved(tmp_path):
    assert EpngConfig.tiny(sal_normalize=True).sal_temperature == 0.07
    assert EpngConfig.tiny(sal_normalize=True, sal_temperature=0.2).sal_temperature == 0.2
    EpngConfig.tiny(sal_normalize=True).save_pretrained(tmp_path)
    loaded = EpngConfig.from_pretrained(tmp_path)
    assert loaded.sal_normalize and loaded.sal_temperature == 0.07


def test_config_round_trip_and_auto_config(tmp_path):
    config = EpngConfig.tiny(lpa_distance="squared", sal_variant="reference")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, EpngConfig)
    assert loaded.lpa_distance == "squared" and loaded.sal_variant == "reference"
    assert loaded.backbone_config.hidden_sizes == config.backbone_config.hidden_sizes
    assert loaded.text_config.hidden_size == 32


def test_auto_model_resolves_epng():
    model = AutoModel.from_config(EpngConfig.tiny())
    assert isinstance(model, EpngForPanopticNarrativeGrounding)


def test_full_size_parameter_count_is_within_ten_percent_of_the_paper():
    with torch.device("meta"):
        model = EpngForPanopticNarrativeGrounding(EpngConfig())
    report = model.parameter_report()
    assert abs(report["without_text_encoder"] - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.10
    assert report["text_encoder"] > 100e6  # BERT-base, excluded from the paper's count
    parts = ("backbone", "fpn", "communicator", "text_projection")
    assert sum(report[part] for part in parts) == report["without_text_encoder"]
