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
"""EPNG training losses: L = lambda_1 BCE + lambda_2 Dice + lambda_3 SAL (paper Eq. 12-15).

Every loss is computed per sample over its real phrases and averaged over the samples that have at least one term,
so padding phrases, samples without phrases and phrases with empty masks never produce NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _average_per_sample(per_phrase: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid phrases within each sample, then over samples with at least one valid phrase.

    Args:
        per_phrase: (B, P) loss of every phrase slot.
        valid: (B, P) bool, the slots that count.

    Returns:
        A scalar; 0 (still attached to the graph) when nothing is valid.
    """
    valid = valid.to(per_phrase.dtype)
    counts = valid.sum(dim=1)
    per_sample = (per_phrase * valid).sum(dim=1) / counts.clamp(min=1)
    has_terms = counts > 0
    if not has_terms.any():
        return (per_phrase * valid).sum()
    return per_sample[has_terms].mean()


def mask_bce_loss(mask_probs: torch.Tensor, targets: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy between mask probabilities and 0/1 targets, mean over pixels.

    Args:
        mask_probs: (B, P, H, W) probabilities in [0, 1].
        targets: (B, P, H, W) 0/1 targets.
        phrase_mask: (B, P) bool, real phrases.
    """
    per_pixel = F.binary_cross_entropy(mask_probs.float(), targets.float(), reduction="none")
    return _average_per_sample(per_pixel.flatten(2).mean(dim=-1), phrase_mask)


def mask_dice_loss(
    mask_probs: torch.Tensor, targets: torch.Tensor, phrase_mask: torch.Tensor, eps: float = 1e-3
) -> torch.Tensor:
    """Dice loss 1 - 2 sum(p g) / (sum p^2 + sum g^2 + 2 eps) per phrase (reference form).

    Args:
        mask_probs: (B, P, H, W) probabilities.
        targets: (B, P, H, W) 0/1 targets.
        phrase_mask: (B, P) bool, real phrases.
        eps: smoothing term; keeps the ratio finite when prediction and target are both empty (loss 1).
    """
    probs = mask_probs.float().flatten(2)
    truth = targets.float().flatten(2)
    overlap = (probs * truth).sum(dim=-1)
    denominator = (probs * probs).sum(dim=-1) + (truth * truth).sum(dim=-1) + 2 * eps
    return _average_per_sample(1 - 2 * overlap / denominator, phrase_mask)


def semantic_alignment_loss(
    phrase_embeddings: torch.Tensor,
    pixel_embeddings: torch.Tensor,
    pooled_targets: torch.Tensor,
    phrase_mask: torch.Tensor,
    temperature: float,
    variant: str = "paper",
    normalize: bool = False,
    direction_reduction: str = "sum",
) -> torch.Tensor:
    """Semantic Alignment Loss between phrase and pixel embeddings (the forms are described in `EpngConfig`).

    Args:
        phrase_embeddings: (B, P, C) phrase features f_i.
        pixel_embeddings: (B, C, h, w) pixel features p_j at the H/4 map.
        pooled_targets: (B, P, h, w) bool, a pixel is positive for a phrase if any pixel it covers is.
        phrase_mask: (B, P) bool, real phrases.
        temperature: tau dividing the similarities.
        variant: `"paper"`: l_v (phrase -> pixels, softmax over all pixels, mean over each phrase's positive
            pixels) and l_t (pixel -> phrases, softmax over the sample's real phrases, mean over each covered pixel's
            positive phrases). `"reference"`: only the phrase -> pixel direction, with
            -log(sum_{j in G+} exp(s_ij) / sum_k exp(s_ik)) per phrase.
        normalize: L2-normalise both embeddings first (cosine similarities).
        direction_reduction: `"sum"` (l_v + l_t) or `"mean"` ((l_v + l_t) / 2) of the paper form's directions.

    Returns:
        A scalar.
    """
    phrase_embeddings, pixel_embeddings = phrase_embeddings.float(), pixel_embeddings.float().flatten(2)
    if normalize:
        phrase_embeddings = F.normalize(phrase_embeddings, dim=-1)
        pixel_embeddings = F.normalize(pixel_embeddings, dim=1)
    scores = torch.einsum("bpc,bcn->bpn", phrase_embeddings, pixel_embeddings) / temperature
    # A finite fill instead of -inf: rows that are fully masked (no positives, no phrases) must stay NaN-free in
    # both the forward and the backward pass; their terms are excluded from the average anyway.
    lowest = torch.finfo(scores.dtype).min
    positives = pooled_targets.flatten(2) & phrase_mask[:, :, None]
    num_positive_pixels = positives.sum(dim=-1)
    phrase_has_pixels = num_positive_pixels > 0

    log_prob_over_pixels = scores.log_softmax(dim=-1)
    if variant == "reference":
        positive_mass = log_prob_over_pixels.masked_fill(~positives, lowest).logsumexp(dim=-1)
        per_phrase = -positive_mass.masked_fill(~phrase_has_pixels, 0.0)
        return _average_per_sample(per_phrase, phrase_has_pixels)

    positive_log_probs = (log_prob_over_pixels * positives).sum(dim=-1)
    per_phrase = -positive_log_probs / num_positive_pixels.clamp(min=1)
    phrase_to_pixel = _average_per_sample(per_phrase, phrase_has_pixels)

    log_prob_over_phrases = scores.masked_fill(~phrase_mask[:, :, None], lowest).log_softmax(dim=1)
    log_prob_over_phrases = log_prob_over_phrases.masked_fill(~phrase_mask[:, :, None], 0.0)
    num_positive_phrases = positives.sum(dim=1)
    pixel_is_covered = num_positive_phrases > 0
    per_pixel = -(log_prob_over_phrases * positives).sum(dim=1) / num_positive_phrases.clamp(min=1)
    pixel_to_phrase = _average_per_sample(per_pixel, pixel_is_covered)
    total = phrase_to_pixel + pixel_to_phrase
    return total / 2 if direction_reduction == "mean" else total


def prepare_mask_targets(mask_labels: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Resize ground-truth masks to the input size (bilinear) and re-binarise at 0.5.

    Args:
        mask_labels: (B, P, H', W') bool or 0/1 float masks at any resolution.
        size: (H, W) of the model input.

    Returns:
        (B, P, H, W) bool.
    """
    if tuple(mask_labels.shape[-2:]) == tuple(size):
        return mask_labels if mask_labels.dtype == torch.bool else mask_labels > 0.5
    if mask_labels.shape[1] == 0:
        return mask_labels.new_zeros((*mask_labels.shape[:2], *size), dtype=torch.bool)
    resized = F.interpolate(mask_labels.float(), size=size, mode="bilinear", align_corners=align_corners)
    return resized >= 0.5


def pool_targets(targets: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, P, H, W) bool -> (B, P, H/stride, W/stride) bool: positive where any covered pixel is."""
    if targets.shape[1] == 0:
        height, width = targets.shape[-2:]
        return targets.new_zeros((*targets.shape[:2], height // stride, width // stride))
    return F.max_pool2d(targets.float(), kernel_size=stride, stride=stride) > 0
