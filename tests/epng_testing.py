"""Helpers shared by the tests (importable because pytest puts tests/ on sys.path)."""


def tiny_config_kwargs(**overrides):
    """Keyword arguments of a tiny `EpngConfig`: 1-block ResNet, 2-layer BERT, 48-d communicator."""
    kwargs = dict(
        backbone_config={
            "model_type": "resnet",
            "depths": [1, 1, 1, 1],
            "hidden_sizes": [16, 24, 32, 48],
            "embedding_size": 16,
            "layer_type": "basic",
            "out_features": ["stage2", "stage3", "stage4"],
        },
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
