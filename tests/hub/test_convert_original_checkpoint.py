"""Tests of `hub.convert_original_checkpoint`.

The authors' checkpoints cannot be downloaded here, and torchvision is not a dependency, so the tests build state
dicts with the authors' key names and shapes from public facts (torchvision's ResNet `Bottleneck`/`BasicBlock` and
`FeaturePyramidNetwork` naming, the meshed-memory encoder layer) and check the converted model against a plain-torch
re-implementation of the reference forward pass that reads those original keys.
"""

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoProcessor

from hub.convert_original_checkpoint import (
    REFERENCE_SWITCHES,
    CheckpointConversionError,
    convert_checkpoint,
    convert_state_dict,
    load_original_state_dict,
    main,
    reference_config,
)
from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding, EpngProcessor

BN_EPS = 1e-5
LAYER_NORM_EPS = 1e-5
TINY_RESNETS = {
    "bottleneck": {"depths": [2, 1, 1, 1], "hidden_sizes": [32, 48, 64, 80], "embedding_size": 16},
    "basic": {"depths": [2, 1, 1, 1], "hidden_sizes": [16, 24, 32, 48], "embedding_size": 16},
}


def tiny_reference_config(layer_type="bottleneck", text_config=None) -> EpngConfig:
    """A tiny EPNG (2 communicator layers, 48-d, 4 heads) with the reference switches."""
    backbone = {"model_type": "resnet", "layer_type": layer_type, "out_features": ["stage2", "stage3", "stage4"]}
    overrides = {"text_config": text_config} if text_config is not None else {}
    config = EpngConfig.tiny(backbone_config={**backbone, **TINY_RESNETS[layer_type]}, dropout=0.0, **overrides)
    return reference_config(config)


# --- the authors' state dict -------------------------------------------------------------------------------------


def original_shapes(config: EpngConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the authors' `model_state` for the architecture `config` describes.

    torchvision's ResNet: `conv1`/`bn1` stem; `layerN.i` blocks with `conv1..3`/`bn1..3` (Bottleneck, width =
    out / 4) or `conv1..2`/`bn1..2` (BasicBlock); a `downsample.0` 1x1 conv + `downsample.1` norm on the first block
    of a stage whose stride or width changes; convs without bias; FrozenBatchNorm2d with four buffers. Its FPN (over
    C2..C5) has `inner_blocks.l.0` 1x1 and `layer_blocks.l.0` 3x3 convs with bias.
    """
    backbone = config.backbone_config
    shapes = {}

    def norm(prefix, channels):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)

    body = "vs_backbone.body"
    shapes[f"{body}.conv1.weight"] = (backbone.embedding_size, 3, 7, 7)
    norm(f"{body}.bn1", backbone.embedding_size)
    in_channels = backbone.embedding_size
    for stage, (depth, out_channels) in enumerate(zip(backbone.depths, backbone.hidden_sizes, strict=True), start=1):
        for block in range(depth):
            prefix = f"{body}.layer{stage}.{block}"
            if backbone.layer_type == "bottleneck":
                width = out_channels // 4
                convs = [(width, in_channels, 1), (width, width, 3), (out_channels, width, 1)]
            else:
                convs = [(out_channels, in_channels, 3), (out_channels, out_channels, 3)]
            for index, (conv_out, conv_in, kernel) in enumerate(convs, start=1):
                shapes[f"{prefix}.conv{index}.weight"] = (conv_out, conv_in, kernel, kernel)
                norm(f"{prefix}.bn{index}", conv_out)
            stride = 2 if stage > 1 and block == 0 else 1
            if stride != 1 or in_channels != out_channels:
                shapes[f"{prefix}.downsample.0.weight"] = (out_channels, in_channels, 1, 1)
                norm(f"{prefix}.downsample.1", out_channels)
            in_channels = out_channels
    fpn, channels = "vs_backbone.fpn", config.fpn_channels
    for level, in_channels in enumerate(backbone.hidden_sizes):
        shapes[f"{fpn}.inner_blocks.{level}.0.weight"] = (channels, in_channels, 1, 1)
        shapes[f"{fpn}.layer_blocks.{level}.0.weight"] = (channels, channels, 3, 3)
        shapes[f"{fpn}.inner_blocks.{level}.0.bias"] = shapes[f"{fpn}.layer_blocks.{level}.0.bias"] = (channels,)

    hidden, ffn = config.hidden_size, config.ffn_dim
    for layer in range(config.num_communicator_layers):
        prefix = f"encoder.layers.{layer}"
        for attention in ("self_att", "enc_att"):
            for projection in ("fc_q", "fc_k", "fc_v", "fc_o"):
                shapes[f"{prefix}.{attention}.attention.{projection}.weight"] = (hidden, hidden)
                shapes[f"{prefix}.{attention}.attention.{projection}.bias"] = (hidden,)
        shapes[f"{prefix}.self_att.attention.W"] = (config.num_attention_heads, 1, 1)
        for linear, (out_features, in_features) in {"fc1": (ffn, hidden), "fc2": (hidden, ffn)}.items():
            shapes[f"{prefix}.pwff.{linear}.weight"] = (out_features, in_features)
            shapes[f"{prefix}.pwff.{linear}.bias"] = (out_features,)
        for norm_name in ("self_att.layer_norm", "enc_att.layer_norm", "lnorm1", "lnorm2", "pwff.layer_norm"):
            shapes[f"{prefix}.{norm_name}.weight"] = shapes[f"{prefix}.{norm_name}.bias"] = (hidden,)
    shapes["text_linear.weight"] = (hidden, config.text_config.hidden_size)
    shapes["text_linear.bias"] = (hidden,)
    return shapes


def random_original_state_dict(config: EpngConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the authors' names, scaled so activations neither vanish nor explode."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in original_shapes(config).items():
        if key.endswith(("running_var", ".W")) or (key.endswith(".weight") and len(shape) == 1):
            value = 0.5 + torch.rand(shape, generator=generator)  # positive variances, norm scales, per-head weights
        elif key.endswith(".weight"):
            value = torch.randn(shape, generator=generator) * math.sqrt(1.0 / math.prod(shape[1:]))
        else:
            value = 0.1 * torch.randn(shape, generator=generator)
        state[key] = value
    return state


# --- the reference forward pass ----------------------------------------------------------------------------------


def reference_mask_logits(state, config, pixel_values, phrase_features, phrase_mask):
    """The authors' forward pass (eval mode) on their own keys: frozen-BN ResNet, FPN with nearest top-down, fusion
    at stride 16, meshed-memory encoder layers (double LayerNorm, LPA with clamp(d^2, 0, 2)), ReLU6 phrase
    projection, 4x bilinear upsampling and a per-phrase 1x1 product."""

    def conv(x, prefix, stride=1, padding=0):
        return F.conv2d(x, state[f"{prefix}.weight"], state.get(f"{prefix}.bias"), stride, padding)

    def frozen_bn(x, prefix):
        scale = state[f"{prefix}.weight"] * (state[f"{prefix}.running_var"] + BN_EPS).rsqrt()
        shift = state[f"{prefix}.bias"] - state[f"{prefix}.running_mean"] * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    def linear(x, prefix):
        return F.linear(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"])

    def layer_norm(x, prefix):
        return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], LAYER_NORM_EPS)

    body, backbone = "vs_backbone.body", config.backbone_config
    x = F.max_pool2d(F.relu(frozen_bn(conv(pixel_values, f"{body}.conv1", 2, 3), f"{body}.bn1")), 3, 2, 1)
    features = []
    for stage, depth in enumerate(backbone.depths, start=1):
        for block in range(depth):
            prefix, stride = f"{body}.layer{stage}.{block}", 2 if stage > 1 and block == 0 else 1
            identity = x
            if f"{prefix}.downsample.0.weight" in state:
                identity = frozen_bn(conv(x, f"{prefix}.downsample.0", stride), f"{prefix}.downsample.1")
            if backbone.layer_type == "bottleneck":
                out = F.relu(frozen_bn(conv(x, f"{prefix}.conv1"), f"{prefix}.bn1"))
                out = F.relu(frozen_bn(conv(out, f"{prefix}.conv2", stride, 1), f"{prefix}.bn2"))
                out = frozen_bn(conv(out, f"{prefix}.conv3"), f"{prefix}.bn3")
            else:
                out = F.relu(frozen_bn(conv(x, f"{prefix}.conv1", stride, 1), f"{prefix}.bn1"))
                out = frozen_bn(conv(out, f"{prefix}.conv2", 1, 1), f"{prefix}.bn2")
            x = F.relu(out + identity)
        features.append(x)

    fpn = "vs_backbone.fpn"
    inner = conv(features[3], f"{fpn}.inner_blocks.3.0")
    pyramid = [conv(inner, f"{fpn}.layer_blocks.3.0", padding=1)]
    for level in (2, 1, 0):
        lateral = conv(features[level], f"{fpn}.inner_blocks.{level}.0")
        inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
        pyramid.insert(0, conv(inner, f"{fpn}.layer_blocks.{level}.0", padding=1))
    _, p3, p4, p5 = pyramid
    p5 = F.interpolate(p5, scale_factor=2, mode="bilinear", align_corners=True)
    fused = torch.cat([F.avg_pool2d(p3, 2), p4, p5], dim=1)

    batch_size, channels, height, width = fused.shape
    heads = config.num_attention_heads
    head_dim = channels // heads
    coordinates = torch.cartesian_prod(torch.arange(height), torch.arange(width)).float()
    distances = ((coordinates[:, None] - coordinates[None]) ** 2).sum(-1).clamp(0, 2)

    def attention(queries, keys_values, prefix, prior=None, padding=None):
        """meshed-memory MultiHeadAttention: layer_norm(queries + fc_o(softmax(q k^T / sqrt(d_k) [* prior]) v))."""
        q = linear(queries, f"{prefix}.attention.fc_q").view(batch_size, -1, heads, head_dim).permute(0, 2, 1, 3)
        k = linear(keys_values, f"{prefix}.attention.fc_k").view(batch_size, -1, heads, head_dim).permute(0, 2, 3, 1)
        v = linear(keys_values, f"{prefix}.attention.fc_v").view(batch_size, -1, heads, head_dim).permute(0, 2, 1, 3)
        logits = torch.matmul(q, k) / math.sqrt(head_dim)
        if prior is not None:
            logits = logits * prior
        if padding is not None:
            logits = logits.masked_fill(padding[:, None, None, :], float("-inf"))
        out = torch.matmul(logits.softmax(-1), v).permute(0, 2, 1, 3).reshape(batch_size, -1, channels)
        return layer_norm(queries + linear(out, f"{prefix}.attention.fc_o"), f"{prefix}.layer_norm")

    phrases = F.relu6(linear(phrase_features, "text_linear"))
    tokens = fused.flatten(2).transpose(1, 2)
    for layer in range(config.num_communicator_layers):
        prefix = f"encoder.layers.{layer}"
        prior = state[f"{prefix}.self_att.attention.W"] * distances
        tokens = layer_norm(tokens + attention(tokens, tokens, f"{prefix}.self_att", prior=prior), f"{prefix}.lnorm1")
        crossed = attention(tokens, phrases, f"{prefix}.enc_att", padding=~phrase_mask)
        tokens = layer_norm(tokens + crossed, f"{prefix}.lnorm2")
        hidden = linear(F.relu(linear(tokens, f"{prefix}.pwff.fc1")), f"{prefix}.pwff.fc2")
        tokens = layer_norm(tokens + hidden, f"{prefix}.pwff.layer_norm")
    pixels = tokens.transpose(1, 2).reshape(batch_size, channels, height, width)
    pixels = F.interpolate(pixels, scale_factor=4, mode="bilinear", align_corners=True)
    return torch.einsum("bpc,bchw->bphw", phrases, pixels)


def reference_inputs(config, seed=1, size=96):
    """Batch of 2 images (a 6x6 token grid, so the LPA truncation matters) with 3 phrase slots, one of them padding."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(2, 3, size, size, generator=generator)
    phrase_features = torch.randn(2, 3, config.text_config.hidden_size, generator=generator)
    phrase_mask = torch.tensor([[True, True, True], [True, True, False]])
    return pixel_values, phrase_features, phrase_mask


def converted_model(config, original):
    model = EpngForPanopticNarrativeGrounding(config).eval()
    missing, unexpected = model.load_state_dict(convert_state_dict(original, config), strict=False)
    assert not unexpected and all(key.startswith("phrase_encoder.text_encoder.") for key in missing)
    return model


# --- tests -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_type", ["bottleneck", "basic"])
def test_converted_model_matches_reference_forward(layer_type):
    config = tiny_reference_config(layer_type)
    original = random_original_state_dict(config)
    model = converted_model(config, original)
    pixel_values, phrase_features, phrase_mask = reference_inputs(config)

    with torch.no_grad():
        logits = model(pixel_values, phrase_features=phrase_features, phrase_mask=phrase_mask).mask_logits
        expected = reference_mask_logits(original, config, pixel_values, phrase_features, phrase_mask)

    assert logits.shape == expected.shape == (2, 3, 24, 24)
    assert expected.std() > 0.1  # a meaningful comparison, not two near-constant maps
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_full_size_checkpoint_converts():
    """The paper's architecture (ResNet-101 with 3, 4, 23, 3 blocks; 768-d, 8 heads) maps key for key (meta tensors)."""
    config = reference_config()
    original = {key: torch.empty(shape, device="meta") for key, shape in original_shapes(config).items()}

    converted = convert_state_dict(original, config)

    assert len(converted) == len(original) - 4  # the C2 FPN level: two convs with a bias each
    assert converted["communicator.layers.2.self_attention.attention.distance_weights"].shape == (8,)
    assert "visual_encoder.backbone.encoder.stages.2.layers.22.layer.2.normalization.running_var" in converted


def test_old_torchvision_fpn_names_and_wrapper_prefix():
    config = tiny_reference_config()
    original = random_original_state_dict(config)
    # torchvision < 0.13 saved FPN convs without the `.0` of Conv2dNormActivation; DataParallel adds `module.`.
    legacy = {}
    for key, value in original.items():
        if ".fpn." in key:
            key = key.replace(".0.weight", ".weight").replace(".0.bias", ".bias")
        legacy["module." + key] = value

    converted = convert_state_dict(legacy, config)

    assert converted.keys() == convert_state_dict(original, config).keys()
    assert converted["visual_encoder.lateral_convs.0.weight"] is original["vs_backbone.fpn.inner_blocks.1.0.weight"]


@pytest.mark.parametrize(
    ("edit", "named_key"),
    [
        (
            lambda state: state.pop("encoder.layers.1.lnorm2.bias"),
            "communicator.layers.1.cross_attention_outer_norm.bias",
        ),
        (
            lambda state: state.update({"encoder.layers.0.extra.weight": torch.zeros(1)}),
            "encoder.layers.0.extra.weight",
        ),
        (lambda state: state.update({"encoder.layers.5.lnorm1.bias": torch.zeros(48)}), "encoder.layers.5.lnorm1.bias"),
        (lambda state: state.update({"text_linear.weight": torch.zeros(48, 7)}), "text_linear.weight"),
        (lambda state: state.update({"encoder.layers.0.self_att.attention.W": torch.ones(3, 1, 1)}), ".W (3, 1, 1)"),
    ],
    ids=["missing", "unmapped", "beyond-config", "wrong-shape", "wrong-head-count"],
)
def test_mismatched_checkpoint_names_the_key(edit, named_key):
    config = tiny_reference_config()
    original = random_original_state_dict(config)
    edit(original)

    with pytest.raises(CheckpointConversionError, match="Cannot convert") as error:
        convert_state_dict(original, config)

    assert named_key in str(error.value)


@pytest.fixture
def minilm_checkpoint(tmp_path, minilm_path):
    """A fake authors' checkpoint whose phrase features come from the offline MiniLM (a BERT), with a pickled
    `argparse.Namespace` beside the weights as training scripts often save."""
    config = tiny_reference_config(text_config=AutoConfig.from_pretrained(minilm_path))
    original = random_original_state_dict(config)
    path = tmp_path / "best_checkpoint.pth"
    torch.save({"model_state": original, "epoch": 7, "args": argparse.Namespace(lr=1e-5)}, path)
    return config, original, path


def assert_matches_reference(model, original, config):
    pixel_values, phrase_features, phrase_mask = reference_inputs(config)
    with torch.no_grad():
        logits = model.eval()(pixel_values, phrase_features=phrase_features, phrase_mask=phrase_mask).mask_logits
        expected = reference_mask_logits(original, config, pixel_values, phrase_features, phrase_mask)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_convert_checkpoint_writes_a_loadable_folder(minilm_checkpoint, minilm_path, tmp_path):
    config, original, path = minilm_checkpoint
    output = tmp_path / "converted"

    convert_checkpoint(path, output, config=config, text_encoder=minilm_path, image_size=64, allow_pickle=True)

    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["best_checkpoint.pth", "converted"]
    model = EpngForPanopticNarrativeGrounding.from_pretrained(output)
    assert {field: getattr(model.config, field) for field in REFERENCE_SWITCHES} == REFERENCE_SWITCHES
    assert_matches_reference(model, original, config)
    pretrained = AutoModel.from_pretrained(minilm_path)
    torch.testing.assert_close(
        model.phrase_encoder.text_encoder.embeddings.word_embeddings.weight,
        pretrained.embeddings.word_embeddings.weight,
    )
    processor = EpngProcessor.from_pretrained(output)
    assert processor.image_processor.size.height == processor.image_processor.size.width == 64
    assert processor.tokenizer.is_fast


def test_failed_conversion_leaves_nothing_behind(minilm_checkpoint, tmp_path, monkeypatch):
    config, _, path = minilm_checkpoint
    output = tmp_path / "out" / "converted"
    three_layers = tiny_reference_config(text_config=config.text_config)
    three_layers.num_communicator_layers = 3

    with pytest.raises(CheckpointConversionError, match="communicator.layers.2"):
        convert_checkpoint(path, output, config=three_layers, text_encoder=None, tokenizer=None, allow_pickle=True)
    assert not (tmp_path / "out").exists()

    # A failure while writing (e.g. a full disk) removes the partly written temporary folder.
    def failing_save(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(EpngForPanopticNarrativeGrounding, "save_pretrained", failing_save)
    with pytest.raises(OSError, match="No space left"):
        convert_checkpoint(path, output, config=config, text_encoder=None, tokenizer=None, allow_pickle=True)
    assert list((tmp_path / "out").iterdir()) == []


def test_existing_output_is_only_replaced_with_overwrite(minilm_checkpoint, tmp_path):
    config, _, path = minilm_checkpoint
    output = tmp_path / "converted"
    output.mkdir()
    (output / "stale.txt").write_text("old")

    with pytest.raises(FileExistsError, match="overwrite"):
        convert_checkpoint(path, output, config=config, text_encoder=None, allow_pickle=True)
    convert_checkpoint(path, output, config=config, text_encoder=None, overwrite=True, allow_pickle=True)

    assert not (output / "stale.txt").exists() and (output / "model.safetensors").exists()
    assert not (output / "processor_config.json").exists()  # neither text encoder nor tokenizer: model only
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["best_checkpoint.pth", "converted"]


def test_pickled_objects_need_allow_pickle(minilm_checkpoint):
    _, original, path = minilm_checkpoint

    with pytest.raises(CheckpointConversionError, match="allow_pickle"):
        load_original_state_dict(path)
    assert load_original_state_dict(path, allow_pickle=True).keys() == original.keys()


def test_cli_end_to_end(minilm_checkpoint, minilm_path, tmp_path):
    config, original, path = minilm_checkpoint
    config.save_pretrained(tmp_path / "architecture")
    output = tmp_path / "converted"

    main(
        [
            "--checkpoint",
            str(path),
            "--output_dir",
            str(output),
            "--config",
            str(tmp_path / "architecture"),
            "--text_encoder",
            minilm_path,
            "--image_size",
            "64",
            "--allow_pickle",
            "--remote_code",
        ]
    )

    assert_matches_reference(AutoModel.from_pretrained(output), original, config)
    assert isinstance(AutoProcessor.from_pretrained(output), EpngProcessor)
    assert (output / "modeling_epng.py").is_file()
    assert json.loads((output / "config.json").read_text())["auto_map"]["AutoModel"].startswith("modeling_epng.")
