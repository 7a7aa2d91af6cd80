"""Helpers shared by the tests (importable because pytest puts tests/ on sys.path)."""

from modeling_epng.configuration_epng import small_resnet_backbone_config


def tiny_config_kwargs(**overrides):
    """Keyword arguments of a tiny `EpngConfig`: 1-block ResNet, 2-layer BERT, 48-d communicator."""
    kwargs = dict(
        backbone_config=small_resnet_backbone_config([16, 24, 32, 48]),
        text_config={
            "model_type": "bert",
            "vocab_size": 30522,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 512,
        },
        fpn_channels=16,
        hidden_size=48,
        num_communicator_layers=2,
        num_attention_heads=4,
        ffn_dim=64,
        text_pooled_layers=2,
    )
    kwargs.update(overrides)
    return kwargs
