"""Convert a checkpoint released by the EPNG authors into a `from_pretrained`-ready folder.

The authors' training script saves `{"model_state": state_dict, "epoch": ..., ...}` for a model made of
torchvision's `resnet_fpn_backbone("resnet101")` (`vs_backbone`), three meshed-memory-style encoder layers
(`encoder.layers.{i}`) and the phrase projection `text_linear`. Their model consumes precomputed BERT phrase features,
so the text encoder is not in the checkpoint: it is loaded from `--text_encoder` (BERT-base-uncased by default).

Usage:

```bash
python -m hub.convert_original_checkpoint --checkpoint best_checkpoint.pth --output_dir epng-png-reference
```

Key mapping (source → [`EpngForPanopticNarrativeGrounding`]; `N` = ResNet layer 1-4, `i` = block, `K` = conv 1-3,
`l` = communicator layer, `p` = `weight|bias|running_mean|running_var`):

| authors' checkpoint                                   | this package                                                 |
|-------------------------------------------------------|--------------------------------------------------------------|
| `vs_backbone.body.conv1.weight`, `.bn1.p`             | `visual_encoder.backbone.embedder.embedder.{convolution,normalization}` |
| `vs_backbone.body.layerN.i.convK`, `.bnK`             | `visual_encoder.backbone.encoder.stages.(N-1).layers.i.layer.(K-1).{convolution,normalization}` |
| `vs_backbone.body.layerN.i.downsample.{0,1}`          | `visual_encoder.backbone.encoder.stages.(N-1).layers.i.shortcut.{convolution,normalization}` |
| `vs_backbone.fpn.inner_blocks.{1,2,3}[.0]`            | `visual_encoder.lateral_convs.{0,1,2}`                       |
| `vs_backbone.fpn.layer_blocks.{1,2,3}[.0]`            | `visual_encoder.output_convs.{0,1,2}`                        |
| `vs_backbone.fpn.{inner,layer}_blocks.0[.0]`          | dropped: the P2 branch never reaches the output              |
| `encoder.layers.l.self_att.attention.fc_{q,k,v,o}`    | `communicator.layers.l.self_attention.attention.{q,k,v,out}_proj` |
| `encoder.layers.l.self_att.attention.W` (heads, 1, 1) | `communicator.layers.l.self_attention.attention.distance_weights` (heads,) |
| `encoder.layers.l.self_att.layer_norm`, `lnorm1`      | `communicator.layers.l.self_attention.layer_norm`, `.self_attention_outer_norm` |
| `encoder.layers.l.enc_att.attention.fc_{q,k,v,o}`     | `communicator.layers.l.cross_attention.attention.{q,k,v,out}_proj` |
| `encoder.layers.l.enc_att.layer_norm`, `lnorm2`       | `communicator.layers.l.cross_attention.layer_norm`, `.cross_attention_outer_norm` |
| `encoder.layers.l.pwff.{fc1,fc2,layer_norm}`          | `communicator.layers.l.feed_forward.{fc1,fc2,layer_norm}`    |
| `text_linear`                                         | `phrase_encoder.text_projection`                             |

torchvision's ResNet and transformers' `ResNetBackbone` compute the same function (ResNet v1.5: stride in the 3x3
convolution, 1x1 strided projection shortcut, 7x7/2 stem and 3x3/2 max-pool), and both FPN spellings are accepted
(`inner_blocks.1.weight` before torchvision 0.13, `inner_blocks.1.0.weight` after). A `module.` prefix left by
(Distributed)DataParallel is stripped. Batch-norm step counters (`num_batches_tracked`), if any, are dropped: frozen
batch norm never reads them. Any other key without a mapping, any model weight left unfilled and any shape mismatch
stops the conversion with a [`CheckpointConversionError`] listing the keys.

The written config carries the switches that reproduce the authors' code (`lpa_distance="squared"`,
`communicator_layer_form="reference"`, `sal_variant="reference"`, `sal_temperature=10`), and the processor resizes to
1216x1216, the size the authors evaluate at. The folder is written atomically: everything is built in memory, saved
to a temporary sibling folder and renamed into place, so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import pickle
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding, EpngImageProcessor, EpngProcessor
from processing.output_dirs import check_output_dir, staged_output_dir

from .remote_code import add_remote_code

logger = logging.getLogger(__name__)

REFERENCE_SWITCHES = {
    "lpa_distance": "squared",
    "communicator_layer_form": "reference",
    "sal_variant": "reference",
    "sal_temperature": 10.0,
}
REFERENCE_EVAL_IMAGE_SIZE = 1216
DEFAULT_TEXT_ENCODER = "bert-base-uncased"
TEXT_ENCODER_PREFIX = "phrase_encoder.text_encoder."
WRAPPER_PREFIX = "module."
MAX_LISTED_KEYS = 20


class CheckpointConversionError(ValueError):
    """The checkpoint does not match the configured architecture; the message lists the offending keys."""


@dataclass(frozen=True)
class KeyRule:
    """One renaming rule: a regex over source keys and the target key template (`None`: the key is dropped).

    The template is formatted with the regex's named groups, after `_ONE_BASED_GROUPS` are made 0-based and
    `_GROUP_RENAMES` are applied.
    """

    pattern: re.Pattern
    target: str | None
    drop_reason: str = ""
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def target_key(self, match: re.Match) -> str:
        values = match.groupdict()
        for group in _ONE_BASED_GROUPS:
            if values.get(group) is not None:
                values[group] = int(values[group]) - 1
        for group, renames in _GROUP_RENAMES.items():
            if values.get(group) is not None:
                values[group] = renames[values[group]]
        return self.target.format(**values)


def _squeeze_head_weights(weights: torch.Tensor) -> torch.Tensor:
    """The reference keeps one LPA scalar per head as (heads, 1, 1) to broadcast over logits; ours is (heads,)."""
    return weights.reshape(weights.shape[0]) if weights.dim() == 3 and weights.shape[1:] == (1, 1) else weights


def _rule(pattern: str, target: str | None, **kwargs) -> KeyRule:
    return KeyRule(re.compile(pattern), target, **kwargs)


# torchvision numbers the ResNet layers (layer1-4) and the convolutions of a block (conv1-3) from 1, and our FPN has no
# level for C2, so torchvision's FPN level 1 (C3) is our level 0: these groups are shifted down by one.
_ONE_BASED_GROUPS = ("stage", "conv", "level")
_GROUP_RENAMES = {
    "attention": {"self_att": "self_attention", "enc_att": "cross_attention"},
    "projection": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"},
}
_PARAM = r"(?P<param>weight|bias)"
_NORM_PARAM = r"(?P<param>weight|bias|running_mean|running_var)"
_SOURCE_BLOCK = r"vs_backbone\.body\.layer(?P<stage>[1-4])\.(?P<block>\d+)"
_TARGET_BLOCK = "visual_encoder.backbone.encoder.stages.{stage}.layers.{block}"
_TARGET_STEM = "visual_encoder.backbone.embedder.embedder"
_SOURCE_LAYER = r"encoder\.layers\.(?P<layer>\d+)"
_TARGET_LAYER = "communicator.layers.{layer}"

KEY_RULES: tuple[KeyRule, ...] = (
    _rule(r"vs_backbone\.body\.conv1\.weight", f"{_TARGET_STEM}.convolution.weight"),
    _rule(rf"vs_backbone\.body\.bn1\.{_NORM_PARAM}", f"{_TARGET_STEM}.normalization.{{param}}"),
    _rule(rf"{_SOURCE_BLOCK}\.conv(?P<conv>\d)\.weight", f"{_TARGET_BLOCK}.layer.{{conv}}.convolution.weight"),
    _rule(
        rf"{_SOURCE_BLOCK}\.bn(?P<conv>\d)\.{_NORM_PARAM}", f"{_TARGET_BLOCK}.layer.{{conv}}.normalization.{{param}}"
    ),
    _rule(rf"{_SOURCE_BLOCK}\.downsample\.0\.weight", f"{_TARGET_BLOCK}.shortcut.convolution.weight"),
    _rule(rf"{_SOURCE_BLOCK}\.downsample\.1\.{_NORM_PARAM}", f"{_TARGET_BLOCK}.shortcut.normalization.{{param}}"),
    _rule(r"vs_backbone\.body\..*\.num_batches_tracked", None, drop_reason="batch-norm step counters"),
    # torchvision < 0.13 saves FPN convolutions as `inner_blocks.1.weight`, later versions as `inner_blocks.1.0.weight`.
    _rule(rf"vs_backbone\.fpn\.(?:inner|layer)_blocks\.0(?:\.0)?\.{_PARAM}", None, drop_reason="FPN level 0 (C2)"),
    _rule(
        rf"vs_backbone\.fpn\.inner_blocks\.(?P<level>\d+)(?:\.0)?\.{_PARAM}",
        "visual_encoder.lateral_convs.{level}.{param}",
    ),
    _rule(
        rf"vs_backbone\.fpn\.layer_blocks\.(?P<level>\d+)(?:\.0)?\.{_PARAM}",
        "visual_encoder.output_convs.{level}.{param}",
    ),
    _rule(
        rf"{_SOURCE_LAYER}\.(?P<attention>self_att|enc_att)\.attention\.fc_(?P<projection>[qkvo])\.{_PARAM}",
        f"{_TARGET_LAYER}.{{attention}}.attention.{{projection}}.{{param}}",
    ),
    _rule(
        rf"{_SOURCE_LAYER}\.self_att\.attention\.W",
        f"{_TARGET_LAYER}.self_attention.attention.distance_weights",
        transform=_squeeze_head_weights,
    ),
    _rule(
        rf"{_SOURCE_LAYER}\.(?P<attention>self_att|enc_att)\.layer_norm\.{_PARAM}",
        f"{_TARGET_LAYER}.{{attention}}.layer_norm.{{param}}",
    ),
    _rule(rf"{_SOURCE_LAYER}\.lnorm1\.{_PARAM}", f"{_TARGET_LAYER}.self_attention_outer_norm.{{param}}"),
    _rule(rf"{_SOURCE_LAYER}\.lnorm2\.{_PARAM}", f"{_TARGET_LAYER}.cross_attention_outer_norm.{{param}}"),
    _rule(
        rf"{_SOURCE_LAYER}\.pwff\.(?P<module>fc1|fc2|layer_norm)\.{_PARAM}",
        f"{_TARGET_LAYER}.feed_forward.{{module}}.{{param}}",
    ),
    _rule(rf"text_linear\.{_PARAM}", "phrase_encoder.text_projection.{param}"),
)


def _match_rule(key: str) -> tuple[KeyRule, re.Match] | tuple[None, None]:
    for rule in KEY_RULES:
        match = rule.pattern.fullmatch(key)
        if match is not None:
            return rule, match
    return None, None


def _listing(title: str, items: Sequence[str]) -> str:
    shown = "\n".join(f"    {item}" for item in items[:MAX_LISTED_KEYS])
    more = f"\n    ... and {len(items) - MAX_LISTED_KEYS} more" if len(items) > MAX_LISTED_KEYS else ""
    return f"  {len(items)} {title}:\n{shown}{more}"


def reference_config(config: EpngConfig | None = None, text_config=None) -> EpngConfig:
    """
    The config of the authors' model: `config` (default: the paper's `EpngConfig()`) with the reference switches.

    Args:
        config ([`EpngConfig`], *optional*):
            Architecture to convert into (ResNet depth, widths, ...); not modified (a copy is returned).
        text_config (`PreTrainedConfig`, *optional*):
            Replaces `config.text_config` (the config of the text encoder the phrase features came from).
    """
    config = copy.deepcopy(config) if config is not None else EpngConfig()
    if text_config is not None:
        config.text_config = text_config
    for field, value in REFERENCE_SWITCHES.items():
        if getattr(config, field) != value:
            logger.info("Setting %s=%r (was %r) to match the authors' code", field, value, getattr(config, field))
            setattr(config, field, value)
    return config


def expected_shapes(config: EpngConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of every weight and buffer a checkpoint must provide (all but the text encoder's), read off a model
    built on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        model = EpngForPanopticNarrativeGrounding(config)
    return {
        key: tuple(value.shape) for key, value in model.state_dict().items() if not key.startswith(TEXT_ENCODER_PREFIX)
    }


def convert_state_dict(original_state_dict: Mapping[str, torch.Tensor], config: EpngConfig) -> dict[str, torch.Tensor]:
    """
    Rename the authors' state dict to [`EpngForPanopticNarrativeGrounding`] keys (see the module docstring).

    Args:
        original_state_dict (`Mapping[str, torch.Tensor]`):
            The `model_state` of an authors' checkpoint (a `module.` prefix on every key is stripped).
        config ([`EpngConfig`]):
            The target architecture; use [`reference_config`] so the converted weights compute the authors' function.

    Returns:
        `dict[str, torch.Tensor]`: every weight and buffer of the model except the text encoder's.

    Raises:
        [`CheckpointConversionError`]: source keys without a mapping or mapped to keys the model does not have, two
        source keys for one target, model keys left unfilled, or shape mismatches; every offending key is listed.
    """
    if original_state_dict and all(key.startswith(WRAPPER_PREFIX) for key in original_state_dict):
        original_state_dict = {key[len(WRAPPER_PREFIX) :]: value for key, value in original_state_dict.items()}
    shapes = expected_shapes(config)
    converted: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    dropped: dict[str, list[str]] = defaultdict(list)
    unmapped, unexpected, duplicated, mismatched = [], [], [], []
    for key, tensor in original_state_dict.items():
        rule, match = _match_rule(key)
        if rule is None:
            unmapped.append(key)
            continue
        if rule.target is None:
            dropped[rule.drop_reason].append(key)
            continue
        target = rule.target_key(match)
        value = rule.transform(tensor) if rule.transform is not None else tensor
        if target not in shapes:
            unexpected.append(f"{key} -> {target}")
        elif target in sources:
            duplicated.append(f"{sources[target]} and {key} -> {target}")
        elif tuple(value.shape) != shapes[target]:
            mismatched.append(f"{key} {tuple(tensor.shape)} -> {target} {shapes[target]}")
            sources[target] = key
        else:
            converted[target] = value
            sources[target] = key
    missing = [key for key in shapes if key not in sources]

    problems = [
        (unmapped, "source keys have no mapping"),
        (unexpected, "source keys map to weights this config's model does not have"),
        (duplicated, "model keys are given twice"),
        (missing, "model keys are not in the checkpoint"),
        (mismatched, "shapes differ (checkpoint -> model)"),
    ]
    report = [_listing(title, items) for items, title in problems if items]
    if report:
        raise CheckpointConversionError("Cannot convert the checkpoint:\n" + "\n".join(report))
    for reason, keys in dropped.items():
        logger.info("Dropped %d keys of %s: %s", len(keys), reason, ", ".join(keys))
    return converted


def load_original_state_dict(checkpoint_path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """
    Read the state dict of an authors' checkpoint (`{"model_state": ..., "epoch": ...}`, or a bare state dict).

    Args:
        checkpoint_path (`str` or `os.PathLike`): the `.pth` file.
        allow_pickle (`bool`, *optional*, defaults to `False`):
            Unpickle arbitrary Python objects stored beside the tensors. Pickles can run code: only for trusted files.
    """
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:
        raise CheckpointConversionError(
            f"{checkpoint_path} stores Python objects besides tensors, which are not loaded by default because "
            "unpickling can run arbitrary code. If you trust the file, pass allow_pickle=True (--allow_pickle).\n"
            f"{error}"
        ) from error
    if isinstance(checkpoint, Mapping) and "model_state" in checkpoint:
        if "epoch" in checkpoint:
            logger.info("Checkpoint saved at epoch %s", checkpoint["epoch"])
        checkpoint = checkpoint["model_state"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        found = list(checkpoint)[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointConversionError(
            f"{checkpoint_path} is neither {{'model_state': state_dict, ...}} nor a state dict (found {found})"
        )
    return dict(checkpoint)


def convert_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: EpngConfig | None = None,
    text_encoder: str | None = DEFAULT_TEXT_ENCODER,
    tokenizer: str | None = None,
    image_size: int = REFERENCE_EVAL_IMAGE_SIZE,
    overwrite: bool = False,
    allow_pickle: bool = False,
    remote_code: bool = False,
) -> Path:
    """
    Convert an authors' checkpoint into a folder that `EpngForPanopticNarrativeGrounding.from_pretrained` and
    `EpngProcessor.from_pretrained` load.

    Args:
        checkpoint_path (`str` or `os.PathLike`):
            The authors' `.pth` checkpoint.
        output_dir (`str` or `os.PathLike`):
            Folder to write (config.json, model.safetensors, processor and tokenizer files).
        config ([`EpngConfig`], *optional*):
            Target architecture, default the paper's (ResNet-101, BERT-base); the reference switches are set on a copy.
        text_encoder (`str`, *optional*, defaults to `"bert-base-uncased"`):
            Name or path of the pretrained text encoder whose features the checkpoint was trained on. Without
            `config`, its config becomes `text_config`. `None` keeps a randomly initialised text encoder (the model
            then only gives meaningful outputs from precomputed `phrase_features`) and is logged as a warning.
        tokenizer (`str`, *optional*):
            Name or path of the processor's tokenizer; defaults to `text_encoder`. With neither, no processor is
            written.
        image_size (`int`, *optional*, defaults to 1216):
            Square model input size of the processor (the authors evaluate at 1216).
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace an existing `output_dir`.
        allow_pickle (`bool`, *optional*, defaults to `False`):
            See [`load_original_state_dict`].
        remote_code (`bool`, *optional*, defaults to `False`):
            Also add the code files and `auto_map` that let the folder load with `trust_remote_code=True` without
            this package (see [`hub.remote_code.add_remote_code`]).

    Returns:
        `Path`: the written folder.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite, sources=(checkpoint_path,))
    # Everything is loaded and checked in memory first, so a failure never touches the file system.
    original_state_dict = load_original_state_dict(checkpoint_path, allow_pickle)
    text_config = AutoConfig.from_pretrained(text_encoder) if config is None and text_encoder is not None else None
    config = reference_config(config, text_config)
    converted = convert_state_dict(original_state_dict, config)

    model = EpngForPanopticNarrativeGrounding(config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    not_text_encoder = [key for key in missing if not key.startswith(TEXT_ENCODER_PREFIX)]
    if not_text_encoder or unexpected:
        raise CheckpointConversionError(f"Loading left {not_text_encoder} unfilled and {unexpected} unused")
    if text_encoder is not None:
        model.load_text_encoder(text_encoder)
    else:
        logger.warning(
            "No text encoder given: its weights stay random, so the model needs precomputed `phrase_features`"
        )
    tokenizer = tokenizer if tokenizer is not None else text_encoder
    processor = None
    if tokenizer is not None:
        image_processor = EpngImageProcessor(size={"height": image_size, "width": image_size})
        processor = EpngProcessor(
            image_processor=image_processor,
            tokenizer=AutoTokenizer.from_pretrained(tokenizer),
            mask_threshold=model.config.mask_threshold,
        )
    else:
        logger.warning("No tokenizer given: the folder holds the model only, without a processor")

    with staged_output_dir(output_dir, overwrite, sources=(checkpoint_path,)) as folder:
        model.save_pretrained(folder)
        if processor is not None:
            processor.save_pretrained(folder)
        if remote_code:
            add_remote_code(folder)
    logger.info("Wrote the converted model to %s", output_dir)
    return output_dir


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hub.convert_original_checkpoint",
        description="Convert an EPNG checkpoint released by the authors into a from_pretrained-ready folder.",
    )
    parser.add_argument("--checkpoint", required=True, help="The authors' checkpoint (e.g. best_checkpoint.pth).")
    parser.add_argument("--output_dir", required=True, help="Folder to write; must not exist unless --overwrite.")
    text = parser.add_mutually_exclusive_group()
    text.add_argument(
        "--text_encoder",
        default=DEFAULT_TEXT_ENCODER,
        help="Name or path of the text encoder the checkpoint's phrase features came from (default: %(default)s).",
    )
    text.add_argument(
        "--no_text_encoder",
        action="store_true",
        help="Keep a random text encoder (the model then needs precomputed phrase_features).",
    )
    parser.add_argument("--tokenizer", help="Name or path of the processor's tokenizer (default: the text encoder).")
    parser.add_argument(
        "--config",
        help="config.json (or its folder) of the target architecture, if not the paper's ResNet-101 + BERT-base.",
    )
    parser.add_argument(
        "--image_size", type=int, default=REFERENCE_EVAL_IMAGE_SIZE, help="Processor input size (default: %(default)s)."
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output folder.")
    parser.add_argument(
        "--remote_code",
        action="store_true",
        help="Add the model code and auto_map, so the folder loads with trust_remote_code=True without this package.",
    )
    parser.add_argument(
        "--allow_pickle",
        action="store_true",
        help="Unpickle non-tensor objects stored in the checkpoint (runs code from the file: trusted files only).",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    convert_checkpoint(
        args.checkpoint,
        args.output_dir,
        config=EpngConfig.from_pretrained(args.config) if args.config else None,
        text_encoder=None if args.no_text_encoder else args.text_encoder,
        tokenizer=args.tokenizer,
        image_size=args.image_size,
        overwrite=args.overwrite,
        allow_pickle=args.allow_pickle,
        remote_code=args.remote_code,
    )


if __name__ == "__main__":
    main()
