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
"""The multi-modal communicator of EPNG: S layers of [LPA over pixel tokens, cross attention to phrases, FFN].

Shapes: pixel tokens (B, N, C) with N = H/16 * W/16 grid cells, phrase embeddings (B, P, C), phrase mask (B, P).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import EpngCrossAttention, EpngLocalityPerceptiveAttention, sine_position_embedding
from .configuration_epng import EpngConfig


class EpngAttentionBlock(nn.Module):
    """`LayerNorm(x + dropout(attention(x, ...)))`."""

    def __init__(self, config: EpngConfig, attention: nn.Module):
        super().__init__()
        self.attention = attention
        self.dropout = nn.Dropout(config.dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended = self.attention(hidden_states, *args, **kwargs)
        attended, probabilities = attended if isinstance(attended, tuple) else (attended, None)
        return self.layer_norm(hidden_states + self.dropout(attended)), probabilities


class EpngFeedForward(nn.Module):
    """`LayerNorm(x + dropout(fc2(dropout(relu(fc1(x))))))`."""

    def __init__(self, config: EpngConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.hidden_size)
        self.inner_dropout = nn.Dropout(config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        transformed = self.fc2(self.inner_dropout(F.relu(self.fc1(hidden_states))))
        return self.layer_norm(hidden_states + self.dropout(transformed))


class EpngCommunicatorLayer(nn.Module):
    """LPA over pixel tokens, cross attention to phrases, FFN; each with residual + LayerNorm.

    With `communicator_layer_form="reference"` each attention block is wrapped once more as
    `outer_norm(x + dropout(block(x)))`, as in the authors' code.
    """

    def __init__(self, config: EpngConfig):
        super().__init__()
        use_prior = config.self_attention_type == "lpa"
        self.self_attention = EpngAttentionBlock(config, EpngLocalityPerceptiveAttention(config, use_prior))
        self.cross_attention = EpngAttentionBlock(config, EpngCrossAttention(config))
        self.feed_forward = EpngFeedForward(config)
        self.reference_form = config.communicator_layer_form == "reference"
        if self.reference_form:
            self.self_attention_outer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.cross_attention_outer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.outer_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        pixel_tokens: torch.Tensor,
        grid_size: tuple[int, int],
        phrase_embeddings: torch.Tensor,
        phrase_mask: torch.Tensor,
        position_embeddings: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """pixel_tokens (B, N, C) -> (B, N, C), and the LPA probabilities (B, heads, N, N) if asked."""
        attended, probabilities = self.self_attention(pixel_tokens, grid_size, position_embeddings, output_attentions)
        if self.reference_form:
            attended = self.self_attention_outer_norm(pixel_tokens + self.outer_dropout(attended))
        crossed, _ = self.cross_attention(attended, phrase_embeddings, phrase_mask)
        if self.reference_form:
            crossed = self.cross_attention_outer_norm(attended + self.outer_dropout(crossed))
        return self.feed_forward(crossed), probabilities


class EpngCommunicator(nn.Module):
    """S communicator layers over the flattened H/16 x W/16 pixel map."""

    def __init__(self, config: EpngConfig):
        super().__init__()
        self.layers = nn.ModuleList(EpngCommunicatorLayer(config) for _ in range(config.num_communicator_layers))
        self.use_position_embeddings = config.self_attention_type == "mhsa_sine"
        self._position_cache: dict[tuple, torch.Tensor] = {}

    def position_embeddings(self, height: int, width: int, channels: int, device) -> torch.Tensor:
        key = (height, width, channels, str(device))
        if key not in self._position_cache:
            with torch.inference_mode(False):  # a normal tensor: see EpngLocalityPerceptiveAttention.distance_matrix
                self._position_cache[key] = sine_position_embedding(height, width, channels, device)
        return self._position_cache[key]

    def forward(
        self,
        pixel_map: torch.Tensor,
        phrase_embeddings: torch.Tensor,
        phrase_mask: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool | Sequence[int] = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...] | None, tuple[torch.Tensor, ...] | None]:
        """pixel_map (B, C, h, w) -> (B, C, h, w), plus, if asked, the pixel tokens (B, h * w, C) entering the first
        layer and leaving every layer (S + 1 tensors), and the LPA probabilities (B, heads, h * w, h * w) of every
        layer (S tensors). `output_hidden_states` may list the indices to keep (negative ones count from the end),
        as in transformers; the other entries are then `None`."""
        batch_size, channels, height, width = pixel_map.shape
        tokens = pixel_map.flatten(2).transpose(1, 2)
        positions = None
        if self.use_position_embeddings:
            positions = self.position_embeddings(height, width, channels, pixel_map.device).to(tokens.dtype)
        hidden_states, attentions = [tokens], []
        for layer in self.layers:
            tokens, probabilities = layer(
                tokens, (height, width), phrase_embeddings, phrase_mask, positions, output_attentions
            )
            hidden_states.append(tokens)
            attentions.append(probabilities)
        pixel_map = tokens.transpose(1, 2).reshape(batch_size, channels, height, width)
        if isinstance(output_hidden_states, Sequence):
            kept = {index % len(hidden_states) for index in output_hidden_states}
            hidden_states = [state if index in kept else None for index, state in enumerate(hidden_states)]
        elif not output_hidden_states:
            hidden_states = None
        return (
            pixel_map,
            None if hidden_states is None else tuple(hidden_states),
            tuple(attentions) if output_attentions else None,
        )
