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
"""Attention blocks of the EPNG multi-modal communicator.

* `EpngLocalityPerceptiveAttention`: self-attention over the pixel tokens of the H/16 x W/16 grid whose logits are
  multiplied element-wise by a per-head distance prior R^j = w_j * D (paper Eq. 5-7). With `use_distance_prior=False`
  it is the plain multi-head self-attention of the ablation.
* `EpngCrossAttention`: pixel tokens attend to the phrase embeddings (padding phrases masked out).

The LPA prior enters *multiplicatively*, so it cannot be handed to `scaled_dot_product_attention` as an additive
mask. On CPU the cheapest exact path is the explicit one: one batched matmul for the logits, an in-place product with
the cached (heads, N, N) prior, softmax, and a second matmul. The `"flex"` path folds the prior into
`torch.nn.attention.flex_attention` as a `score_mod` computed from the token indices, so no (N, N) tensor is kept.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging

from .configuration_epng import EpngConfig

logger = logging.get_logger(__name__)

# Inductor's GPU flex kernel is built on Triton's tl.dot, which needs at least 16 channels per head.
FLEX_GPU_MIN_HEAD_DIM = 16


def lpa_distance_matrix(height: int, width: int, form: str, truncation: float, device=None) -> torch.Tensor:
    """Truncated distance D between the grid cells of an `height` x `width` token map.

    Args:
        height, width: grid size (tokens are numbered row-major).
        form: `"euclidean"` gives min(||m - n||_2, truncation) (paper); `"squared"` gives
            clamp(||m - n||_2^2, 0, truncation) (reference code: 0 for the token itself, 1 for its 4-neighbours).
        truncation: the cap of the distance.

    Returns:
        `torch.FloatTensor` of shape (height * width, height * width).
    """
    # Broadcast + reshape rather than repeat_interleave / repeat: the same values, and the ONNX exporter translates
    # repeat_interleave with a symbolic count into an Expand that onnxruntime rejects.
    grid = (height, width)
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None].expand(grid).reshape(-1)
    cols = torch.arange(width, device=device, dtype=torch.float32)[None, :].expand(grid).reshape(-1)
    squared = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    if form == "squared":
        return squared.clamp(0.0, truncation)
    return squared.sqrt().clamp(max=truncation)


def sine_position_embedding(height: int, width: int, channels: int, device=None, temperature: float = 10000.0):
    """2-D sinusoidal position embedding (half the channels encode the row, half the column).

    Returns:
        `torch.FloatTensor` of shape (height * width, channels), row-major like the pixel tokens.
    """
    half = channels // 2
    frequencies = temperature ** (torch.arange(0, half, 2, device=device, dtype=torch.float32) / half)
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] / frequencies
    cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] / frequencies
    row_embedding = torch.cat([rows.sin(), rows.cos()], dim=-1)[:, :half]
    col_embedding = torch.cat([cols.sin(), cols.cos()], dim=-1)[:, : channels - half]
    grid = torch.cat(
        [
            row_embedding[:, None, :].expand(height, width, half),
            col_embedding[None, :, :].expand(height, width, channels - half),
        ],
        dim=-1,
    )
    return grid.reshape(height * width, channels)


def flex_fallback_reason(device_type: str, head_dim: int, needs_backward: bool, dropout: float = 0.0) -> str | None:
    """Why the fused LPA path cannot run here (the exact explicit path runs instead), or None if it can.

    Args:
        device_type: `"cpu"`, `"cuda"`, ...
        head_dim: channels per attention head.
        needs_backward: whether autograd will differentiate through the attention.
        dropout: the attention-dropout probability in effect (0 in eval mode).
    """
    if device_type == "cpu" and needs_backward:
        return "flex_attention has no CPU backward"
    if device_type != "cpu" and head_dim < FLEX_GPU_MIN_HEAD_DIM:
        return f"flex_attention's GPU kernel needs at least {FLEX_GPU_MIN_HEAD_DIM} channels per head, got {head_dim}"
    if dropout > 0:
        return "flex_attention has no attention dropout"
    return None


def explicit_attention_per_head(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, prior: torch.Tensor
) -> torch.Tensor:
    """softmax((Q K^T) * prior) V computed one sample and head at a time, for CPU inference.

    The logits of one head stay in the CPU's cache: at 640 x 640 they are 1600 x 1600 (5 MB in bf16), those of all
    eight heads 41 MB, which every step (product with the prior, softmax, second matmul) would read again from memory.
    The values are those of the batched computation; on a 2-core AMD EPYC the attention of a layer took 70 ms instead
    of 111 ms (bf16, one thread).

    Args:
        queries, keys, values: (B, heads, N, d_k).
        prior: (heads, N, N), in the dtype of the queries.

    Returns:
        (B, heads, N, d_k).
    """
    batch_size, num_heads = queries.shape[:2]
    attended = torch.empty_like(values)
    for sample in range(batch_size):
        for head in range(num_heads):
            logits = torch.mm(queries[sample, head], keys[sample, head].T).mul_(prior[head])
            attended[sample, head] = torch.mm(logits.softmax(dim=-1), values[sample, head])
    return attended


@functools.cache
def compiled_flex_attention():
    """`flex_attention` compiled once. Called eagerly it is an unfused reference path that materialises the scores."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


class EpngMultiHeadProjections(nn.Module):
    """Query/key/value/output projections shared by both attention kinds (d_k = d_v = hidden_size / heads)."""

    def __init__(self, config: EpngConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def split_heads(self, projection: nn.Linear, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, heads, L, d_k)."""
        batch_size, length, _ = hidden_states.shape
        return projection(hidden_states).view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, heads_output: torch.Tensor) -> torch.Tensor:
        """(B, heads, L, d_v) -> output projection of shape (B, L, C)."""
        batch_size, _, length, _ = heads_output.shape
        return self.out_proj(heads_output.transpose(1, 2).reshape(batch_size, length, -1))


class EpngLocalityPerceptiveAttention(EpngMultiHeadProjections):
    """Locality-Perceptive Attention over the pixel tokens: softmax((Q K^T / sqrt(d_k)) * (w_j D)) V per head j."""

    def __init__(self, config: EpngConfig, use_distance_prior: bool = True):
        super().__init__(config)
        self.use_distance_prior = use_distance_prior
        self.distance_form = config.lpa_distance
        self.truncation = float(config.lpa_truncation)
        self.implementation = config.lpa_implementation
        self.attention_dropout = config.attention_dropout
        if use_distance_prior:
            self.distance_weights = nn.Parameter(torch.full((self.num_heads,), float(config.lpa_weight_init)))
        self._distance_cache: dict[tuple, torch.Tensor] = {}
        self._prior_cache: tuple[tuple, torch.Tensor] | None = None

    def distance_matrix(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """The (N, N) distance prior D, computed once per grid size and device and cached."""
        if not (isinstance(height, int) and isinstance(width, int)):
            # Symbolic sizes (torch.export with a dynamic image size): part of the graph, which no cache can hold.
            return lpa_distance_matrix(height, width, self.distance_form, self.truncation, device)
        key = (height, width, str(device))
        if key not in self._distance_cache:
            # A normal tensor even when first asked for under inference_mode: an inference tensor in the cache could
            # not be saved for the backward of a later training step.
            with torch.inference_mode(False):
                distances = lpa_distance_matrix(height, width, self.distance_form, self.truncation, device)
            self._distance_cache[key] = distances
        return self._distance_cache[key]

    def scaled_prior(self, grid_size: tuple[int, int], scale: float, dtype: torch.dtype) -> torch.Tensor:
        """(heads, N, N) prior w_j * D / sqrt(d_k) in `dtype`. Without autograd it is kept for the next call while the
        weights stay the same (same grid, device, dtype and `distance_weights` version): at inference the product and
        its cast took two passes over a (heads, N, N) tensor per layer and call."""
        weights = self.distance_weights
        distances = self.distance_matrix(*grid_size, weights.device)
        if torch.is_grad_enabled() or not isinstance(grid_size[0], int) or torch.compiler.is_compiling():
            return ((weights * scale)[:, None, None] * distances).to(dtype)
        key = (*grid_size, str(weights.device), dtype, scale, weights.data_ptr(), weights._version)
        if self._prior_cache is None or self._prior_cache[0] != key:
            with torch.inference_mode(False):
                prior = ((weights.detach() * scale)[:, None, None] * distances).to(dtype)
            self._prior_cache = (key, prior)
        return self._prior_cache[1]

    def forward(
        self,
        hidden_states: torch.Tensor,
        grid_size: tuple[int, int],
        position_embeddings: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            hidden_states: pixel tokens (B, N, C), N = h * w, row-major over the grid.
            grid_size: (h, w) of the token grid.
            position_embeddings: optional (N, C) added to the queries' and keys' inputs (ablation `mhsa_sine`).
            output_attentions: also return the attention probabilities.

        Returns:
            The attended tokens (B, N, C) and, if asked, the probabilities (B, heads, N, N).
        """
        query_input = hidden_states if position_embeddings is None else hidden_states + position_embeddings
        queries = self.split_heads(self.q_proj, query_input)
        keys = self.split_heads(self.k_proj, query_input)
        values = self.split_heads(self.v_proj, hidden_states)
        dropout = self.attention_dropout if self.training else 0.0

        use_flex = self.use_distance_prior and self.implementation == "flex" and not output_attentions
        if use_flex:
            reason = flex_fallback_reason(hidden_states.device.type, self.head_dim, torch.is_grad_enabled(), dropout)
            if reason is not None:
                logger.warning_once(f"lpa_implementation='flex' runs the explicit LPA path instead: {reason}.")
                use_flex = False
        if output_attentions or (self.use_distance_prior and not use_flex):
            # 1/sqrt(d_k) is folded into the (heads, N, N) prior, whose size does not grow with the batch, so the
            # (B, heads, N, N) logits take one pass for scale and prior, in place when no autograd graph needs them.
            scale = 1.0 / math.sqrt(self.head_dim)
            one_head_at_a_time = not (output_attentions or torch.is_grad_enabled() or torch.compiler.is_compiling())
            one_head_at_a_time &= self.use_distance_prior and dropout == 0 and hidden_states.device.type == "cpu"
            if one_head_at_a_time:
                prior = self.scaled_prior(grid_size, scale, queries.dtype)
                return self.merge_heads(explicit_attention_per_head(queries, keys, values, prior)), None
            logits = torch.matmul(queries, keys.transpose(-1, -2))
            if self.use_distance_prior:
                scale = self.scaled_prior(grid_size, scale, logits.dtype)
            logits = logits.mul_(scale) if not torch.is_grad_enabled() else logits * scale
            probabilities = logits.softmax(dim=-1)
            attended = torch.matmul(F.dropout(probabilities, dropout, self.training), values)
            return self.merge_heads(attended), probabilities if output_attentions else None

        if self.use_distance_prior:
            attended = self._flex_attention(queries, keys, values, grid_size)
        else:
            attended = F.scaled_dot_product_attention(queries, keys, values, dropout_p=dropout)
        return self.merge_heads(attended), None

    def _flex_attention(self, queries, keys, values, grid_size) -> torch.Tensor:
        """LPA through `flex_attention`: the prior is recomputed from token indices inside the kernel."""
        from torch.nn.attention.flex_attention import flex_attention

        _, width = grid_size
        weights = self.distance_weights
        truncation = self.truncation
        squared_form = self.distance_form == "squared"

        def locality_prior(score, batch, head, query_index, key_index):
            row_offset = query_index // width - key_index // width
            col_offset = query_index % width - key_index % width
            squared = (row_offset * row_offset + col_offset * col_offset).to(score.dtype)
            distance = squared.clamp(max=truncation) if squared_form else squared.sqrt().clamp(max=truncation)
            return score * weights[head].to(score.dtype) * distance

        # Inductor's CPU flex template (torch 2.13) cannot lower the strided per-head views: give it contiguous ones.
        queries, keys, values = queries.contiguous(), keys.contiguous(), values.contiguous()
        if queries.device.type == "cuda" and not torch.compiler.is_compiling():
            # Eager flex_attention would run the unfused reference path; inside a compiled model dynamo traces it.
            return compiled_flex_attention()(queries, keys, values, score_mod=locality_prior)
        return flex_attention(queries, keys, values, score_mod=locality_prior)


class EpngCrossAttention(EpngMultiHeadProjections):
    """Multi-head attention from pixel tokens (queries) to phrase embeddings (keys and values)."""

    def __init__(self, config: EpngConfig):
        super().__init__(config)
        self.attention_dropout = config.attention_dropout

    def forward(
        self, pixel_tokens: torch.Tensor, phrase_embeddings: torch.Tensor, phrase_mask: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            pixel_tokens: (B, N, C) queries.
            phrase_embeddings: (B, P, C) keys and values.
            phrase_mask: (B, P) bool, False for padding phrases.

        Returns:
            (B, N, C). A sample without any real phrase gets a zero attention output (instead of the NaN of a
            softmax over an all-masked row), so its pixels pass through the residual unchanged.
        """
        queries = self.split_heads(self.q_proj, pixel_tokens)
        keys = self.split_heads(self.k_proj, phrase_embeddings)
        values = self.split_heads(self.v_proj, phrase_embeddings)
        has_phrase = phrase_mask.any(dim=1)
        # Rows of a phrase-less sample see every (padding) key so the softmax stays finite; zeroed below.
        key_mask = (phrase_mask | ~has_phrase[:, None])[:, None, None, :]
        attended = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=key_mask, dropout_p=self.attention_dropout if self.training else 0.0
        )
        output = self.merge_heads(attended)
        return output * has_phrase[:, None, None].to(output.dtype)
