"""EpngForPanopticNarrativeGrounding with tiny configs: shapes, masking, freezing, save/load, learning."""

import pytest
import torch
from epng_testing import check_model_conventions, grounding_inputs

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding
from modeling_epng.visual_encoder import backbone_stages


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return EpngForPanopticNarrativeGrounding(EpngConfig.tiny(**overrides))


@pytest.mark.parametrize("height, width", [(64, 64), (64, 96), (128, 32)])
def test_output_shapes_square_and_non_square(height, width):
    model = make_model().eval()
    inputs = grounding_inputs(height=height, width=width)
    with torch.no_grad():
        output = model(**inputs, output_attentions=True)
    assert output.mask_logits.shape == (2, 3, height // 4, width // 4)
    assert output.phrase_embeddings.shape == (2, 3, 48)
    assert output.pixel_embeddings.shape == (2, 48, height // 4, width // 4)
    tokens = (height // 16) * (width // 16)
    assert len(output.attentions) == 2 and output.attentions[0].shape == (2, 4, tokens, tokens)
    assert output.loss is None


def test_config_output_flags_are_the_forward_defaults():
    model = make_model(output_attentions=True, output_hidden_states=True).eval()
    inputs = grounding_inputs()
    with torch.no_grad():
        output = model(**inputs)
        plain = model(**inputs, output_attentions=False, output_hidden_states=False)
    tokens = (64 // 16) * (96 // 16)
    assert [a.shape for a in output.attentions] == [(2, 4, tokens, tokens)] * 2
    # the tokens entering the first layer and leaving each of the two layers
    assert [h.shape for h in output.hidden_states] == [(2, tokens, 48)] * 3
    final_map = output.hidden_states[-1].transpose(1, 2).reshape(2, 48, 4, 6)
    torch.testing.assert_close(model.upsample_to_mask_stride(final_map), output.pixel_embeddings)
    assert plain.attentions is None and plain.hidden_states is None
    torch.testing.assert_close(plain.mask_logits, output.mask_logits)


def test_input_embeddings_are_the_text_encoders_word_embeddings():
    model = make_model()
    embeddings = model.get_input_embeddings()
    assert embeddings is model.phrase_encoder.text_encoder.embeddings.word_embeddings
    replacement = torch.nn.Embedding(embeddings.num_embeddings, embeddings.embedding_dim)
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement


def test_input_size_must_be_a_multiple_of_32():
    model = make_model().eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(**grounding_inputs(height=48, width=64))


def test_mismatched_mask_labels_raise():
    model = make_model().eval()
    with pytest.raises(ValueError, match="mask_labels"):
        model(**grounding_inputs(), mask_labels=torch.zeros(2, 5, 16, 16))


def test_padding_phrases_do_not_change_real_phrases():
    model = make_model().eval()
    inputs = grounding_inputs(num_phrases=3)
    padded = dict(inputs, phrase_mask=torch.cat([inputs["phrase_mask"], torch.zeros(2, 4, dtype=torch.bool)], 1))
    with torch.no_grad():
        plain = model(**inputs)
        wider = model(**padded)
    real = inputs["phrase_mask"]
    assert torch.allclose(plain.mask_logits[real], wider.mask_logits[:, :3][real], atol=1e-5)
    assert torch.allclose(plain.pixel_embeddings, wider.pixel_embeddings, atol=1e-5)


def test_eval_mode_is_deterministic():
    model = make_model().eval()
    inputs = grounding_inputs()
    with torch.no_grad():
        assert torch.equal(model(**inputs).mask_logits, model(**inputs).mask_logits)


def test_phrase_features_path_equals_token_path():
    model = make_model().eval()
    inputs = grounding_inputs()
    with torch.no_grad():
        token_path = model(**inputs)
        features = model.phrase_encoder.pool_phrases(
            inputs["input_ids"], inputs["attention_mask"], inputs["phrase_ids"], 3
        )
        feature_path = model(
            pixel_values=inputs["pixel_values"], phrase_features=features, phrase_mask=inputs["phrase_mask"]
        )
    assert torch.allclose(token_path.mask_logits, feature_path.mask_logits, atol=1e-6)


def test_loss_is_finite_for_empty_masks_and_phrase_less_samples():
    model = make_model().train()
    inputs = grounding_inputs()
    inputs["phrase_mask"][1] = False
    inputs["phrase_ids"][1] = -1
    labels = torch.zeros(2, 3, 40, 50)
    labels[0, 0, 5:20, 10:30] = 1  # phrase 1 and 2 of sample 0 have empty masks
    output = model(**inputs, mask_labels=labels)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    for name in ("bce_loss", "dice_loss", "sal_loss"):
        assert torch.isfinite(getattr(output, name))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("size", [(64, 96), (32, 48)])
def test_boolean_and_float_mask_labels_give_the_same_loss(size):
    model = make_model().eval()
    labels = torch.rand(2, 3, *size) > 0.5
    with torch.no_grad():
        from_bool = model(**grounding_inputs(), mask_labels=labels)
        from_float = model(**grounding_inputs(), mask_labels=labels.float())
    assert torch.equal(from_bool.loss, from_float.loss) and torch.isfinite(from_bool.loss)


def test_all_samples_without_phrases_give_zero_loss():
    model = make_model().train()
    inputs = grounding_inputs()
    inputs["phrase_mask"][:] = False
    inputs["phrase_ids"][:] = -1
    output = model(**inputs, mask_labels=torch.zeros(2, 3, 64, 96))
    output.loss.backward()
    assert output.loss.item() == 0.0


def test_sal_weight_zero_skips_sal():
    model = make_model(sal_weight=0.0).train()
    output = model(**grounding_inputs(), mask_labels=torch.ones(2, 3, 64, 96))
    assert output.sal_loss is None
    assert output.loss.item() == pytest.approx(2 * output.bce_loss.item() + 2 * output.dice_loss.item(), rel=1e-5)


def test_frozen_parameters_get_no_gradient_and_do_not_move():
    model = make_model(backbone_trainable_stages=2).train()
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    output = model(**grounding_inputs(), mask_labels=(torch.rand(2, 3, 64, 96) > 0.5).float())
    output.loss.backward()
    optimizer.step()
    moved = {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}
    frozen_prefixes = (
        "phrase_encoder.text_encoder.",
        "visual_encoder.backbone.embedder.",
        "visual_encoder.backbone.encoder.stages.0.",
        "visual_encoder.backbone.encoder.stages.1.",
    )
    for name, parameter in model.named_parameters():
        if name.startswith(frozen_prefixes):
            assert not parameter.requires_grad and parameter.grad is None and name not in moved, name
    for prefix in (
        "visual_encoder.backbone.encoder.stages.3.",
        "visual_encoder.lateral_convs.",
        "communicator.layers.0.",
        "phrase_encoder.text_projection.",
    ):
        assert any(name.startswith(prefix) for name in moved), prefix
    # frozen batch norms keep their statistics in training mode
    assert all(torch.equal(buffer, dict(model.named_buffers())[name]) for name, buffer in model.named_buffers())


def test_frozen_text_encoder_stays_in_eval_mode():
    model = make_model().train()
    assert not model.phrase_encoder.text_encoder.training
    assert model.communicator.training


def test_fully_trainable_backbone_with_batch_norm():
    model = make_model(backbone_trainable_stages=-1, freeze_backbone_batch_norm=False, freeze_text_encoder=False)
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.visual_encoder.backbone.modules())


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"sal_weight": 0.0},
        {"lpa_distance": "squared", "lpa_weight_init": 0.7},
        {"self_attention_type": "mhsa"},
        {"self_attention_type": "mhsa_sine"},
        {"communicator_layer_form": "reference", "sal_variant": "reference"},
    ],
    ids=["paper", "no_sal", "squared_lpa", "mhsa", "mhsa_sine", "reference"],
)
def test_model_conventions_hold_for_every_variant(overrides, tmp_path):
    model = make_model(dropout=0.0, **overrides)
    check_model_conventions(model, grounding_inputs(height=64, width=64), tmp_path)
    prior_params = [name for name, _ in model.named_parameters() if "distance_weights" in name]
    assert bool(prior_params) == (overrides.get("self_attention_type", "lpa") == "lpa")


def test_overfitting_one_tiny_batch_drives_the_loss_down():
    model = make_model(backbone_trainable_stages=-1, dropout=0.0).train()
    inputs = grounding_inputs(height=64, width=64)
    labels = torch.zeros(2, 3, 64, 64)
    labels[0, 0, :32] = 1
    labels[0, 1, 32:, :32] = 1
    labels[0, 2, 32:, 32:] = 1
    labels[1, 0, :, :20] = 1
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses, mask_losses = [], []
    for _ in range(50):
        optimizer.zero_grad()
        output = model(**inputs, mask_labels=labels)
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
        mask_losses.append(output.bce_loss.item() + output.dice_loss.item())
    # SAL is bounded below by log(#positive pixels) per phrase, so the mask terms carry the clear drop
    assert mask_losses[-1] < 0.25 * mask_losses[0], mask_losses
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize(
    "backbone_config",
    [
        {
            "model_type": "convnext",
            "depths": [1, 1, 1, 1],
            "hidden_sizes": [16, 24, 32, 48],
            "out_features": ["stage2", "stage3", "stage4"],
        },
        {
            "model_type": "swin",
            "image_size": 64,
            "embed_dim": 12,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 2, 2],
            "window_size": 2,
            "out_features": ["stage2", "stage3", "stage4"],
        },
    ],
)
def test_other_backbones_plug_in_by_config(backbone_config):
    model = make_model(backbone_config=backbone_config).train()
    output = model(**grounding_inputs(height=64, width=64), mask_labels=torch.ones(2, 3, 64, 64))
    output.loss.backward()
    assert output.mask_logits.shape == (2, 3, 16, 16)
    stages = backbone_stages(model.visual_encoder.backbone)
    assert len(stages) == 4
    assert all(not p.requires_grad for p in stages[0].parameters())
    assert all(p.requires_grad for p in stages[-1].parameters())


def test_unknown_forward_argument_is_an_error():
    model = make_model().eval()
    with pytest.raises(TypeError, match="mask_label"):
        model(**grounding_inputs(), mask_label=torch.zeros(2, 3, 64, 96))


def test_compiled_model_follows_changes_of_image_size_and_phrase_count():
    # The second call makes dynamo recompile with symbolic sizes, which every layer must support (adaptive pooling,
    # once used to fuse P3, did not); training mode so that the losses are compiled too.
    torch._dynamo.reset()
    model = make_model(attention_dropout=0.0, dropout=0.0)
    compiled = torch.compile(model)
    for (height, width), num_phrases in [((64, 96), 3), ((96, 64), 2)]:
        inputs = {  # phrase features: the text encoder's compilation would only cost time here
            "pixel_values": torch.randn(2, 3, height, width),
            "phrase_features": torch.randn(2, num_phrases, model.config.text_config.hidden_size),
            "phrase_mask": torch.ones(2, num_phrases, dtype=torch.bool),
            "mask_labels": (torch.rand(2, num_phrases, height, width) > 0.5).float(),
        }
        compiled_output, eager_output = compiled(**inputs), model(**inputs)
        torch.testing.assert_close(compiled_output.mask_logits, eager_output.mask_logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(compiled_output.loss, eager_output.loss, atol=1e-4, rtol=1e-4)
