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
"""EPNG: one-stage Panoptic Narrative Grounding network.

Data flow (shapes for an H x W input, C = hidden_size):

1. `EpngVisualEncoder` (visual_encoder.py): backbone C3, C4, C5 -> FPN P3, P4, P5 (fpn_channels each) -> fused pixel map
   concat[avgpool(P3), P4, upsample(P5)] of shape (B, C, H/16, W/16).
2. `EpngPhraseEncoder`: frozen text encoder -> token features (mean of the last hidden layers) -> phrase features
   (mean over each phrase's tokens) -> Linear + ReLU6 -> phrase embeddings (B, P, C).
3. `EpngCommunicator` (communicator.py): S layers of [LPA over pixel tokens, cross attention pixels -> phrases, FFN].
4. Dense head: pixel map upsampled 4x to (B, C, H/4, W/4); each phrase embedding is a 1x1 kernel over it, giving
   mask logits (B, P, H/4, W/4).
5. Loss (when `mask_labels` are given): BCE + Dice on probabilities upsampled to H x W, SAL at H/4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .attention import EpngLocalityPerceptiveAttention
from .communicator import EpngCommunicator
from .configuration_epng import EpngConfig, check_input_size
from .losses import (
    mask_bce_loss,
    mask_dice_loss,
    pool_targets,
    prepare_mask_targets,
    semantic_alignment_loss,
)
from .visual_encoder import EpngVisualEncoder, backbone_stages

FUSED_STRIDE = 16
MASK_STRIDE = 4


def resize_maps(maps: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Bilinear resize of (B, K, h, w) maps to (B, K, *size); K = 0 (a batch without phrases) gives an empty result
    that stays attached to the graph, where `F.interpolate` would raise."""
    if maps.shape[1] == 0:
        return maps.new_zeros((*maps.shape[:2], *size)) + maps.sum()
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=align_corners)


@dataclass
class EpngOutput(ModelOutput):
    """
    Output of [`EpngForPanopticNarrativeGrounding`]. As for every `ModelOutput`, the tuple form (`return_dict=False`)
    holds the fields that are not `None`, in the order below: without `mask_labels` it starts at `mask_logits`, and
    with `sal_weight=0` it has no `sal_loss`. Index by name to be independent of the configuration.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Weighted total loss `bce_weight * bce_loss + dice_weight * dice_loss + sal_weight * sal_loss`, returned
            when `mask_labels` are given.
        bce_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Unweighted binary cross-entropy over the real phrases' masks at the input resolution, returned when
            `mask_labels` are given.
        dice_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Unweighted Dice loss over the real phrases' masks at the input resolution, returned when `mask_labels`
            are given.
        sal_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Unweighted Semantic Alignment Loss at a quarter of the input resolution, returned when `mask_labels` are
            given and `sal_weight` is above 0.
        mask_logits (`torch.FloatTensor` of shape `(batch_size, num_phrases, height / 4, width / 4)`):
            Mask logits of every phrase slot, padding slots included (select the real ones with `phrase_mask`).
        phrase_embeddings (`torch.FloatTensor` of shape `(batch_size, num_phrases, hidden_size)`):
            Phrase embeddings, the dynamic 1x1 kernels of the dense head.
        pixel_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size, height / 4, width / 4)`, *optional*):
            Pixel features after the communicator, upsampled to a quarter of the input resolution; returned unless
            `output_pixel_embeddings=False` (the default of the inference fast path) without `mask_labels`.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The pixel tokens entering the first communicator layer and leaving each layer
            (`num_communicator_layers + 1` tensors of shape `(batch_size, height / 16 * width / 16, hidden_size)`,
            tokens in row-major order over the grid), returned when `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            The Locality-Perceptive Attention probabilities of each communicator layer (`num_communicator_layers`
            tensors of shape `(batch_size, num_attention_heads, height / 16 * width / 16, height / 16 * width / 16)`),
            returned when `output_attentions=True`.
    """

    loss: torch.FloatTensor | None = None
    bce_loss: torch.FloatTensor | None = None
    dice_loss: torch.FloatTensor | None = None
    sal_loss: torch.FloatTensor | None = None
    mask_logits: torch.FloatTensor | None = None
    phrase_embeddings: torch.FloatTensor | None = None
    pixel_embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class EpngPhraseEncoder(nn.Module):
    """Text encoder + phrase pooling + projection to the communicator width."""

    def __init__(self, config: EpngConfig):
        super().__init__()
        self.pooled_layers = config.text_pooled_layers
        try:
            self.text_encoder = AutoModel.from_config(config.text_config, add_pooling_layer=False)
        except TypeError:
            self.text_encoder = AutoModel.from_config(config.text_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.hidden_size)
        activations = {"relu6": nn.ReLU6(), "relu": nn.ReLU(), "identity": nn.Identity()}
        self.activation = activations[config.text_projection_activation]

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) tokens -> (B, T, D_text) token features: the mean of the text encoder's last `text_pooled_layers`
        hidden states, what the phrases are pooled from."""
        encoded = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return torch.stack(encoded.hidden_states[-self.pooled_layers :]).mean(dim=0)

    @staticmethod
    def pool_token_features(token_features: torch.Tensor, phrase_ids: torch.Tensor, num_phrases: int) -> torch.Tensor:
        """(B, T, D_text) token features + (B, T) phrase index per token (-1 for none) -> (B, P, D_text): the mean
        over each phrase's tokens, zeros for phrases without tokens."""
        membership = (phrase_ids[:, :, None] == torch.arange(num_phrases, device=phrase_ids.device)).to(
            token_features.dtype
        )
        sums = torch.einsum("btp,btd->bpd", membership, token_features)
        return sums / membership.sum(dim=1).clamp(min=1)[:, :, None]

    def pool_phrases(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, phrase_ids: torch.Tensor, num_phrases: int
    ) -> torch.Tensor:
        """Text-encoder phrase features before the projection.

        Args:
            input_ids, attention_mask: (B, T).
            phrase_ids: (B, T) long, the phrase index of every token, -1 for none.
            num_phrases: P.

        Returns:
            (B, P, D_text): mean over each phrase's tokens of the mean of the last `text_pooled_layers` hidden
            states; zeros for phrases without tokens.
        """
        return self.pool_token_features(self.encode_tokens(input_ids, attention_mask), phrase_ids, num_phrases)

    def forward(self, phrase_features: torch.Tensor) -> torch.Tensor:
        """(B, P, D_text) pooled features -> phrase embeddings F_N (B, P, C)."""
        return self.activation(self.text_projection(phrase_features))


class EpngPreTrainedModel(PreTrainedModel):
    config_class = EpngConfig
    config: EpngConfig
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=1)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, EpngLocalityPerceptiveAttention) and module.use_distance_prior:
            init.constant_(module.distance_weights, float(self.config.lpa_weight_init))


class EpngForPanopticNarrativeGrounding(EpngPreTrainedModel):
    """EPNG: grounds every phrase of a narrative to a binary mask in one stage (no mask proposals)."""

    def __init__(self, config: EpngConfig):
        super().__init__(config)
        self.visual_encoder = EpngVisualEncoder(config)
        self.phrase_encoder = EpngPhraseEncoder(config)
        self.communicator = EpngCommunicator(config)
        self.post_init()
        self.apply_freezing()

    def apply_freezing(self) -> None:
        """Set `requires_grad` per the config's freezing policy (text encoder, early backbone stages)."""
        text_encoder = self.phrase_encoder.text_encoder
        text_encoder.requires_grad_(not self.config.freeze_text_encoder)
        backbone = self.visual_encoder.backbone
        trainable_stages = self.config.backbone_trainable_stages
        backbone.requires_grad_(trainable_stages == -1)
        if trainable_stages > 0:
            stages = backbone_stages(backbone)
            for stage in stages[max(len(stages) - trainable_stages, 0) :]:
                stage.requires_grad_(True)

    def train(self, mode: bool = True):
        """Like `nn.Module.train`, but a frozen text encoder stays in eval mode (no dropout on fixed features)."""
        super().train(mode)
        if self.config.freeze_text_encoder:
            self.phrase_encoder.text_encoder.eval()
        return self

    def load_text_encoder(self, name_or_path: str, **kwargs) -> None:
        """Load pretrained text-encoder weights (e.g. BERT-base or the MiniLM folder) into the phrase encoder.

        The config's `text_config` must describe the same architecture; every encoder weight must be found.
        """
        pretrained = AutoModel.from_pretrained(name_or_path, **kwargs)
        state = {key: value for key, value in pretrained.state_dict().items() if not key.startswith("pooler.")}
        missing, unexpected = self.phrase_encoder.text_encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"Text encoder at {name_or_path!r} does not match EpngConfig.text_config: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    def get_input_embeddings(self) -> nn.Module:
        """The word embeddings of the text encoder (what PEFT and `enable_input_require_grads` hook into)."""
        return self.phrase_encoder.text_encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.phrase_encoder.text_encoder.set_input_embeddings(value)

    def parameter_report(self) -> dict[str, int]:
        """Parameter counts: total, trainable, text encoder, backbone + FPN, communicator, head (projection)."""

        def count(module: nn.Module) -> int:
            return sum(parameter.numel() for parameter in module.parameters())

        return {
            "total": count(self),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "text_encoder": count(self.phrase_encoder.text_encoder),
            "backbone": count(self.visual_encoder.backbone),
            "fpn": count(self.visual_encoder) - count(self.visual_encoder.backbone),
            "communicator": count(self.communicator),
            "text_projection": count(self.phrase_encoder.text_projection),
            "without_text_encoder": count(self) - count(self.phrase_encoder.text_encoder),
        }

    def optimize_for_inference(
        self,
        dtype: str = "auto",
        compile: bool = False,
        channels_last: bool = True,
        fold_batch_norms: bool = True,
        use_artifact: bool = True,
    ) -> EpngForPanopticNarrativeGrounding:
        """Prepare the model for inference, in place, and return it: bf16 autocast where the hardware computes bf16
        natively (`dtype="auto"`), channels_last, batch norms folded into the convolutions, the artefact exported
        next to the weights when it matches the machine, else optionally `torch.compile`. In fp32 the probabilities
        stay within 1e-5 of fp32 eager; bf16 moves those of a trained model's mask-boundary pixels by more than 1e-2
        (see `modeling_epng/inference.py`)."""
        from .inference import optimize_for_inference

        return optimize_for_inference(self, dtype, compile, channels_last, fold_batch_norms, use_artifact)

    def get_token_features(
        self, input_ids: torch.LongTensor, attention_mask: torch.LongTensor | None = None
    ) -> torch.FloatTensor:
        """
        The text encoder's features of every token, from which `forward` pools the phrases: pass them back as
        `token_features` (with the same `input_ids` and the `phrase_ids`) to skip the text encoder there. This lets
        the text encoder run before the phrases are known (the pipeline parses the narrative in another process
        meanwhile); the result equals a plain forward's.

        Args:
            input_ids, attention_mask (`torch.LongTensor` of shape `(B, T)`): the tokenized narratives.

        Returns:
            `torch.FloatTensor` of shape `(B, T, D_text)`.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.phrase_encoder.encode_tokens(input_ids, attention_mask)

    def upsample_to_mask_stride(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, K, H/16, W/16) -> (B, K, H/4, W/4), bilinear."""
        height, width = feature_map.shape[-2:]
        scale = FUSED_STRIDE // MASK_STRIDE
        return resize_maps(feature_map, (height * scale, width * scale), self.config.upsample_align_corners)

    def _check_inputs(
        self, pixel_values, input_ids, attention_mask, phrase_ids, phrase_mask, phrase_features, mask_labels
    ):
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must have shape (B, 3, H, W), got {tuple(pixel_values.shape)}")
        height, width = pixel_values.shape[-2:]
        check_input_size(height, width, "pixel_values height and width")
        batch_size = pixel_values.shape[0]
        if phrase_mask.dim() != 2 or phrase_mask.shape[0] != batch_size:
            raise ValueError(f"phrase_mask must have shape (B={batch_size}, P), got {tuple(phrase_mask.shape)}")
        num_phrases = phrase_mask.shape[1]
        if phrase_features is not None:
            if phrase_features.shape[:2] != (batch_size, num_phrases):
                raise ValueError(
                    f"phrase_features must have shape (B={batch_size}, P={num_phrases}, D), "
                    f"got {tuple(phrase_features.shape)}"
                )
        elif input_ids is None or phrase_ids is None:
            raise ValueError("Pass either phrase_features, or input_ids with phrase_ids")
        elif phrase_ids.shape != input_ids.shape or input_ids.shape[0] != batch_size:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and phrase_ids {tuple(phrase_ids.shape)} must both be (B, T) "
                f"with B={batch_size}"
            )
        elif phrase_ids.numel() and int(phrase_ids.max()) >= num_phrases:
            raise ValueError(f"phrase_ids refers to phrase {int(phrase_ids.max())} but phrase_mask has P={num_phrases}")
        max_positions = getattr(self.config.text_config, "max_position_embeddings", None)
        if phrase_features is None and max_positions is not None and input_ids.shape[1] > max_positions:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens but the text encoder embeds at most {max_positions} "
                f"(text_config.max_position_embeddings): tokenize with max_length <= {max_positions}"
            )
        if attention_mask is not None and input_ids is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}"
            )
        # One reduction over the input; skipped while compiling or exporting, where it would be a data-dependent branch.
        if not (torch.compiler.is_compiling() or torch.jit.is_tracing()) and not torch.isfinite(pixel_values).all():
            raise ValueError("pixel_values contains NaN or infinite values: check the image loading and normalisation")
        if mask_labels is not None and (mask_labels.dim() != 4 or mask_labels.shape[:2] != (batch_size, num_phrases)):
            raise ValueError(
                f"mask_labels must have shape (B={batch_size}, P={num_phrases}, H', W'), got {tuple(mask_labels.shape)}"
            )

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        phrase_ids: torch.LongTensor | None = None,
        phrase_mask: torch.BoolTensor | None = None,
        mask_labels: torch.Tensor | None = None,
        phrase_features: torch.FloatTensor | None = None,
        token_features: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | list[int] | None = None,
        return_dict: bool | None = None,
        output_pixel_embeddings: bool = True,
    ) -> EpngOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`): normalised images, H and W multiples of 32.
            input_ids, attention_mask (`torch.LongTensor` of shape `(B, T)`): the tokenized narratives.
            phrase_ids (`torch.LongTensor` of shape `(B, T)`): 0-based phrase index of every token, -1 for none.
            phrase_mask (`torch.BoolTensor` of shape `(B, P)`): True for real phrases, False for padding slots.
                Defaults to `P = max(phrase_ids) + 1` real phrases per sample (or all slots of `phrase_features`).
            mask_labels (`torch.BoolTensor` or 0/1 `torch.FloatTensor` of shape `(B, P, H', W')`, *optional*):
                ground-truth masks at any resolution; they are resized to H x W (bilinear, re-binarised at 0.5) for
                the loss.
            phrase_features (`torch.FloatTensor` of shape `(B, P, D_text)`, *optional*): pooled text-encoder
                features; when given, the text encoder is skipped (cached-feature training).
            token_features (`torch.FloatTensor` of shape `(B, T, D_text)`, *optional*): the text encoder's features of
                `input_ids` ([`get_token_features`]); the phrases are pooled from them by `phrase_ids` and the text
                encoder is skipped.
            output_attentions (`bool`, *optional*): return the LPA probabilities of every communicator layer as
                `attentions`; defaults to `config.output_attentions`.
            output_hidden_states (`bool` or `list[int]`, *optional*): return the communicator's pixel tokens as
                `hidden_states` (a list of indices keeps only those entries, the others are `None`); defaults to
                `config.output_hidden_states`.
            return_dict (`bool`, *optional*): return an `EpngOutput` (default) or a tuple.
            output_pixel_embeddings (`bool`, *optional*, defaults to `True`): return `pixel_embeddings`. Masks do not
                need them, and at 640 x 640 they are a (B, 768, 160, 160) upsampling, so the inference fast path
                (`optimize_for_inference`) passes False unless asked; with `mask_labels` they are always computed.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if phrase_mask is None:
            if phrase_features is not None:
                phrase_mask = torch.ones(phrase_features.shape[:2], dtype=torch.bool, device=pixel_values.device)
            elif phrase_ids is not None:
                num_phrases = int(phrase_ids.max()) + 1 if phrase_ids.numel() else 0
                slots = torch.arange(max(num_phrases, 0), device=phrase_ids.device)
                phrase_mask = (phrase_ids[:, :, None] == slots).any(dim=1)
        if phrase_mask is None:
            raise ValueError("Pass either phrase_features, or input_ids with phrase_ids")
        phrase_mask = phrase_mask.bool()
        self._check_inputs(
            pixel_values, input_ids, attention_mask, phrase_ids, phrase_mask, phrase_features, mask_labels
        )
        if phrase_features is None and token_features is not None and token_features.shape[:2] != input_ids.shape:
            raise ValueError(
                f"token_features must have shape (B, T, D) with (B, T) = input_ids' {tuple(input_ids.shape)}, "
                f"got {tuple(token_features.shape)}"
            )

        if phrase_features is None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text_encoder):
                if token_features is None:
                    token_features = self.phrase_encoder.encode_tokens(input_ids, attention_mask)
                phrase_features = self.phrase_encoder.pool_token_features(
                    token_features, phrase_ids, phrase_mask.shape[1]
                )
        phrase_embeddings = self.phrase_encoder(phrase_features.to(self.phrase_encoder.text_projection.weight.dtype))

        pixel_map = self.visual_encoder(pixel_values)
        pixel_map, hidden_states, attentions = self.communicator(
            pixel_map, phrase_embeddings, phrase_mask, output_attentions, output_hidden_states
        )
        pixel_embeddings = None
        if output_pixel_embeddings or mask_labels is not None:
            pixel_embeddings = self.upsample_to_mask_stride(pixel_map)
        # Bilinear upsampling is linear and the same for every channel, so dotting the phrases with the upsampled map
        # equals upsampling their dot products with the fused map: 16x fewer multiply-adds, and a form Inductor
        # compiles when image size and phrase count are both symbolic (the other order fails to lower in torch 2.13).
        mask_logits = self.upsample_to_mask_stride(torch.einsum("bpc,bchw->bphw", phrase_embeddings, pixel_map))

        losses = {}
        if mask_labels is not None:
            losses = self.compute_loss(
                mask_logits, phrase_embeddings, pixel_embeddings, mask_labels, phrase_mask, pixel_values.shape[-2:]
            )
        output = EpngOutput(
            mask_logits=mask_logits,
            phrase_embeddings=phrase_embeddings,
            pixel_embeddings=pixel_embeddings,
            hidden_states=hidden_states,
            attentions=attentions,
            **losses,
        )
        return output if return_dict else output.to_tuple()

    def compute_loss(
        self,
        mask_logits: torch.Tensor,
        phrase_embeddings: torch.Tensor,
        pixel_embeddings: torch.Tensor,
        mask_labels: torch.Tensor,
        phrase_mask: torch.Tensor,
        input_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """BCE and Dice at the input size, SAL at the H/4 map; returns `loss` and the unweighted terms.

        Always computed in float32, also under autocast or for a half-precision model: in float16 the sigmoid of a
        confident logit rounds to exactly 0 or 1 and BCE saturates.
        """
        with torch.autocast(mask_logits.device.type, enabled=False):
            return self._compute_loss_float32(
                mask_logits.float(),
                phrase_embeddings.float(),
                pixel_embeddings.float(),
                mask_labels,
                phrase_mask,
                input_size,
            )

    def _compute_loss_float32(
        self, mask_logits, phrase_embeddings, pixel_embeddings, mask_labels, phrase_mask, input_size
    ) -> dict[str, torch.Tensor]:
        config = self.config
        targets = prepare_mask_targets(mask_labels, tuple(input_size), config.upsample_align_corners)
        # interpolating saturated probabilities can overshoot 1 by an ulp, which BCE rejects
        mask_probs = resize_maps(mask_logits.sigmoid(), tuple(input_size), config.upsample_align_corners).clamp(0, 1)
        bce = mask_bce_loss(mask_probs, targets, phrase_mask)
        dice = mask_dice_loss(mask_probs, targets, phrase_mask, config.dice_eps)
        losses = {"bce_loss": bce, "dice_loss": dice}
        total = config.bce_weight * bce + config.dice_weight * dice
        if config.sal_weight > 0:
            sal = semantic_alignment_loss(
                phrase_embeddings,
                pixel_embeddings,
                pool_targets(targets, MASK_STRIDE),
                phrase_mask,
                config.sal_temperature,
                config.sal_variant,
                config.sal_normalize,
                config.sal_direction_reduction,
            )
            losses["sal_loss"] = sal
            total = total + config.sal_weight * sal
        losses["loss"] = total
        return losses


__all__ = [
    "EpngForPanopticNarrativeGrounding",
    "EpngOutput",
    "EpngPreTrainedModel",
]
