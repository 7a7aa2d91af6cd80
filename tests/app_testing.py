"""A tiny random EPNG model saved with its processor, shared by the pipeline, CLI, web-app and Space tests."""

from pathlib import Path

import torch
from transformers import AutoTokenizer

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding, EpngImageProcessor, EpngProcessor


def save_tiny_model(folder: Path, tokenizer_path: str) -> Path:
    """Random tiny model + a 64 x 64 processor with the MiniLM tokenizer, saved into `folder`."""
    torch.manual_seed(0)
    model = EpngForPanopticNarrativeGrounding(EpngConfig.tiny())
    processor = EpngProcessor(
        EpngImageProcessor(size={"height": 64, "width": 64}), AutoTokenizer.from_pretrained(tokenizer_path)
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
