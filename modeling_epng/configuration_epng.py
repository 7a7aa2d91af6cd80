# Copyright 2026 The EPNG Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""EPNG model configuration.

Every hyper-parameter of the EPNG network (Wang et al., "Towards Real-Time Panoptic Narrative Grounding by an
End-to-End Grounding Network", AAAI 2023). Defaults are the paper's; switches named ``*reference*`` reproduce
the authors' public code where it departs from the paper (needed to load their checkpoints exactly).
"""

from __future__ import annotations

import typing

from huggingface_hub.dataclasses import strict, type_validator
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

LPA_DISTANCES = ("euclidean", "squared")
SELF_ATTENTION_TYPES = ("lpa", "mhsa", "mhsa_sine")
LAYER_FORMS = ("paper", "reference")
SAL_VARIANTS = ("paper", "reference")
SAL_DIRECTION_REDUCTIONS = ("sum", "mean")
# tau of the raw dot products (the reference code multiplies them by 0.1) and of cosine similarities (the value of
# MDETR's contrastive alignment, which the paper cites as the inspiration of SAL).
SAL_RAW_TEMPERATURE = 10.0
SAL_NORMALIZED_TEMPERATURE = 0.07
LPA_IMPLEMENTATIONS = ("explicit", "flex")
RESNET101_STAGE_DEPTHS = [3, 4, 23, 3]
# Input sides must be multiples of the network's largest stride (C5, 32), so that every feature map has whole sides
# and P3 is exactly twice P4.
INPUT_SIZE_MULTIPLE = 32
FUSED_STAGES = ["stage2", "stage3", "stage4"]


def small_resnet_backbone_config(hidden_sizes: list[int], depths: list[int] | None = None) -> dict:
    """`backbone_config` of a small basic-block ResNet exposing C3, C4, C5 (demo, tests and benchmarks).

    Args:
        hidden_sizes: channels of the four stages; the stem gets the first one.
        depths: blocks per stage, one each by default.
    """
    return {
        "model_type": "resnet",
        "depths": depths or [1, 1, 1, 1],
        "hidden_sizes": list(hidden_sizes),
        "embedding_size": hidden_sizes[0],
        "layer_type": "basic",
        "out_features": FUSED_STAGES,
    }


def check_input_size(height: int, width: int, what: str = "EPNG input sizes") -> None:
    """Raise `ValueError` unless `height` and `width` are positive multiples of `INPUT_SIZE_MULTIPLE`; the message
    starts with `what`."""
    if height <= 0 or width <= 0 or height % INPUT_SIZE_MULTIPLE or width % INPUT_SIZE_MULTIPLE:
        raise ValueError(
            f"{what} must be positive multiples of {INPUT_SIZE_MULTIPLE} (the network's largest stride), "
            f"got {height}x{width}."
        )


@strict
class EpngConfig(PreTrainedConfig):
    r"""
    Configuration of [`EpngForPanopticNarrativeGrounding`]. The defaults build the paper's model: ResNet-101 + FPN,
    BERT-base (frozen), three 768-d communicator layers with Locality-Perceptive Attention, BCE + Dice + SAL.

    backbone_config (`dict` or `PreTrainedConfig`, *optional*):
        Config of the visual backbone, built through transformers' backbone API (`AutoBackbone.from_config`), so a
        ResNet-50, Swin, ConvNeXt or `timm_backbone` config plugs in unchanged. It must expose three feature maps of
        strides 8, 16 and 32 (C3, C4, C5). Defaults to ResNet-101 with `out_features=["stage2","stage3","stage4"]`.
    text_config (`dict` or `PreTrainedConfig`, *optional*):
        Config of the text encoder (any `AutoModel` encoder returning hidden states). Defaults to BERT-base.
    fpn_channels (`int`, *optional*, defaults to 256):
        Channels of every FPN level (P3, P4, P5).
    hidden_size (`int`, *optional*, defaults to 768):
        Channels C of the fused pixel map and of the phrase embeddings; must equal `3 * fpn_channels` because the
        fusion concatenates P3, P4 and P5.
    num_communicator_layers (`int`, *optional*, defaults to 3):
        Number S of multi-modal communicator layers.
    num_attention_heads (`int`, *optional*, defaults to 8):
        Heads of the LPA and of the cross attention; `hidden_size` must be divisible by it (d_k = 96 by default).
    ffn_dim (`int`, *optional*, defaults to 2048):
        Inner size of the communicator's feed-forward network.
    dropout (`float`, *optional*, defaults to 0.1):
        Dropout on attention outputs and in the feed-forward network.
    attention_dropout (`float`, *optional*, defaults to 0.1):
        Dropout on the attention probabilities of LPA and of the cross attention. The paper does not state it; 0.1 is
        the value of the authors' code.
    layer_norm_eps (`float`, *optional*, defaults to 1e-5):
        Epsilon of the communicator's LayerNorms.
    self_attention_type (`str`, *optional*, defaults to `"lpa"`):
        Pixel self-attention of the communicator: `"lpa"` (Locality-Perceptive Attention), or the ablations of the
        paper's table 2: `"mhsa"` (plain multi-head self-attention) and `"mhsa_sine"` (plus a 2-D sinusoidal
        position embedding added to queries and keys).
    lpa_distance (`str`, *optional*, defaults to `"euclidean"`):
        Distance prior D of LPA: `"euclidean"` (paper: min(||m - n||, truncation)) or `"squared"` (reference code:
        clamp(||m - n||^2, 0, truncation)).
    lpa_truncation (`float`, *optional*, defaults to 2.0):
        Truncation of the LPA distance.
    lpa_weight_init (`float`, *optional*, defaults to 1.0):
        Initial value of the learnable per-head scalar w_j that scales the distance prior.
    lpa_implementation (`str`, *optional*, defaults to `"explicit"`):
        `"explicit"`: logits, prior product and softmax as separate tensors (exact, the fastest path on CPU).
        `"flex"`: `torch.nn.attention.flex_attention` with the prior as a `score_mod` (no (HW)^2 tensor kept).
        It runs fused on CUDA (compiled there) and under `torch.compile` on CPU; CPU training and GPU heads of fewer
        than 16 channels run the explicit path instead.
    communicator_layer_form (`str`, *optional*, defaults to `"paper"`):
        `"paper"`: post-norm layers (residual + LayerNorm after each block). `"reference"`: the authors' code,
        which wraps each attention block in a second residual + LayerNorm (needed for their checkpoints).
    text_pooled_layers (`int`, *optional*, defaults to 4):
        Token features are the mean of the last `text_pooled_layers` hidden layers of the text encoder.
    text_projection_activation (`str`, *optional*, defaults to `"relu6"`):
        Activation after the Linear(text hidden -> hidden_size) phrase projection (`"relu6"`, `"relu"` or
        `"identity"`).
    upsample_align_corners (`bool`, *optional*, defaults to `True`):
        `align_corners` of every bilinear upsampling (fusion, dense head, loss), as in the reference code.
    bce_weight (`float`, *optional*, defaults to 2.0):
        Weight lambda_1 of the binary cross-entropy loss.
    dice_weight (`float`, *optional*, defaults to 2.0):
        Weight lambda_2 of the Dice loss.
    sal_weight (`float`, *optional*, defaults to 1.0):
        Weight lambda_3 of the Semantic Alignment Loss; 0 switches SAL off (and skips computing it).
    dice_eps (`float`, *optional*, defaults to 1e-3):
        Epsilon of the Dice loss 1 - 2 sum(pg) / (sum p^2 + sum g^2 + 2 eps).
    sal_variant (`str`, *optional*, defaults to `"paper"`):
        Form of the Semantic Alignment Loss, with s_ij = f_i . p_j / tau for phrase i and H/4 pixel j, and G+ the
        pixels (or phrases) that a phrase (or pixel) covers:
        `"paper"` (Eq. 13-14): two directions, each the mean over positives of -log softmax; phrase -> pixels
        (softmax over all pixels) and pixel -> phrases (softmax over the sample's real phrases). Its floor is not 0
        but the mean of log|G+| (about 4.5 on the synthetic scenes), reached when a phrase spreads its softmax
        evenly over its pixels.
        `"reference"`: the authors' code, phrase -> pixels only, -log(sum_{j in G+} exp s_ij / sum_k exp s_ik);
        its floor is 0.
    sal_normalize (`bool`, *optional*, defaults to `False`):
        L2-normalise phrase and pixel embeddings before the dot product (cosine similarities, as MDETR's contrastive
        alignment). The floors above stay the same but are only approached (cosines are bounded by 1), and the loss
        no longer rewards growing feature norms. `sal_variant="reference", sal_normalize=True` is the one-way
        normalised form; `sal_variant="paper", sal_normalize=True` the bidirectional one.
    sal_temperature (`float`, *optional*):
        Temperature tau dividing the phrase-pixel similarities in SAL. Defaults to 10.0 (the reference code's 0.1
        factor on raw dot products; the paper does not state a value) and to 0.07 when `sal_normalize` is set. With
        normalised features it must be at most 1: cosines lie in [-1, 1], so a larger tau leaves every softmax
        nearly uniform.
    sal_direction_reduction (`str`, *optional*, defaults to `"sum"`):
        How the paper form combines its two directions: `"sum"` (Eq. 14, l_v + l_t; floor mean log|G+| of both) or
        `"mean"` ((l_v + l_t) / 2, half the floor and half the gradient). Ignored by the one-way `"reference"` form.
    freeze_text_encoder (`bool`, *optional*, defaults to `True`):
        Keep the text encoder frozen (the paper precomputes its features).
    backbone_trainable_stages (`int`, *optional*, defaults to 2):
        Number of last backbone stages that train (2 = C4 and C5 of ResNet); the stem and earlier stages are
        frozen. -1 trains the whole backbone.
    freeze_backbone_batch_norm (`bool`, *optional*, defaults to `True`):
        Replace the backbone's BatchNorm layers with frozen ones (fixed statistics and affine parameters).
    mask_threshold (`float`, *optional*, defaults to 0.5):
        Probability threshold that turns mask probabilities into binary masks.
    init_std (`float`, *optional*, defaults to 0.02):
        Standard deviation of the normal initialisation of the communicator and projection weights.
    """

    model_type = "epng"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="resnet",
            init_kwargs={
                "depths": RESNET101_STAGE_DEPTHS,
                "layer_type": "bottleneck",
                "out_features": FUSED_STAGES,
            },
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    fpn_channels: int = 256
    hidden_size: int = 768
    num_communicator_layers: int = 3
    num_attention_heads: int = 8
    ffn_dim: int = 2048
    dropout: float | int = 0.1
    attention_dropout: float | int = 0.1
    layer_norm_eps: float = 1e-5
    self_attention_type: str = "lpa"
    lpa_distance: str = "euclidean"
    lpa_truncation: float | int = 2.0
    lpa_weight_init: float | int = 1.0
    lpa_implementation: str = "explicit"
    communicator_layer_form: str = "paper"
    text_pooled_layers: int = 4
    text_projection_activation: str = "relu6"
    upsample_align_corners: bool = True
    bce_weight: float | int = 2.0
    dice_weight: float | int = 2.0
    sal_weight: float | int = 1.0
    dice_eps: float = 1e-3
    sal_variant: str = "paper"
    sal_normalize: bool = False
    sal_temperature: float | int | None = None
    sal_direction_reduction: str = "sum"
    freeze_text_encoder: bool = True
    backbone_trainable_stages: int = 2
    freeze_backbone_batch_norm: bool = True
    mask_threshold: float = 0.5
    init_std: float = 0.02

    @classmethod
    def tiny(cls, **overrides) -> EpngConfig:
        """A tiny EPNG for examples, tests and smoke runs: a ResNet of one basic block per stage (16 to 48 channels),
        a 2-layer 32-d BERT with BERT-base's vocabulary, two 48-d communicator layers of 4 heads; 1.1M parameters,
        1.0M of them the word embeddings. `overrides` replace any field and are validated like the others."""
        fields = dict(
            backbone_config=small_resnet_backbone_config([16, 24, 32, 48]),
            text_config={
                "model_type": "bert",
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 64,
            },
            fpn_channels=16,
            hidden_size=48,
            num_communicator_layers=2,
            num_attention_heads=4,
            ffn_dim=64,
            text_pooled_layers=2,
        )
        return cls(**{**fields, **overrides})

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.sal_temperature is None:
            self.sal_temperature = SAL_NORMALIZED_TEMPERATURE if self.sal_normalize else SAL_RAW_TEMPERATURE
        self._check_fields()

    def _check_field_types(self):
        """Raise `TypeError` naming the field and its expected type for a value of the wrong type (e.g. a string
        from `--config_overrides` or a hand-edited config.json). `@strict` cannot check them itself: this module's
        postponed annotations leave the field types as strings. An int is accepted where a float is expected."""
        annotations = vars(EpngConfig)["__annotations__"]
        holder = type("EpngConfigFields", (), {"__annotations__": annotations, "__module__": __name__})
        for name, expected in typing.get_type_hints(holder).items():
            options = (
                typing.get_args(expected) if typing.get_origin(expected) in (typing.Union, type(int | str)) else ()
            )
            if expected is float or (float in options and int not in options):
                expected = expected | int
            value = getattr(self, name)
            try:
                type_validator(name, value, expected)
            except TypeError:
                raise TypeError(
                    f"EpngConfig.{name} must be of type {annotations[name]}, got {value!r} ({type(value).__name__})"
                ) from None

    def _check_fields(self):
        """Raise `ValueError` naming the field for any config that cannot build a working model."""
        self._check_field_types()
        choices = {
            "self_attention_type": SELF_ATTENTION_TYPES,
            "lpa_distance": LPA_DISTANCES,
            "lpa_implementation": LPA_IMPLEMENTATIONS,
            "communicator_layer_form": LAYER_FORMS,
            "sal_variant": SAL_VARIANTS,
            "sal_direction_reduction": SAL_DIRECTION_REDUCTIONS,
            "text_projection_activation": ("relu6", "relu", "identity"),
        }
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"EpngConfig.{field} must be one of {allowed}, got {getattr(self, field)!r}")
        for field in ("fpn_channels", "hidden_size", "num_communicator_layers", "num_attention_heads", "ffn_dim"):
            if getattr(self, field) < 1:
                raise ValueError(f"EpngConfig.{field} must be a positive integer, got {getattr(self, field)}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"EpngConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_size != 3 * self.fpn_channels:
            raise ValueError(
                f"EpngConfig.hidden_size ({self.hidden_size}) must equal 3 * fpn_channels ({3 * self.fpn_channels}): "
                "the fused pixel map concatenates P3, P4 and P5"
            )
        for field in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"EpngConfig.{field} must be in [0, 1), got {getattr(self, field)}")
        if self.lpa_truncation <= 0:
            raise ValueError(f"EpngConfig.lpa_truncation must be positive, got {self.lpa_truncation}")
        if self.sal_temperature <= 0:
            raise ValueError(f"EpngConfig.sal_temperature must be positive, got {self.sal_temperature}")
        if self.sal_normalize and self.sal_temperature > 1:
            raise ValueError(
                f"EpngConfig.sal_temperature ({self.sal_temperature}) must be at most 1 with sal_normalize=True: "
                f"cosine similarities lie in [-1, 1] (typical: {SAL_NORMALIZED_TEMPERATURE})"
            )
        for field in ("bce_weight", "dice_weight", "sal_weight"):
            if getattr(self, field) < 0:
                raise ValueError(f"EpngConfig.{field} must be >= 0, got {getattr(self, field)}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"EpngConfig.mask_threshold must be in (0, 1), got {self.mask_threshold}")
        if self.text_pooled_layers < 1:
            raise ValueError(f"EpngConfig.text_pooled_layers must be >= 1, got {self.text_pooled_layers}")
        num_text_layers = getattr(self.text_config, "num_hidden_layers", None)
        if num_text_layers is not None and self.text_pooled_layers > num_text_layers + 1:
            raise ValueError(
                f"EpngConfig.text_pooled_layers ({self.text_pooled_layers}) exceeds the text encoder's "
                f"{num_text_layers + 1} hidden states"
            )
        out_features = getattr(self.backbone_config, "out_features", None)
        if out_features is not None and len(out_features) != 3:
            raise ValueError(
                f"EpngConfig.backbone_config.out_features must name the three stages of strides 8, 16, 32 "
                f"(C3, C4, C5), got {out_features}"
            )
        if self.backbone_trainable_stages < -1:
            raise ValueError(
                f"EpngConfig.backbone_trainable_stages must be -1 (all) or >= 0, got {self.backbone_trainable_stages}"
            )


__all__ = ["INPUT_SIZE_MULTIPLE", "EpngConfig", "check_input_size", "small_resnet_backbone_config"]
